"""Learning-dynamics experiments: models as pure functions, a compiled
multi-seed training engine, and the shared theory-vs-simulation metrics."""

from dynamics import metrics
from dynamics.train import make_optimizer, run_seeds, seed_keys, trajectory

__all__ = ["metrics", "make_optimizer", "run_seeds", "seed_keys", "trajectory"]
from dynamics.sweep import load_sweep, run_sweep

__all__ += ["load_sweep", "run_sweep"]
