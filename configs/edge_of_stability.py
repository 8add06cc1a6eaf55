"""Progressive sharpening and the edge of stability: GD, heavy-ball momentum and
Adam on a tanh and a relu MLP, sharpness logged along every trajectory.

    python scripts/run.py --config=configs/edge_of_stability.py

Grid: `model.activation` tanh and relu x (optimizer, lr) zipped: GD at 0.4, 0.3,
0.25, 0.2 (thresholds `2/lr` 5 to 10), heavy ball (momentum 0.9) at 0.45, 0.35,
0.3 (`3.8/lr` 8.4 to 12.7), Adam at 0.004, 0.002, 0.001 (`38/lr` 9500 to 38000); 4
seeds each. The task: 512 Gaussian points in R^16, 10 classes from a random
tanh teacher, one-hot targets, MSE. The network: two hidden layers of 64, the
standard parameterization, 3000 full-batch steps; every 50 steps the
sharpness (20 Lanczos products), the trace (8 Hutchinson probes), the
gradient's alignment with the top eigenvector, and for Adam the preconditioned
sharpness. For GD, `theory` integrates the gradient flow from each seed's
init to t = 300.

Prints per point the crossing time, the mean ratio of the effective sharpness
to its threshold after it, the growth before it, and when GD leaves the flow;
`figure.png` draws the effective sharpness against t with each threshold
dashed and the flow in black, `figures/loss.png` and `figures/trace.png` the
loss and the trace. The numbers: docs/curvature.md; runtime: docs/reproductions.md.
`:smoke`: tanh, width 16, 64 points, GD at two lrs and Adam at one, 2 seeds, 200 steps.
"""

import ml_collections

from dynamics.config import smoke


def get_config(arg=None):
  config = ml_collections.ConfigDict()
  config.experiment = "dynamics.experiments.edge_of_stability"
  config.seed = 0
  config.num_seeds = 4
  config.precision = "float32"
  config.output_dir = "runs/edge_of_stability"

  config.task = ml_collections.ConfigDict()
  config.task.seed = 0  # the inputs and the teacher (each seed: its init)
  config.task.n = 512
  config.task.d = 16
  config.task.classes = 10
  config.task.loss = "mse"  # or "cross_entropy"

  config.model = ml_collections.ConfigDict()
  config.model.widths = (64, 64)
  config.model.activation = "tanh"

  config.train = ml_collections.ConfigDict()
  config.train.optimizer = "sgd"
  config.train.lr = 0.3
  config.train.momentum = 0.9
  config.train.num_steps = 3000
  config.train.log_every = 50

  config.curvature = ml_collections.ConfigDict()
  config.curvature.num_iters = 20  # Lanczos products per logged step
  config.curvature.trace_samples = 8  # Hutchinson probes per logged step

  config.theory = ml_collections.ConfigDict()
  config.theory.flow_time = 300.0  # the gradient flow is integrated to here (GD points)
  config.theory.rtol = 1e-6

  config.sweep = ml_collections.ConfigDict()
  config.sweep.model = ml_collections.ConfigDict({"activation": ("tanh", "relu")})
  config.sweep.train = ml_collections.ConfigDict({
      "optimizer": ("sgd",) * 4 + ("momentum",) * 3 + ("adam",) * 3,
      "lr": (0.4, 0.3, 0.25, 0.2, 0.45, 0.35, 0.3, 0.004, 0.002, 0.001)})
  config.sweep_zip = (("train.optimizer", "train.lr"),)
  return smoke(arg, config, num_seeds=2, task__n=64, model__widths=(16,),
               train__num_steps=200, train__log_every=20, theory__flow_time=20.0,
               sweep__model__activation=("tanh",),
               sweep__train__optimizer=("sgd", "sgd", "adam"),
               sweep__train__lr=(0.5, 0.2, 0.01))
