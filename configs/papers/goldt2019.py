"""Goldt, Advani, Saxe, Krzakala & Zdeborova (2019): over-parameterised
students (K > M) learning a noisy teacher by online SGD, the first layer
alone or both layers.

    python scripts/run.py --config=configs/papers/goldt2019.py

M = 2 teacher units, `model.k` in (2, 4, 6) x `model.train_second_layer` in
(False, True), erf, label noise variance 0.01 (`sigma = 0.1`), lr 0.5 (both
layers: Goldt et al.'s `lr / N` on the second layer, docs/conventions.md),
N = 500, init scale 1 and `v = 1`, 8 seeds, alpha = 1000. Prints per point the
final error (mean over the last 10% of alpha) simulated and by
`committee_flow` from each seed's init; `figures/k.png` draws it against K.
The numbers: docs/online_sgd.md and docs/reproductions.md (also runtime,
memory, disk).

Their claim, for sigmoidal units: the final error grows with K when only the
first layer learns, and stays constant or falls with K when both do.
`:smoke`: N 200, alpha 20, K (2, 4), 2 seeds.
"""

import os

import ml_collections

from dynamics import load_config
from dynamics.config import smoke


def get_config(arg=None):
  config = load_config(os.path.join(os.path.dirname(__file__), "..", "online_sgd.py"))
  config.output_dir = "runs/goldt2019"
  config.task.n = 500
  config.task.noise = 0.01
  config.init.scale = 1.0
  config.train.lr = 0.5
  config.train.num_steps = 1000 * 500
  config.train.log_every = 2500  # alpha 5
  config.sweep = ml_collections.ConfigDict()
  config.sweep.model = ml_collections.ConfigDict({"k": (2, 4, 6),
                                                  "train_second_layer": (False, True)})
  del config["sweep_zip"]
  return smoke(arg, config, num_seeds=2, task__n=200, train__num_steps=4000,
               train__log_every=200, sweep__model__k=(2, 4))
