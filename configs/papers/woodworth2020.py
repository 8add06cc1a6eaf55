"""Woodworth et al. (2020), "Kernel and rich regimes in overparametrized
models": the init scale alpha of a diagonal linear network moves gradient
descent from the minimum-l1 interpolator (rich, alpha -> 0) to the minimum-l2
one (kernel, alpha -> inf), and with it the test error on sparse regression.

    python scripts/run.py --config=configs/papers/woodworth2020.py

Their sparse-regression setting at reduced scale: d = 100, n = 40 Gaussian
measurements of a 5-sparse beta* (entries +-1), noiseless, 8 seeds (each its
own problem), alpha from 1e-3 to 1, gradient descent at lr 0.004 to t = 200.
Runtime, peak memory and disk:
docs/reproductions.md. Expected: the learned beta on the predicted
interpolator (`theory.diagonal_linear.implicit_bias_solution`) at every
alpha, near the l1 interpolator (which recovers beta*, test error ~0) at
small alpha and near the l2 one at alpha = 1, the test error rising between.
Measured numbers: docs/reproductions.md. `:smoke`: 2 seeds, d = 40, 16
measurements of a 2-sparse beta*, t = 120, the same grid.
"""

import os

from dynamics import load_config
from dynamics.config import smoke


def get_config(arg=None):
  config = load_config(os.path.join(os.path.dirname(__file__), "..", "diagonal_linear.py"))
  config.output_dir = "runs/woodworth2020"
  config.task.d = 100
  config.task.num_train = 40
  config.task.sparsity = 5
  config.train.lr = 0.004
  config.train.num_steps = 50000
  config.train.log_every = 1000
  return smoke(arg, config, num_seeds=2, task__d=40, task__num_train=16, task__sparsity=2,
               train__num_steps=30000, train__log_every=10000)
