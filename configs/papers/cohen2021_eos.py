"""Cohen, Kaur, Li, Kolter & Talwalkar (2021): full-batch gradient descent
typically trains at the edge of stability.

    python scripts/run.py --config=configs/papers/cohen2021_eos.py

A tanh MLP (two hidden layers of 64, standard parameterization) trained by
full-batch GD on 512 Gaussian points in R^16 labelled by a random tanh teacher
(10 classes, one-hot targets), with the MSE loss and with cross-entropy
(`task.loss`), at lr 0.3, 0.25 and 0.2 (`2/lr` = 6.7, 8 and 10), 4 seeds,
4000 steps, the sharpness every 50. `theory` integrates each seed's gradient
flow from the same init to t = 500 (float64, adaptive). `figure.png` draws the
sharpness against t with `2/lr` dashed and the flow in black;
`figures/loss.png` the loss. Per point the summary gives the crossing time,
the mean ratio of the sharpness to `2/lr` after it, the growth before it
(`sharpening`) and when GD leaves the flow (`departs_t`: the sharpness 5%
off the flow's). The numbers: docs/curvature.md, docs/reproductions.md.

Their claims: (i) progressive sharpening: the sharpness rises until it
reaches `2/lr`; (ii) it then hovers just above `2/lr` while the loss keeps
falling, non-monotonically; (iii) GD follows the gradient flow until the
crossing and leaves it there. The setting is ours (they trained on a
CIFAR-10 subset). `:smoke`: width 16, 64 points, 2 seeds, 200 steps.
"""

import os

import ml_collections

from dynamics import load_config
from dynamics.config import smoke


def get_config(arg=None):
  config = load_config(os.path.join(os.path.dirname(__file__), "..", "edge_of_stability.py"))
  config.output_dir = "runs/cohen2021_eos"
  config.train.optimizer = "sgd"
  config.train.num_steps = 4000
  config.theory.flow_time = 500.0
  config.sweep = ml_collections.ConfigDict()
  config.sweep.task = ml_collections.ConfigDict({"loss": ("mse", "cross_entropy")})
  config.sweep.train = ml_collections.ConfigDict({"lr": (0.3, 0.25, 0.2)})
  config.sweep_zip = ()
  return smoke(arg, config, num_seeds=2, task__n=64, model__widths=(16,),
               train__num_steps=200, train__log_every=20, theory__flow_time=20.0,
               sweep__train__lr=(0.5, 0.2))
