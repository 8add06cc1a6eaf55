"""Early pruning by gradient-flow measures on all three model families.

    python scripts/run.py --config=configs/pruning.py
    python scripts/run.py --config=configs/pruning.py --out=runs/pruning_lsa \
        --config.sweep.model.family="('lsa',)" --config.sweep.prune.fraction="(0.1,0.3)"

Deep linear network (depth 2, width 16, linear teacher), two-layer ReLU
network (width 64, standard parameterization, random ReLU teacher) and
one-layer linear self-attention (d = 4, N = 10, a fixed pool of 256 prompts),
each trained by full-batch gradient descent. Each is pruned at init and after
50 steps, by every measure of theory.pruning and by random scores, removing
20%, 50% or 80% of the weights (global ranking, lowest scores removed), 8
seeds each, then trained on for 1000 steps with the mask held, beside the
same seed trained dense. The grid: `model.family` x `prune.step` (one compiled call each) x
`prune.measure` x `prune.fraction` (stacked), 90 points. Runtime, peak memory and disk:
docs/reproductions.md.

Prints the Taylor prediction errors at the prune, the median time to reach
90% of the way the dense run goes, and a verdict on each of Lubana & Dick's claims
(i)-(iii) per setting. docs/pruning.md has the numbers and the figure.
`:smoke`: the same grid shape, 2 seeds, narrower networks, 100 steps, pruned at
steps 0 and 20.
"""

import ml_collections

from dynamics.config import smoke


def get_config(arg=None):
  config = ml_collections.ConfigDict()
  config.experiment = "dynamics.experiments.pruning"
  config.seed = 0
  config.num_seeds = 8
  config.precision = "float64"   # Taylor predictions of small changes
  config.output_dir = "runs/pruning"
  config.task_seed = 0

  config.model = ml_collections.ConfigDict()
  config.model.family = "deep_linear"  # or "relu", "lsa": the sections below

  config.prune = ml_collections.ConfigDict()
  config.prune.measure = "magnitude"  # or "loss_preservation", "gradient_norm",
                                      # "gradient_norm_abs", "random"
  config.prune.fraction = 0.5
  config.prune.step = 0
  config.prune.scope = "global"   # or "layer": rank every weight matrix on its own
  config.prune.target_gap = 0.1   # target: dense final + 0.1 x (dense at prune - final)

  config.deep_linear = ml_collections.ConfigDict(dict(
      d=8, width=16, depth=2, num_samples=64, singular_values=(3.0, 2.0, 1.0, 0.5),
      init_scale=1.0, lr=0.05))
  config.relu = ml_collections.ConfigDict(dict(
      d=8, width=64, num_samples=64, teacher_width=8, lr=0.2))
  config.lsa = ml_collections.ConfigDict(dict(
      d=4, n_context=10, num_prompts=256, init_scale=1.0, lr=0.05))
  # after the prune, every family: train.lr x <family>.lr a step
  config.train = ml_collections.ConfigDict({"lr": 1.0, "num_steps": 1000, "log_every": 10,
                                            "optimizer": "sgd"})

  config.sweep = ml_collections.ConfigDict()
  config.sweep.model = ml_collections.ConfigDict({"family": ("deep_linear", "relu", "lsa")})
  config.sweep.prune = ml_collections.ConfigDict({
      "step": (0, 50), "fraction": (0.2, 0.5, 0.8),
      "measure": ("magnitude", "loss_preservation", "gradient_norm", "gradient_norm_abs",
                  "random")})
  return smoke(arg, config, num_seeds=2, train__num_steps=100, deep_linear__width=8,
               relu__width=16, lsa__num_prompts=64, sweep__prune__step=(0, 20))
