"""Mahankali, Hashimoto & Ma (2023), "One step of gradient descent is
provably the optimal in-context learner with one layer of linear
self-attention": with isotropic Gaussian inputs the trained layer is one GD
step from w = 0 at the rate `N / (N + 1 + d + noise_var)`, which changes with
the context length N.

    python scripts/run.py --config=configs/papers/mahankali2023.py

d = 5, noiseless, N in (5, 10, 20, 40), 8 seeds from a small random init,
256 fresh prompts a step, SGD annealed to 0 over 2000 steps (configs/
lsa_icl.py's training). Runtime, peak memory and disk:
docs/reproductions.md. Expected (seed means;
`trace_gamma_over_d` in the summary against 0.455, 0.625, 0.769, 0.870): `Gamma`
1.8%, 1.3%, 1.0%, 0.7% from `optimal_gd_lr I` at N = 5, 10, 20, 40; predictions
3.2% to 0.9% from that GD step; sensitivity cosine 0.998 at N = 5, 0.9999 above.
Measured numbers: docs/reproductions.md. `:smoke`: the same N, 2 seeds, 1000
annealed steps of 256 prompts.
"""

import os

import ml_collections

from dynamics import load_config
from dynamics.config import smoke


def get_config(arg=None):
  config = load_config(os.path.join(os.path.dirname(__file__), "..", "lsa_icl.py"), arg=arg)
  config.output_dir = "runs/mahankali2023"
  config.sweep = ml_collections.ConfigDict()
  config.sweep.task = ml_collections.ConfigDict({"n_context": (5, 10, 20, 40)})
  return smoke(arg, config, num_seeds=2, eval__num_prompts=1024, train__num_steps=1000,
               train__log_every=500, train__batch_size=256)
