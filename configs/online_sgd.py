"""Online SGD of a soft committee machine (K = M = 2, erf) at N = 500 to 8000,
against the order-parameter ODEs from each seed's own init.

    python scripts/run.py --config=configs/online_sgd.py

Grid: `task.n` in (500, 1000, 2000, 4000, 8000), each run for alpha = steps /
N = 150 (`sweep_zip` ties `train.num_steps` to N), 8 seeds, lr 1, student
init scale 0.1 (`Q ~ 0.01 I`, `R ~ 0.1 / sqrt(N)`), teacher `T = I`, second
layer fixed at 1. Prints per N the plateau error, the escape alpha and the
final error, simulated and predicted; `figure.png` draws the error against
alpha for every N, `figures/n_sweep_lr_1.png` the finite-N gap against N
(slope) and the plateau's length against ln N beside `1 / (2 escape_rate)`.
The numbers: docs/online_sgd.md; runtime, peak memory and disk:
docs/reproductions.md.

Expect: every N on its flow until the plateau (error 0.0207 at lr 1,
`theory.online_sgd.plateau(2, lr=1)`), the gap falling like 1/sqrt(N), the
escape about 8.5 alpha later per e-fold of N. `:smoke`: N 100 and 200,
alpha 20, 2 seeds.
"""

import ml_collections

from dynamics.config import smoke

N = (500, 1000, 2000, 4000, 8000)
ALPHA = 150


def get_config(arg=None):
  config = ml_collections.ConfigDict()
  config.experiment = "dynamics.experiments.online_sgd"
  config.seed = 0
  config.num_seeds = 8
  config.precision = "float32"
  config.output_dir = "runs/online_sgd"

  config.model = ml_collections.ConfigDict()
  config.model.k = 2
  config.model.activation = "erf"
  config.model.train_second_layer = False

  config.task = ml_collections.ConfigDict()
  config.task.seed = 0
  config.task.m = 2
  config.task.n = 500
  config.task.noise = 0.0

  config.init = ml_collections.ConfigDict()
  config.init.scale = 0.1
  config.init.v = 1.0

  config.train = ml_collections.ConfigDict()
  config.train.lr = 1.0
  config.train.num_steps = ALPHA * 500
  config.train.log_every = 250  # alpha 0.5 at N = 500

  config.sweep = ml_collections.ConfigDict()
  config.sweep.task = ml_collections.ConfigDict({"n": N})
  config.sweep.train = ml_collections.ConfigDict({"num_steps": tuple(ALPHA * n for n in N),
                                                  "log_every": tuple(n // 2 for n in N)})
  config.sweep_zip = (("task.n", "train.num_steps", "train.log_every"),)
  return smoke(arg, config, num_seeds=2, sweep__task__n=(100, 200),
               sweep__train__num_steps=(2000, 4000), sweep__train__log_every=(50, 100))
