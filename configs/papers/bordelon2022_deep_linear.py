"""Bordelon & Pehlevan (2022), "Self-consistent dynamical field theory of kernel
evolution in wide neural networks": deep linear networks' kernel dynamics across
richness gamma0, the DMFT against finite-width networks.

    python scripts/run.py --config=configs/papers/bordelon2022_deep_linear.py

A linear network with three hidden layers (`model.depth` 4) in the mean-field
parameterization (docs/dmft.md) on 8 Gaussian points in R^16 with a linear
teacher's targets, trained by full-batch gradient descent at lr 0.05 for 100
steps (t = 5), gamma0 0.5, 1, 2 x width 128, 512, 2048, 32 seeds each. The
theory is `theory.dmft.deep_linear_gd` at the same lr: infinite-width gradient
descent, so every gap is finite width's alone. `figure.png` draws the loss, the
NTK's alignment and each hidden layer's kernel alignment with `y y^T` against
t (width 2048, DMFT dashed), and the gaps against width with their slopes.

Their claims for deep linear networks: the DMFT kernels describe finite
networks as the width grows; richer networks (larger gamma0) learn faster and
their kernels align with the targets more; the alignment grows with the layer's
depth. The setting (data, depth, steps) is ours, not the paper's figure's; the
numbers: docs/dmft.md, docs/reproductions.md. `:smoke`: widths 64 and 256,
gamma0 1, 4 seeds, 20 steps.
"""

import os

import ml_collections

from dynamics import load_config
from dynamics.config import smoke


def get_config(arg=None):
  config = load_config(os.path.join(os.path.dirname(__file__), "..", "mean_field.py"))
  config.output_dir = "runs/bordelon2022_deep_linear"
  config.model.depth = 4
  config.train.lr = 0.05
  config.train.num_steps = 100
  config.train.log_every = 5
  config.sweep = ml_collections.ConfigDict()
  config.sweep.model = ml_collections.ConfigDict({"width": (128, 512, 2048),
                                                 "gamma0": (0.5, 1.0, 2.0)})
  return smoke(arg, config, num_seeds=4, train__num_steps=20, sweep__model__width=(64, 256),
               sweep__model__gamma0=(1.0,))
