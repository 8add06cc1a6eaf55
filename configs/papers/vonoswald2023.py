"""von Oswald et al. (2023), "Transformers learn in-context by gradient
descent": a linear self-attention layer trained on in-context regression
with d = N = 10 becomes one step of gradient descent (their Fig. 2: the
prediction difference to GD near 0, the cosine between the two models'
sensitivities to the query near 1).

    python scripts/run.py --config=configs/papers/vonoswald2023.py

Their task as their released code draws it: `w ~ N(0, I)`, inputs
`x ~ U(-1/2, 1/2)^d` (`input_range` 1 in its configs; its docstring says
`U(-1, 1)`), noiseless labels; beside it our Gaussian inputs (`N(0, I)`). The
layer is ours (merged `W_KQ`, `W_PV`, no query-label token), trained like
theirs by Adam (lr 0.003, annealed to 0 by a cosine over 3000 steps) from a
small random init with 1024 fresh prompts a step, 8 seeds. (SGD at the
curvature-scaled step of configs/lsa_icl.py diverges on their inputs: the
optimum's weights are 3.6x larger, so the step that suits `Gamma` is too
long for the factors.) The GD step it is compared with uses the best single
learning rate for the input law (`theory.linear_attention.optimal_gd_lr`
with the inputs' kurtosis; 6.06 for theirs, 0.476 for Gaussian inputs),
where they tuned GD's rate by training it. Runtime, peak memory and disk:
docs/reproductions.md.
Expected: prediction difference to that GD step of a few percent and
sensitivity cosine above 0.999 for every seed, with both input laws.
Measured numbers: docs/reproductions.md. `:smoke`: both input laws, 2 seeds,
600 steps of 512 prompts at lr 0.01 (a shorter run needs the longer step).
"""

import os

import ml_collections

from dynamics import load_config
from dynamics.config import smoke


def get_config(arg=None):
  config = load_config(os.path.join(os.path.dirname(__file__), "..", "lsa_icl.py"), arg=arg)
  config.output_dir = "runs/vonoswald2023"
  config.task.d = 10
  config.task.n_context = 10
  config.task.input_range = 1.0
  config.train.optimizer = "adam"
  config.train.lr = 0.003
  config.train.lr_scaling = "none"
  config.train.num_steps = 3000
  config.train.batch_size = 1024
  config.sweep = ml_collections.ConfigDict()
  config.sweep.task = ml_collections.ConfigDict({"inputs": ("uniform", "gaussian")})
  return smoke(arg, config, num_seeds=2, eval__num_prompts=2048, train__num_steps=600,
               train__log_every=200, train__batch_size=512, train__lr=0.01)
