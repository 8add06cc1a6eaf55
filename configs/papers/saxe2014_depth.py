"""Saxe, McClelland & Ganguli (2014), "Exact solutions to the nonlinear
dynamics of learning in deep linear neural networks": at a learning rate
scaled as 1/N, learning time is independent of depth N from a decoupled
(pretrained-like) init whose product has every singular value 1, while from
scaled Gaussian inits it grows with depth.

    python scripts/run.py --config=configs/papers/saxe2014_depth.py

Square networks (width = d_in = d_out = 8), teacher singular values
(8, 6, 4, 3) and four untaught directions, 16 seeds, lr 0.001 to t = 20, over
depth (1, 2, 4, 8, 16) x init: 'aligned' (u0 = 1: the decoupled init with
every teacher mode at strength 1, where `theory.deep_linear` is exact),
'orthogonal' (random orthogonal layers, scale 1) and 'random' (Gaussian,
`N(0, 1/fan_in)`: norm-preserving in expectation). Reported: every mode's
depth-normalised half-learning time `N t_half` (steps at lr ~ 1/N), in the
printed table and the figure's right panel. Runtime, peak memory and disk:
docs/reproductions.md.
Expected: aligned flat in depth and on the theory; the scaled Gaussian's
weakest mode several times slower at depth 8 and 16 than at depth 1.
`:smoke`: the same grid, 4 seeds to t = 5 (every half-learning time but the
deepest random networks' is reached). Measured numbers: docs/reproductions.md.
"""

import os

import ml_collections

from dynamics import load_config
from dynamics.config import smoke


def get_config(arg=None):
  config = load_config(os.path.join(os.path.dirname(__file__), "..", "deep_linear.py"),
                       arg=arg)
  config.output_dir = "runs/saxe2014_depth"
  config.num_seeds = 16
  config.model.width = 8
  config.init.scale = 1.0
  config.init.u0 = 1.0
  config.task.singular_values = (8.0, 6.0, 4.0, 3.0)
  config.train.lr = 0.001
  config.train.num_steps = 20000
  config.train.log_every = 2
  config.sweep = ml_collections.ConfigDict()
  config.sweep.model = ml_collections.ConfigDict({"depth": (1, 2, 4, 8, 16)})
  config.sweep.init = ml_collections.ConfigDict({"name": ("aligned", "orthogonal", "random")})
  return smoke(arg, config, num_seeds=4, train__num_steps=5000, train__log_every=5)
