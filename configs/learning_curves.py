"""Kernel learning curves on the sphere: kernel regression with the depth-2 relu
NTK and the wide network itself, n = 4 to 1024, beside the eigenlearning theory.

    python scripts/run.py --config=configs/learning_curves.py

Grid: `task.num_train` 4, 8, ..., 1024 (9 values) x `task.d` 3 and 8 x `ridge` 0,
0.1 and 1 (one compiled call per n and d; the ridges stack), 8 draws each. The
target has power 0.25 in each of the degrees 1-4 (a total of 1), no noise; 2000
test points. The network: one hidden layer of 1024 relu units, 'ntk'
parameterization, `b_std` 0.5 (without biases the relu NTK has no odd degree
above 1 on the sphere), centred at its init, 2000 full-batch steps at half the
largest stable step. Prints per point the excess test error of the network,
of its infinite-width limit at the same step, of kernel regression and of
`theory.learning_curves.test_error`; `figure.png` draws them against n,
`figures/modes.png` each degree's residual (modes learned in order of
eigenvalue). The numbers: docs/learning_curves.md; runtime, peak memory and
disk: docs/reproductions.md.

Expect kernel regression on the curve within its draw-to-draw spread from n
of a few tens (below that the theory's O(1/n) corrections show), and the
network on its infinite-width descent until its excess falls to the
finite-width floor. At ridge 0 the descent has not reached kernel regression
by the last step at the largest n (`unconverged` in the summary): the
kernel's smallest eigenvalues take longer than 2000 steps. `:smoke`: n 8 and
32, width 128, 2 draws, 100 steps.
"""

import ml_collections

from dynamics.config import smoke


def get_config(arg=None):
  config = ml_collections.ConfigDict()
  config.experiment = "dynamics.experiments.learning_curves"
  config.seed = 0
  config.num_seeds = 8
  config.precision = "float32"
  config.output_dir = "runs/learning_curves"
  config.ridge = 0.0  # kernel regression's (K + ridge I)^{-1}; the network's |theta - theta0|^2

  config.model = ml_collections.ConfigDict()
  config.model.width = 1024
  config.model.depth = 2  # weight layers: one hidden layer
  config.model.activation = "relu"
  config.model.w_std = 1.0
  config.model.b_std = 0.5

  config.task = ml_collections.ConfigDict()
  config.task.seed = 0  # the test points and the target (each draw: config.seed)
  config.task.d = 3
  config.task.num_train = 64
  config.task.num_test = 2000
  config.task.degrees = (1, 2, 3, 4)
  config.task.powers = (0.25, 0.25, 0.25, 0.25)
  config.task.directions = 16  # zonal functions per degree in the target
  config.task.noise = 0.0
  config.task.max_degree = 60  # the spectrum's degrees; the rest is folded into the ridge
  config.task.quadrature = 600

  config.train = ml_collections.ConfigDict()
  config.train.lr = 1.0  # units of n / (lambda_max(K) + ridge); 2 is the edge
  config.train.num_steps = 2000
  config.train.log_every = 100

  config.sweep = ml_collections.ConfigDict()
  config.sweep.task = ml_collections.ConfigDict({"num_train": tuple(4 * 2**i for i in range(9)),
                                                "d": (3, 8)})
  config.sweep.ridge = (0.0, 0.1, 1.0)
  return smoke(arg, config, num_seeds=2, model__width=128, task__num_test=200,
               train__num_steps=100, train__log_every=20,
               sweep__task__num_train=(8, 32))
