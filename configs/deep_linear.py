"""Saxe-style deep linear network learning a linear teacher, against theory.

    python scripts/run.py --config=configs/deep_linear.py [--out=runs/deep_linear]

Width 64, small random init, teacher singular values (3, 2, 1, 0.5), 64
seeds, 4000 full-batch GD steps (t = lr x steps), over the grid
depth (1, 2) x lr (0.005, 0.01) x init scale (0.02, 0.05): 8 points, two
compiled calls (one per depth). Runtime, peak memory and disk:
docs/reproductions.md.
One point: `--config.sweep="{}"` (the base config: depth 2, lr 0.005, scale
0.05). Other axes: `--config.sweep.model.width="(32,128)"`.

Expect: every mode's measured half-learning time within ~5% of the theory
(the aligned solution started from each seed's effective u0; depth 1 is
exact), max relative error of u_i(t) ~1-4%, loss R^2 > 0.999. Exact agreement
(error O(lr)) with `--config.init.name=aligned`; theory-precision checks with
`--config.precision=float64`. docs/deep_linear.md explains each gap.
`:smoke`: the same grid, 4 seeds, 2000 steps (t = 10 and 20: every mode's
half-learning time is reached).
"""

import ml_collections

from dynamics.config import smoke


def get_config(arg=None):
  config = ml_collections.ConfigDict()
  config.experiment = "dynamics.experiments.deep_linear"
  config.seed = 0
  config.num_seeds = 64
  config.precision = "float32"  # "float64" for theory-precision checks
  config.output_dir = "runs/deep_linear"

  config.model = ml_collections.ConfigDict()
  config.model.depth = 2
  config.model.width = 64

  config.init = ml_collections.ConfigDict()
  config.init.name = "random"  # or "aligned"
  config.init.scale = 0.05     # random: W_l ~ N(0, scale^2 / fan_in)
  config.init.u0 = 1e-3        # aligned: initial strength of every teacher mode

  config.task = ml_collections.ConfigDict()
  config.task.name = "linear_teacher"
  config.task.seed = 0
  config.task.d_in = 8
  config.task.d_out = 8
  config.task.num_samples = 64
  config.task.singular_values = (3.0, 2.0, 1.0, 0.5)
  config.task.noise_var = 0.0

  config.train = ml_collections.ConfigDict()
  config.train.optimizer = "sgd"
  config.train.lr = 0.005
  config.train.num_steps = 4000
  config.train.log_every = 20
  config.train.batch_size = 0  # 0: full batch
  # "auto": full-batch runs train on (Sigma_xx, Sigma_yx, tr Sigma_yy), the
  # same loss to rounding at O(d_in) instead of O(P) per step; or force
  # "samples" / "statistics".
  config.train.formulation = "auto"

  # The grid (field paths as above). Learning rate and init scale stack into
  # one vmapped call; each depth is compiled separately.
  config.sweep = ml_collections.ConfigDict()
  config.sweep.train = ml_collections.ConfigDict({"lr": (0.005, 0.01)})
  config.sweep.init = ml_collections.ConfigDict({"scale": (0.02, 0.05)})
  config.sweep.model = ml_collections.ConfigDict({"depth": (1, 2)})
  return smoke(arg, config, num_seeds=4, train__num_steps=2000)
