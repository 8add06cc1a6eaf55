"""Canatar, Bordelon & Pehlevan (2021): label noise and the optimal ridge.
With noise, kernel regression's test error against the ridge has a minimum
whose location the theory predicts; at that ridge the learning curve falls
monotonically in `n`, while at a small ridge the noise shows as a bump.

    python scripts/run.py --config=configs/papers/canatar2021_noise.py

Inputs on `S^2` (d = 3), the depth-2 relu NTK with `b_std` 0.5, a target with
power 0.25 in each of the degrees 1-4, label noise variance 0.5; `n` = 8, 32,
128, 512 x ridge 1e-3, 1e-2, 0.1, 0.3, 1, 3, 10, 30 (8 draws each) and the
width-256 network trained for 1000 steps with the same ridge as weight decay
towards its init. `figures/ridge.png` draws the test error (excess + noise)
against the ridge for each `n`, kernel regression beside `test_error`, with
the predicted optimum (the theory's minimum on a fine grid, dotted);
`optimal_ridge` in the summary gives it beside the measured one (a parabola in
log ridge through the best swept ridge and its neighbours); `figure.png` the
learning curves at each ridge. The numbers: docs/learning_curves.md and
docs/reproductions.md (also runtime, memory, disk).

Their claims: an optimal ridge exists once labels are noisy and the theory
places it; regularised near it, more data never hurts (no double descent).
The setting is ours. `:smoke`: n 8 and 32, ridges 0.01, 1 and 10, width 32,
2 draws, 40 steps.
"""

import os

import ml_collections

from dynamics import load_config
from dynamics.config import smoke


def get_config(arg=None):
  config = load_config(os.path.join(os.path.dirname(__file__), "..", "learning_curves.py"))
  config.output_dir = "runs/canatar2021_noise"
  config.model.width = 256
  config.task.noise = 0.5
  config.train.num_steps = 1000
  config.train.log_every = 100
  config.sweep = ml_collections.ConfigDict()
  config.sweep.task = ml_collections.ConfigDict({"num_train": (8, 32, 128, 512)})
  config.sweep.ridge = (1e-3, 1e-2, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
  return smoke(arg, config, num_seeds=2, model__width=32, task__num_test=200,
               train__num_steps=40, train__log_every=10, sweep__task__num_train=(8, 32),
               sweep__ridge=(0.01, 1.0, 10.0))
