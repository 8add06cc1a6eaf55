"""Mean-field two-layer linear networks at widths 64 to 4096 across richness
gamma0, against their infinite-width kernel dynamics (`theory.dmft`).

    python scripts/run.py --config=configs/mean_field.py

Grid: `model.width` 64, 256, 1024, 4096 x `model.gamma0` 0.25, 1, 2, 4; 32 seeds
each. The task: 8 Gaussian points in R^16 with a linear teacher's targets. 400
full-batch steps at lr 0.025 (t = 10), logged every 10. Prints per point the
finite-width gap to the infinite-width solution (RMS over seeds, and of the
seed mean) and to the equations from each seed's own init (GD's O(lr));
`figure.png` draws the loss and the NTK's alignment with the targets against t
at width 4096 (theory dashed) and the gaps against width with their slopes.
docs/dmft.md. `:smoke`: widths 64 and 256, gamma0 1 and 4, 4 seeds, 40 steps.
"""

import ml_collections

from dynamics.config import smoke


def get_config(arg=None):
  config = ml_collections.ConfigDict()
  config.experiment = "dynamics.experiments.mean_field"
  config.seed = 0
  config.num_seeds = 32
  config.precision = "float32"
  config.output_dir = "runs/mean_field"

  config.task = ml_collections.ConfigDict({"seed": 0, "n": 8, "d": 16})
  config.model = ml_collections.ConfigDict({"width": 1024, "gamma0": 1.0, "depth": 2,
                                           "activation": "linear", "samples": 16384})
  config.train = ml_collections.ConfigDict({"lr": 0.025, "num_steps": 400, "log_every": 10})

  config.sweep = ml_collections.ConfigDict()
  config.sweep.model = ml_collections.ConfigDict({"width": (64, 256, 1024, 4096),
                                                 "gamma0": (0.25, 1.0, 2.0, 4.0)})
  return smoke(arg, config, num_seeds=4, train__num_steps=40, train__log_every=10, model__samples=2048,
               sweep__model__width=(64, 256), sweep__model__gamma0=(1.0, 4.0))
