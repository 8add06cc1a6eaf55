"""Learning-dynamics experiments: models as pure functions, a compiled
multi-seed training engine, grids of runs, and the shared theory-vs-simulation
metrics."""

from dynamics import devices

devices.configure()  # one CPU device per core unless the user chose (dynamics/devices.py)

from dynamics import metrics  # noqa: E402
from dynamics.config import load_config  # noqa: E402
from dynamics.experiments import logged_times  # noqa: E402
from dynamics.sweep import load_arrays, load_summary, load_sweep, run_sweep, simulate  # noqa: E402
from dynamics.train import (make_advance, make_optimizer, masked, run_seeds,  # noqa: E402
                            seed_keys, trajectory)

__all__ = ["metrics", "load_config", "logged_times", "simulate", "run_sweep", "load_sweep",
           "load_summary", "load_arrays", "make_advance", "make_optimizer", "masked",
           "run_seeds", "seed_keys", "trajectory"]
