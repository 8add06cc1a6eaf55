"""Gradient descent on a separable quadratic against its exact solution.

    python scripts/run.py --config=examples/quadratic/config.py --out=runs/quadratic

4 seeds, dim 3, 50 steps, over lr (0.1, 0.2, 0.4): one compiled call, a few
seconds. Expect the loss within float32 rounding of the exact solution
(relative error ~1e-6) at every lr. docs/experiments.md walks through it.
"""

import ml_collections


def get_config(arg=None):
  config = ml_collections.ConfigDict()
  config.experiment = "experiment.py"  # beside this file; or a dotted module
  config.seed = 0
  config.num_seeds = 4
  config.precision = "float32"
  config.output_dir = "runs/quadratic"
  config.dim = 3
  config.train = ml_collections.ConfigDict({"lr": 0.1, "num_steps": 50, "log_every": 5})
  config.sweep = ml_collections.ConfigDict({"train": {"lr": (0.1, 0.2, 0.4)}})
  return config
