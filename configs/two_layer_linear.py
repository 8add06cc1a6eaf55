"""Two-layer linear networks over lambda (the balance of the init) and init
scale, against the exact lambda-balanced flow.

    python scripts/run.py --config=configs/two_layer_linear.py

Grid: `init.lam` in (-4, -1, -0.25, 0, 0.25, 1, 4) x `init.scale` in (0.1, 0.5)
(shape-preserving: one compiled call), 8 seeds each, d_in 4, d_out 3, hidden 3,
teacher singular values (3, 2, 1), full-batch gradient descent at lr 0.005 for
3000 steps (t = 15). Prints per point the map's largest error against
`theory.deep_linear.two_layer_flow` and the NTK's final drift; `figure.png`
draws the drift against lambda. The numbers: docs/lazy_rich.md;
runtime, peak memory and disk: docs/reproductions.md.

Expect: the map within O(lr) (about 1%) of the flow at every point; the NTK
moving by O(1) near lambda = 0 from a small init (rich) and by little at
large |lambda| (lazy). `:smoke`: the same grid, 2 seeds, t = 5.
"""

import ml_collections

from dynamics.config import smoke


def get_config(arg=None):
  config = ml_collections.ConfigDict()
  config.experiment = "dynamics.experiments.two_layer_linear"
  config.seed = 0
  config.num_seeds = 8
  config.precision = "float32"
  config.output_dir = "runs/two_layer_linear"

  config.model = ml_collections.ConfigDict()
  config.model.hidden = 3

  config.init = ml_collections.ConfigDict()
  config.init.lam = 0.0
  config.init.scale = 0.1

  config.task = ml_collections.ConfigDict()
  config.task.seed = 0
  config.task.d_in = 4
  config.task.d_out = 3
  config.task.singular_values = (3.0, 2.0, 1.0)

  config.train = ml_collections.ConfigDict()
  config.train.lr = 0.005
  config.train.num_steps = 3000
  config.train.log_every = 50

  config.sweep = ml_collections.ConfigDict()
  config.sweep.init = ml_collections.ConfigDict(
      {"lam": (-4.0, -1.0, -0.25, 0.0, 0.25, 1.0, 4.0), "scale": (0.1, 0.5)})
  return smoke(arg, config, num_seeds=2, train__num_steps=1000, train__log_every=100)
