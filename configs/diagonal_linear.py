"""Diagonal linear networks on sparse regression, over the init scale alpha.

    python scripts/run.py --config=configs/diagonal_linear.py

Grid: `model.alpha` from 0.001 to 1 (shape-preserving: one compiled call),
8 seeds each, each seed its own problem: 20 Gaussian measurements of a
3-sparse `beta*` in 60 dimensions, full-batch gradient descent at lr 0.005
for 40000 steps (t = 200). Prints per alpha the learned `beta`'s distance to
the predicted interpolator (`theory.diagonal_linear.implicit_bias_solution`),
to the min-l1 and min-l2 interpolators, and its test error; `figure.png` is
the phase diagram. The measured numbers: docs/lazy_rich.md;
runtime, peak memory and disk: docs/reproductions.md.

Expect: the learned beta within a few percent of the prediction at every
alpha (O(lr) and the finite time), near the l1 interpolator (which recovers
beta*) at small alpha and near the l2 one at large alpha, the test error
rising from ~0 to the l2 interpolator's. `configs/diagonal_linear.py:smoke`:
the same grid in seconds (2 seeds, d = 30, 10 measurements, t = 100).
"""

import ml_collections

from dynamics.config import smoke


def get_config(arg=None):
  config = ml_collections.ConfigDict()
  config.experiment = "dynamics.experiments.diagonal_linear"
  config.seed = 0
  config.num_seeds = 8
  config.precision = "float32"
  config.output_dir = "runs/diagonal_linear"

  config.model = ml_collections.ConfigDict()
  config.model.alpha = 0.1

  config.task = ml_collections.ConfigDict()
  config.task.d = 60
  config.task.num_train = 20
  config.task.num_test = 200
  config.task.sparsity = 3

  config.train = ml_collections.ConfigDict()
  config.train.lr = 0.005
  config.train.num_steps = 40000
  config.train.log_every = 1000

  config.sweep = ml_collections.ConfigDict()
  config.sweep.model = ml_collections.ConfigDict(
      {"alpha": (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)})
  return smoke(arg, config, num_seeds=2, task__d=30, task__num_train=10,
               train__num_steps=20000, train__log_every=5000)
