"""Saxe, McClelland & Ganguli (2014): a mode of singular value s is learned
in a time proportional to 1/s (times a logarithm of the init), along the
sigmoid of their Eq. for a two-layer linear network.

    python scripts/run.py --config=configs/papers/saxe2014_modes.py

Depth 2, width 64, a small random init (scale 0.05), teacher singular values
(4, 2, 1, 0.5), 64 seeds, lr 0.005 to t = 30; one grid point. Runtime, peak memory and disk:
docs/reproductions.md. Expected: `t_half = log(s/u0 - 1) / (2s)` from each seed's
effective `u0`, within 4% per seed; `s t_half` is not constant but falls
from about 3.3 (s = 4) to 2.3 (s = 0.5) with that logarithm, so the times
run 1 : 1.8 : 3.2 : 5.5 rather than 1 : 2 : 4 : 8. `:smoke`: 8 seeds of
width 16 to t = 10 (the weakest mode's half-learning time is about 6).
Measured numbers: docs/reproductions.md.
"""

import os

import ml_collections

from dynamics import load_config
from dynamics.config import smoke


def get_config(arg=None):
  config = load_config(os.path.join(os.path.dirname(__file__), "..", "deep_linear.py"),
                       arg=arg)
  config.output_dir = "runs/saxe2014_modes"
  config.task.singular_values = (4.0, 2.0, 1.0, 0.5)
  config.train.num_steps = 6000
  config.sweep = ml_collections.ConfigDict()
  return smoke(arg, config, num_seeds=8, model__width=16, train__num_steps=2000)
