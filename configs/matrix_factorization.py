"""Deep matrix factorization completing a low-rank matrix, over depth and the
number of observed entries (Arora, Cohen, Hu & Luo 2019).

    python scripts/run.py --config=configs/matrix_factorization.py

A 30 x 30 matrix of rank 3 (singular values all 30/sqrt(3)), 4 seeds (the
factors' random orthogonal init, scale 0.1 per factor), full-batch gradient
descent at half the product's curvature (`lr_scale` of `setup`)
for 20000 steps. Grid: depth (1, 2, 3) (one compiled call each) x observed
entries (200, 250, 300, 400, 500) (stacked). Prints per point the
reconstruction error over all entries and the worst gap between the
singular values' velocity and Arora et al.'s formula; `figure.png` is the
error against the number of observed entries per depth. Runtime and the
measured numbers: docs/reproductions.md. `:smoke`: the same grid, 2 seeds,
2000 steps (the velocities agree; nothing is recovered yet).
"""

import ml_collections

from dynamics.config import smoke


def get_config(arg=None):
  config = ml_collections.ConfigDict()
  config.experiment = "dynamics.experiments.matrix_factorization"
  config.seed = 0
  config.num_seeds = 4
  config.precision = "float32"
  config.output_dir = "runs/matrix_factorization"

  config.model = ml_collections.ConfigDict()
  config.model.depth = 3

  config.init = ml_collections.ConfigDict()
  config.init.scale = 0.1  # every factor: scale x a random orthogonal matrix

  config.task = ml_collections.ConfigDict()
  config.task.seed = 0
  config.task.d = 30
  config.task.rank = 3
  config.task.num_observed = 300

  config.train = ml_collections.ConfigDict()
  config.train.lr = 0.5  # x m / (N s*^(2 - 2/N))
  config.train.num_steps = 20000
  config.train.log_every = 200

  config.sweep = ml_collections.ConfigDict()
  config.sweep.model = ml_collections.ConfigDict({"depth": (1, 2, 3)})
  config.sweep.task = ml_collections.ConfigDict({"num_observed": (200, 250, 300, 400, 500)})
  return smoke(arg, config, num_seeds=2, train__num_steps=2000, train__log_every=200)
