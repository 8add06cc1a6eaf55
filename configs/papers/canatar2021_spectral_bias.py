"""Canatar, Bordelon & Pehlevan (2021; Bordelon et al. 2020): spectral bias.
Kernel regression learns a target's spherical-harmonic degrees in the order of
the kernel's eigenvalues, each once `n` passes the number of modes above it.

    python scripts/run.py --config=configs/papers/canatar2021_spectral_bias.py

Inputs uniform on `S^9` (d = 10), the depth-2 relu NTK with `b_std` 0.5, a
target with power 0.25 in each of the degrees 1, 2, 3 and 4 (multiplicities
10, 54, 210, 660), no noise, ridge 0; `n` = 4, 8, ..., 2048 (10 values), 8 draws
each, and the corresponding width-1024 network trained for 1000 steps.
`figures/modes.png` draws each degree's residual over its power against `n`,
kernel regression (dots, exact per degree from the kernel's Mercer
expansion) beside `test_error`'s `mode_residuals` (lines); `figure.png` the
total. The numbers: docs/learning_curves.md and docs/reproductions.md (also
runtime, memory, disk).

Their claim: each degree's error stays near its power until `n` reaches the
number of modes of larger eigenvalue, then falls, degree after degree; the
theory predicts each degree's curve. The setting (d, kernel, degrees) is
ours, chosen so the four transitions fall between n = 4 and 2048.
`:smoke`: n 16 and 64, width 64, 2 draws, 50 steps.
"""

import os

import ml_collections

from dynamics import load_config
from dynamics.config import smoke


def get_config(arg=None):
  config = load_config(os.path.join(os.path.dirname(__file__), "..", "learning_curves.py"))
  config.output_dir = "runs/canatar2021_spectral_bias"
  config.task.d = 10
  config.task.max_degree = 16
  config.task.quadrature = 400
  config.train.num_steps = 1000
  config.train.log_every = 100
  config.sweep = ml_collections.ConfigDict()
  config.sweep.task = ml_collections.ConfigDict({"num_train": tuple(4 * 2**i for i in range(10))})
  return smoke(arg, config, num_seeds=2, model__width=64, task__num_test=200,
               train__num_steps=50, train__log_every=10, sweep__task__num_train=(16, 64))
