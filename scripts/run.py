"""Runs one experiment: all seeds in one compiled call, theory beside them.

    python scripts/run.py --config=configs/deep_linear.py [--config.train.lr=0.02 ...]

Prints the theory-vs-simulation table and writes `config.output_dir`:
config.json, trajectories.npz, trajectories.parquet, summary.json, figure.png.
"""

from __future__ import annotations

import sys
import time

from absl import app
from ml_collections import config_flags

from dynamics import config as cfg
from dynamics import experiments, io
from dynamics.progress import Progress

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, e.g. configs/deep_linear.py.",
    lock_config=True)


def main(argv):
  del argv
  config = _CONFIG.value
  if config is None:
    raise app.UsageError("--config is required, e.g. --config=configs/deep_linear.py")
  try:
    cfg.set_precision(config.get("precision", "float32"))  # before any array
    experiment = experiments.get(config)
    io.check_writable(config.output_dir)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  start = time.perf_counter()
  total = getattr(experiment, "total_steps", lambda c: c.train.num_steps)(config)
  with Progress(total, desc=config.model.name) as progress:
    result = experiment.run(config, progress=progress)
  result["summary"]["wall_time_s"] = time.perf_counter() - start
  print(result["table"])
  path = io.write_run(config.output_dir, config, result)
  print(f"{config.model.name}: {result['summary']['wall_time_s']:.1f} s "
        f"(compile included); wrote {path}/ "
        "(config.json, trajectories.npz, trajectories.parquet, summary.json, "
        "figure.png)")
  return 0


if __name__ == "__main__":
  app.run(main)
