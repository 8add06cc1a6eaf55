"""Learning-dynamics experiments: models as pure functions, a compiled
multi-seed training engine, and the shared theory-vs-simulation metrics."""

from dynamics import devices

devices.configure()  # one CPU device per core unless the user chose (dynamics/devices.py)

from dynamics import metrics  # noqa: E402
from dynamics.train import make_optimizer, run_seeds, seed_keys, trajectory  # noqa: E402

__all__ = ["metrics", "make_optimizer", "run_seeds", "seed_keys", "trajectory"]
from dynamics.sweep import load_sweep, run_sweep  # noqa: E402

__all__ += ["load_sweep", "run_sweep"]
