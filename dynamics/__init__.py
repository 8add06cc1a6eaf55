"""Learning-dynamics experiments: models as pure functions, a compiled
multi-seed training engine, grids of runs, and the shared theory-vs-simulation
metrics."""

from dynamics import devices

devices.configure()  # one CPU device per core unless the user chose (dynamics/devices.py)

from dynamics import metrics  # noqa: E402
from dynamics.config import load_config  # noqa: E402
from dynamics.experiments import Result, Trajectory  # noqa: E402
from dynamics.sweep import (load_arrays, load_results, load_summary, load_sweep,  # noqa: E402
                            replay, run_sweep, simulate)
from dynamics.train import make_optimizer, masked, seed_keys, trajectory  # noqa: E402

__all__ = ["metrics", "load_config", "Result", "Trajectory", "simulate", "run_sweep",
           "load_sweep", "load_summary", "load_arrays", "load_results", "replay", "make_optimizer",
           "masked", "seed_keys", "trajectory"]
