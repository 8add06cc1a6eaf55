"""Runs (or resumes) the sweep a config declares beside its base config.

    python scripts/sweep.py --config=configs/deep_linear.py --out=runs/depth_sweep \\
        [--config.sweep.train.lr="(0.005,0.01)" --memory_budget_mb=2048]

Rerunning the same command after an interruption skips finished chunks; a
changed config into the same directory is refused. Results:
`dynamics.load_sweep(out)`; figure: `scripts/plot_sweep.py`.
"""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

from dynamics import config as cfg
from dynamics import sweep

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file with a `sweep` section.",
    lock_config=False)
_OUT = flags.DEFINE_string("out", None, "Sweep directory (created or resumed).")
_BUDGET = flags.DEFINE_float("memory_budget_mb", sweep.DEFAULT_MEMORY_BUDGET_MB,
                             "Device memory for one chunk of (point x seed) rows.")
_CKPT = flags.DEFINE_integer(
    "checkpoint_every_steps", sweep.DEFAULT_CHECKPOINT_EVERY_STEPS,
    "Runs longer than this are checkpointed (orbax) every this many steps.")


def main(argv):
  del argv
  if _CONFIG.value is None or _OUT.value is None:
    raise app.UsageError("--config and --out are required.")
  config = _CONFIG.value
  try:
    cfg.set_precision(config.get("precision", "float32"))
    path = sweep.run_sweep(config, _OUT.value, memory_budget_mb=_BUDGET.value,
                           checkpoint_every_steps=_CKPT.value)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {path}/ (results.parquet, summary.csv, arrays.npz); "
        "load with dynamics.load_sweep")
  return 0


if __name__ == "__main__":
  app.run(main)
