"""Linear self-attention from the aligned init against its exact gradient flow.

    python scripts/run.py --config=configs/lsa_flow.py

d = 5, N = 20, isotropic inputs, W_KQ = g0 [[I, 0], [0, 0]], W_PV = u0 e e^T
with u0 = g0 = 1e-3, 2 seeds, 2048 fresh prompts per step, plain SGD for
1000 steps, over the learning rates 0.005, 0.01, 0.02 (one compiled call).
Runtime, peak memory and disk:
docs/reproductions.md. The experiment is dynamics/experiments/lsa_icl.py
(`init.name = 'aligned'`).

Expect: at lr 0.005 the loss and u g within ~2% of gradient_flow, the rest
being gradient descent's O(lr) lag; the half-learning time of u g lags the
flow by about lr sqrt(d) / 2 (the plateau's growth factor 1 + lr sqrt(d) per
step instead of exp(lr sqrt(d))): 0.6%, 1.1%, 2.2%. docs/linear_attention.md.
`:smoke`: the same grid and steps, 1 seed, 512 prompts a step, 1024 eval prompts.
"""

import os

import ml_collections

from dynamics import load_config
from dynamics.config import smoke


def get_config(arg=None):
  config = load_config(os.path.join(os.path.dirname(__file__), "lsa_icl.py"), arg=arg)
  config.output_dir = "runs/lsa_flow"
  config.num_seeds = 2
  config.init.name = "aligned"
  config.init.u0 = config.init.g0 = 1e-3
  config.task.covariance = "isotropic"
  config.train.lr = 0.005
  config.train.lr_scaling = "none"
  config.train.decay = "constant"
  config.train.num_steps = 1000
  config.train.log_every = 10
  config.train.batch_size = 2048
  config.sweep = ml_collections.ConfigDict({"train": {"lr": (0.005, 0.01, 0.02)}})
  return smoke(arg, config, num_seeds=1, eval__num_prompts=1024, train__log_every=20,
               train__batch_size=512)
