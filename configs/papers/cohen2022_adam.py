"""Cohen, Ghorbani, Krishnan, Agarwal, Medapati, Badura, Suo, Cardoze, Nado, Dahl
& Gilmer (2022): adaptive gradient methods at the edge of stability.

    python scripts/run.py --config=configs/papers/cohen2022_adam.py

The network and task of configs/edge_of_stability.py (tanh and relu, two
hidden layers of 64, 512 points, 10 classes, MSE), trained by full-batch Adam
(optax's defaults: b1 0.9, b2 0.999, eps 1e-8) at lr 0.004, 0.002 and 0.001
(`38/lr` = 9500, 19000, 38000), 4 seeds, 6000 steps. Every 100 steps: the
preconditioned sharpness, the top eigenvalue of `P^{-1/2} H P^{-1/2}` with
Adam's bias-corrected preconditioner `P = sqrt(v_hat) + eps` at that step
(`effective_sharpness`), and the raw Hessian's sharpness. `figure.png` draws
the preconditioned sharpness against t with `38/lr` dashed. The numbers:
docs/curvature.md, docs/reproductions.md.

Their claims: the preconditioned sharpness rises to the frozen-preconditioner
threshold `(2 + 2 b1) / ((1 - b1) lr)` and hovers there (the adaptive edge of
stability), while the raw sharpness need not stay bounded. The setting is
ours, not the paper's. `:smoke`: width 16, 64 points, 2
seeds, 200 steps.
"""

import os

import ml_collections

from dynamics import load_config
from dynamics.config import smoke


def get_config(arg=None):
  config = load_config(os.path.join(os.path.dirname(__file__), "..", "edge_of_stability.py"))
  config.output_dir = "runs/cohen2022_adam"
  config.train.optimizer = "adam"
  config.train.lr = 0.002
  config.train.num_steps = 6000
  config.train.log_every = 100
  config.sweep = ml_collections.ConfigDict()
  config.sweep.model = ml_collections.ConfigDict({"activation": ("tanh", "relu")})
  config.sweep.train = ml_collections.ConfigDict({"lr": (0.004, 0.002, 0.001)})
  config.sweep_zip = ()
  return smoke(arg, config, num_seeds=2, task__n=64, model__widths=(16,),
               train__num_steps=200, train__log_every=20, sweep__model__activation=("tanh",),
               sweep__train__lr=(0.02, 0.01))
