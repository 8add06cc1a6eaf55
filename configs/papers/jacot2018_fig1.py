"""Jacot, Gabriel & Hongler (2018), Fig. 1: the NTK of a depth-4 ReLU network
converges to a fixed limit as the width grows, and stays there during training.

    python scripts/run.py --config=configs/papers/jacot2018_fig1.py

Their setting at reduced scale: depth 4 (three hidden layers), ReLU,
`b_std = 0.1` (their beta), widths 500 and 10000, 10 initializations, lr 1.0,
200 full-batch gradient-descent steps, inputs on the unit circle. The
training set is ours (the paper does not list it): 8 points evenly spaced on
the circle with targets `sin(3 gamma)`. The figure (`figure.png`) draws
`Theta(x0, x)` for `x0 = (1, 0)` and `x = (cos gamma, sin gamma)` at init
(solid) and after training (dashed) for every seed, with the infinite-width
kernel `theory.ntk.mlp_kernel(4, 'relu', 1.0, 0.1)` in black.

Expect, as in the paper: the width-10000 curves on top of the limit at init
and after training; the width-500 curves scattered around it and moved by
training. `summary.csv` has the numbers (`kernel_gap` at init on the
training points, `kernel_gap_end` after training on Theta(test, train)).
The measured numbers: docs/ntk.md; runtime,
peak memory (about 10 GB) and disk: docs/reproductions.md. `:smoke`: widths 64 and
1024, 30 steps, 16 test angles (seconds).
"""

import os

from dynamics import load_config
from dynamics.config import smoke


def get_config(arg=None):
  config = load_config(os.path.join(os.path.dirname(__file__), "..", "relu_ntk.py"),
                       arg=arg)
  config.num_seeds = 10
  config.output_dir = "runs/jacot2018_fig1"
  config.model.depth = 4
  config.model.activation = "relu"
  config.model.w_std = 1.0
  config.model.b_std = 0.1
  config.task.name = "circle"
  config.task.d = 2
  config.task.num_train = 8
  config.task.num_test = 128
  config.train.lr = 1.0
  config.train.num_steps = 200
  config.train.log_every = 20
  config.sweep.model = {"width": (500, 10000)}
  return smoke(arg, config, task__num_test=16, train__num_steps=30, train__log_every=10,
               sweep__model__width=(64, 1024))
