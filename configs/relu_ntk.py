"""Fully connected ReLU networks of growing width and depth against the NTK theory.

    python scripts/run.py --config=configs/relu_ntk.py
    python scripts/run.py --config=configs/relu_ntk.py --config.model.parameterization=mean_field \
        --out=runs/relu_ntk_mf
    python scripts/run.py --config=configs/relu_ntk.py --out=runs/relu_ntk_lr \
        --config.sweep.model.width="(64,256)" --config.sweep.train.lr="(0.5,1.0)"

Grid: `model.width` 64 to 4096 x `model.depth` 2 and 3 (one hidden layer
and two; one compiled call each; `train.lr` and other shape-preserving axes
stack), 4 seeds each, 64 train and 64 test points on the sphere in d = 8, a
fixed random ReLU teacher, 400 full-batch GD steps at lr 1. Runtime, peak memory and disk:
docs/reproductions.md. Prints per point the NTK
gap at init (against `theory.ntk.mlp_kernel`), the kernel drift and the
distance to the linearised network, with their log-log slopes against width
per depth. `--config.model.activation=tanh` (or erf, gelu, linear) changes
the activation of the network and of the kernel.

Expect (ntk): the gap falls as width^-1/2, drift and distance at least as
fast. With mean_field (trained at `lr x m`, its `lr_scale`) the kernel drift
stays O(1): the NTK theory does not apply. `train.lr_units='critical'`: `train.lr`
in units of each seed's `2n / lambda_max(Theta_0)`; slopes are reported only
where the linearisation converges (below that edge, no seed diverged).
`configs/relu_ntk.py:smoke`: the same grid in seconds (widths 16 to 1024,
2 seeds, 16 points, 60 steps). docs/ntk.md has the measured numbers and the figure.
"""

import ml_collections

from dynamics.config import smoke


def get_config(arg=None):
  config = ml_collections.ConfigDict()
  config.experiment = "dynamics.experiments.relu_ntk"
  config.seed = 0
  config.num_seeds = 4
  config.precision = "float32"
  config.output_dir = "runs/relu_ntk"

  config.model = ml_collections.ConfigDict()
  config.model.width = 1024
  config.model.depth = 2  # weight layers: 2 is one hidden layer
  config.model.activation = "relu"  # or "tanh", "erf", "gelu", "linear"
  config.model.parameterization = "ntk"  # or "standard", "mean_field"
  config.model.w_std = 1.0
  config.model.b_std = 0.0

  config.task = ml_collections.ConfigDict()
  config.task.name = "sphere_teacher"
  config.task.seed = 0
  config.task.d = 8
  config.task.num_train = 64
  config.task.num_test = 64
  config.task.teacher_width = 16

  config.train = ml_collections.ConfigDict()
  config.train.optimizer = "sgd"
  config.train.lr = 1.0
  # "critical": train.lr in units of each seed's 2n / lambda_max(Theta_0), the
  # linearised network's largest stable step (theory.ntk.max_learning_rate)
  config.train.lr_units = "absolute"
  config.train.num_steps = 400
  config.train.log_every = 20

  config.sweep = ml_collections.ConfigDict()
  config.sweep.model = ml_collections.ConfigDict({"width": (64, 256, 1024, 4096),
                                                 "depth": (2, 3)})
  return smoke(arg, config, num_seeds=2, task__num_train=16, task__num_test=16,
               train__num_steps=60, sweep__model__width=(16, 64, 256, 1024))
