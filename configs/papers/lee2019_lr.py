"""Lee et al. (2019), "Wide neural networks of any depth evolve as linear
models under gradient descent", the learning-rate claim: gradient descent on
the linearised network converges below `2n / lambda_max(Theta)`
(`theory.ntk.max_learning_rate`) and diverges above it, and for wide
networks this critical rate predicts the network's own.

    python scripts/run.py --config=configs/papers/lee2019_lr.py

One-hidden-layer ReLU networks (NTK parameterization) of width 256 and 4096
on 64 points of a random ReLU teacher in d = 8, 4 seeds, 400 full-batch
steps at learning rates 0.5, 0.95, 1.05, 1.5, 2 and 2.5 times each seed's own
`2n / lambda_max(Theta_0)` (`train.lr_units = 'critical'`, the runner's time
`t` is the step actually applied). Reported per point: diverged seeds,
`lr_multiple`, the loss's peak over its start, the final loss of the network
and of its linearisation; across the grid (`trains_up_to`) per width the
largest multiple at which the network and the linearisation end below their
start; `figure.png`: peaks and final losses against the multiple, the
linearisation's edge (1) and 2x drawn. Runtime, peak memory and disk:
docs/reproductions.md. Expected:
the linearisation converges at 0.5 and 0.95 and blows up from 1.05; the
network does not follow it there: between the two it rises and comes back
down (the catapult of Lewkowycz et al. 2020) rather than diverging.
`:smoke`: widths 256 and 1024, 2 seeds, 200 steps (the same picture).
Measured numbers: docs/reproductions.md.
"""

import os

import ml_collections

from dynamics import load_config
from dynamics.config import smoke


def get_config(arg=None):
  config = load_config(os.path.join(os.path.dirname(__file__), "..", "relu_ntk.py"),
                       arg=arg)
  config.output_dir = "runs/lee2019_lr"
  config.train.lr_units = "critical"
  config.train.log_every = 5  # the catapult's spike lasts tens of steps
  config.sweep = ml_collections.ConfigDict()
  config.sweep.model = ml_collections.ConfigDict({"width": (256, 4096)})
  config.sweep.train = ml_collections.ConfigDict({"lr": (0.5, 0.95, 1.05, 1.5, 2.0, 2.5)})
  return smoke(arg, config, num_seeds=2, task__num_train=64, task__num_test=64,
               train__num_steps=200, sweep__model__width=(256, 1024))
