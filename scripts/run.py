"""Runs the grid an experiment config declares, theory beside simulation.

    python scripts/run.py --config=configs/deep_linear.py [--out=DIR] \\
        [--config.train.lr=0.02 --config.sweep.model.width="(32,128)" ...]

Every grid point trains all its seeds (points differing only in
shape-preserving fields share one compiled call), the experiment's theory is
set beside each metric, and DIR (default `config.output_dir`) receives the
results table, the summaries and the figures (docs/sweeps.md). Rerunning the
same command after a kill resumes; a DIR holding another config is refused.
Any config field is overridden with `--config.<field>=<value>`; the config
may name its experiment anywhere (`config.experiment`, docs/experiments.md).
"""

from __future__ import annotations

import argparse
import sys
import time

import jax

from dynamics import config as cfg
from dynamics import sweep


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(
      description=__doc__.split("\n")[0],
      epilog="Config overrides: --config.<field>=<value>, e.g. --config.train.lr=0.02.")
  ap.add_argument("--config", required=True, help="experiment config file, e.g. "
                  "configs/deep_linear.py")
  ap.add_argument("--out", help="run directory (default: config.output_dir)")
  ap.add_argument("--memory_budget_mb", type=float, default=sweep.DEFAULT_MEMORY_BUDGET_MB,
                  help="memory for the outputs of one chunk of (point x seed) rows in flight (the "
                       "process also holds JAX and one point's analysis); one file per chunk")
  ap.add_argument("--checkpoint_every_steps", type=int,
                  default=sweep.DEFAULT_CHECKPOINT_EVERY_STEPS,
                  help="runs longer than this are checkpointed (orbax) every this many "
                       "steps, where the experiment allows")
  ap.add_argument("--figures", default="auto", choices=sweep.FIGURES,
                  help=f"auto: the grid's figure, and each point's up to {sweep.AUTO_FIGURES} "
                       "points; all; none")
  ap.add_argument("--distributed", action="store_true",
                  help="one of several processes under jax.distributed: "
                       "jax.distributed.initialize() reads SLURM, Open MPI or TPU settings")
  ap.add_argument("--coordinator_address", help="with --num_processes and --process_id: "
                  "jax.distributed by hand, e.g. localhost:1234 (process 0's host)")
  ap.add_argument("--num_processes", type=int)
  ap.add_argument("--process_id", type=int)
  args, rest = ap.parse_known_args(argv)
  by_hand = (args.coordinator_address, args.num_processes, args.process_id)
  if any(v is not None for v in by_hand):
    if any(v is None for v in by_hand):
      ap.error("--coordinator_address, --num_processes and --process_id go together")
    jax.distributed.initialize(*by_hand)  # before any computation
  elif args.distributed:
    jax.distributed.initialize()
  overrides = []
  for item in rest:
    if not item.startswith("--config."):
      ap.error(f"unrecognized argument {item!r} (config fields: --config.<field>=<value>)")
    overrides.append(item[len("--config."):])
  try:
    config = cfg.load_config(args.config, overrides)
    if args.out is None and not config.get("output_dir"):
      raise ValueError("no --out given and the config has no output_dir.")
    out, name = (args.out, "--out") if args.out else (config.output_dir, "config.output_dir")
    start = time.perf_counter()
    path = sweep.run_sweep(config, out, memory_budget_mb=args.memory_budget_mb,
                           checkpoint_every_steps=args.checkpoint_every_steps,
                           figures=args.figures, out_name=name)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except OSError as e:  # a full or vanished disk: what was written so far is kept
    where = f" ({e.filename})" if e.filename else ""
    print(f"error: writing the run failed: {e.strerror or e}{where}; every finished "
          "chunk is kept, and rerunning the same command resumes.", file=sys.stderr)
    return 2
  if jax.process_index() > 0:
    return 0  # process 0 wrote the run and reports it
  print(f"{time.perf_counter() - start:.1f} s (compile included); wrote {path}/: "
        "results.parquet, summary.csv, summary.json, figure.png, points/ "
        "(load with dynamics.load_sweep)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
