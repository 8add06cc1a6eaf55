"""Lazy training by output scaling with a Flax MLP, over alpha x lr.

    python scripts/run.py --config=examples/lazy_training/config.py --out=runs/lazy_training

Expect the gap to the linearized model (worst seed) to fall like 1/alpha.
"""

import ml_collections

from dynamics.config import smoke


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.experiment = "experiment.py"
  c.seed, c.num_seeds, c.precision, c.output_dir = 0, 16, "float32", "runs/lazy_training"
  c.model = ml_collections.ConfigDict({"width": 256, "alpha": 1.0})
  c.task = ml_collections.ConfigDict({"seed": 0, "n": 32, "d": 4})
  c.train = ml_collections.ConfigDict({"lr": 0.2, "num_steps": 400, "log_every": 20})
  c.sweep = ml_collections.ConfigDict({"model": {"alpha": (1.0, 3.0, 10.0, 30.0, 100.0)},
                                       "train": {"lr": (0.1, 0.2)}})
  return smoke(arg, c, num_seeds=2, model__width=32, train__num_steps=40)
