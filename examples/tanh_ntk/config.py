"""A tanh MLP against its linearization, over width x lr.

    python scripts/run.py --config=examples/tanh_ntk/config.py --out=runs/tanh_ntk

Expect the distance to the linearization to fall with width, with a log-log
slope near -1 (docs/experiments.md). `:smoke` runs the same grid in seconds.
"""

import ml_collections

from dynamics.config import smoke


def get_config(arg=None):
  config = ml_collections.ConfigDict()
  config.experiment = "experiment.py"
  config.seed, config.num_seeds, config.precision = 0, 8, "float32"
  config.output_dir = "runs/tanh_ntk"
  config.model = ml_collections.ConfigDict({"width": 256, "depth": 2})
  config.task = ml_collections.ConfigDict({"seed": 0, "d": 4, "n": 16})
  config.train = ml_collections.ConfigDict({"lr": 1.0, "num_steps": 400, "log_every": 10})
  config.sweep = ml_collections.ConfigDict({"model": {"width": (64, 256, 1024)},
                                            "train": {"lr": (0.5, 1.0)}})
  return smoke(arg, config, num_seeds=2, train__num_steps=40,
               sweep__model__width=(16, 32, 64))
