"""Saad & Solla (1995): the symmetric plateau of a three-unit soft committee
machine, its escape, and the learning rate past which online SGD fails.

    python scripts/run.py --config=configs/papers/saad1995.py

K = M = 3, erf, `T = I`, second layer fixed at 1, N = 1000, 8 seeds per lr,
`train.lr` in (0.5, 1, 1.5, 1.75, 2, 2.5) (one compiled call: lr is traced),
alpha = 400 from a small init (scale 0.1). Prints per lr the plateau error
against `theory.online_sgd.plateau(3, lr=lr)` and the escape alpha and final
error, simulated and by `committee_flow` from each seed's init;
`figures/lr.png` draws the final error against lr with
`critical_lr(3)` = 1.621, past which the teacher's solution is unstable.
Their plateau for lr -> 0 has the closed form `q = c = 1/5`, `r = 1/sqrt(15)`,
error `(3/pi)(pi/6 - 3 arcsin(1/6))` = 0.0203. The numbers:
docs/online_sgd.md and docs/reproductions.md (also runtime, memory, disk).

Expect: every lr below 1.621 leaves the plateau and learns the teacher
(error below 1e-4 by alpha 400), the lr above it stay at an error of order
0.1, simulation and flow alike. `:smoke`: N 200, alpha 20, lr (0.5, 2.5), 2
seeds.
"""

import os

import ml_collections

from dynamics import load_config
from dynamics.config import smoke


def get_config(arg=None):
  config = load_config(os.path.join(os.path.dirname(__file__), "..", "online_sgd.py"))
  config.output_dir = "runs/saad1995"
  config.model.k = 3
  config.task.m = 3
  config.task.n = 1000
  config.train.num_steps = 400 * 1000
  config.train.log_every = 1000  # alpha 1
  config.sweep = ml_collections.ConfigDict()
  config.sweep.train = ml_collections.ConfigDict({"lr": (0.5, 1.0, 1.5, 1.75, 2.0, 2.5)})
  del config["sweep_zip"]
  return smoke(arg, config, num_seeds=2, task__n=200, train__num_steps=4000,
               train__log_every=200, sweep__train__lr=(0.5, 2.5))
