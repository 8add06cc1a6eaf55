"""Zhang, Frei & Bartlett (2024), "Trained transformers learn linear models
in-context": gradient flow on one linear self-attention layer from their
initialisation reaches the global minimum
`Gamma* = ((1 + 1/N) Lambda + tr(Lambda)/N I)^{-1}`, for any input covariance.

    python scripts/run.py --config=configs/papers/zhang2024.py

Their init, `W_PV = s [[0, 0], [0, 1]]`, `W_KQ = s [[Theta Theta^T, 0], [0, 0]]`
with `Theta Theta^T = I / sqrt(d)`, is our aligned init with `u0 = s` and
`g0 = s / sqrt(d)` (balanced: `u0^2 = d g0^2`); s = 1e-3. d = 5, N = 20,
noiseless, 2048 fresh prompts a step, plain SGD at lr 0.01 to t = 40, 2 seeds,
isotropic and skewed inputs (condition number 4, rotated). `theory.
linear_attention.gradient_flow` gives the whole path. Runtime, peak memory and disk:
docs/reproductions.md. Expected: the trained Gamma at the end within ~1% of Gamma* (the
minibatch noise), the flow itself within 1e-3 of it, with both covariances;
the loss along `gradient_flow` to a few percent (gradient descent's O(lr) lag).
Measured numbers: docs/reproductions.md. `:smoke`: both covariances, 1 seed,
1500 steps of 512 prompts at lr 0.02 (t = 30).
"""

import os

import ml_collections

from dynamics import load_config
from dynamics.config import smoke


def get_config(arg=None):
  config = load_config(os.path.join(os.path.dirname(__file__), "..", "lsa_flow.py"), arg=arg)
  config.output_dir = "runs/zhang2024"
  config.init.u0 = 1e-3
  config.init.g0 = 1e-3 / 5 ** 0.5
  config.train.lr = 0.01
  config.train.num_steps = 4000
  config.train.log_every = 20
  config.sweep = ml_collections.ConfigDict()
  config.sweep.task = ml_collections.ConfigDict({"covariance": ("isotropic", "skewed")})
  return smoke(arg, config, num_seeds=1, eval__num_prompts=1024, train__lr=0.02,
               train__num_steps=1500, train__log_every=100, train__batch_size=512)
