"""Runs the grid an experiment config declares, theory beside simulation.

    python scripts/run.py --config=configs/deep_linear.py[:smoke] [--out=DIR] \\
        [--config.train.lr=0.02 --config.sweep.model.width="(32,128)" ...]

Every grid point trains all its seeds (points that can share a compiled call
do), the experiment's theory is set beside each observation, and DIR (default
`config.output_dir`) receives the results table, the summaries and the
figures (docs/sweeps.md). Rerunning the same command after a kill or an
interrupt resumes; a DIR holding another config, or a run by other code, is
refused (`--restart` starts it afresh). `:smoke` runs the config's
seconds-long variant. Any config field is overridden with
`--config.<field>=<value>`.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time


class _Terminated(KeyboardInterrupt):
  """SIGTERM, raised where Python next runs (between two segments of a run)."""


def _on_term(signum, frame):
  raise _Terminated()


class OneLineParser(argparse.ArgumentParser):
  """Usage errors in one line (`--help` has the rest), exit status 2."""

  def error(self, message):
    self.exit(2, f"error: {message} (see --help)\n")


def main(argv=None) -> int:
  ap = OneLineParser(
      description=__doc__.split("\n")[0],
      epilog="Config overrides: --config.<field>=<value>, e.g. --config.train.lr=0.02.")
  ap.add_argument("--config", required=True, help="experiment config file, e.g. "
                  "configs/deep_linear.py, or configs/deep_linear.py:smoke")
  ap.add_argument("--out", help="run directory (default: config.output_dir)")
  ap.add_argument("--memory_budget_mb", type=float, default=2048,
                  help="memory for the outputs of one chunk of (point x seed) rows in flight; "
                       "one file per chunk")
  ap.add_argument("--checkpoint_every_s", type=float, default=60.0,
                  help="inside a chunk the training state is saved at every tenth of its "
                       "steps and at least this often, while a save costs under a tenth of "
                       "the time between saves (0: after every segment)")
  ap.add_argument("--stall_timeout_s", type=float, default=1800,
                  help="when no segment of training finishes for this long (a hang), print "
                       "where the run is and every thread's stack, and exit (status 3); a "
                       "rerun resumes")
  ap.add_argument("--figures", default="auto", choices=("auto", "all", "none"),
                  help="auto: the grid's figure, and each point's up to 24 points; all; none")
  ap.add_argument("--restart", action="store_true",
                  help="discard what the run directory holds and start afresh")
  ap.add_argument("--distributed", action="store_true",
                  help="one of several processes under jax.distributed: "
                       "jax.distributed.initialize() reads SLURM, Open MPI or TPU settings")
  ap.add_argument("--coordinator_address", help="with --num_processes and --process_id: "
                  "jax.distributed by hand, e.g. localhost:1234 (process 0's host)")
  ap.add_argument("--num_processes", type=int)
  ap.add_argument("--process_id", type=int)
  args, rest = ap.parse_known_args(argv)
  overrides = []
  for item in rest:
    if not item.startswith("--config."):
      ap.error(f"unrecognized argument {item!r} (config fields: --config.<field>=<value>)")
    overrides.append(item[len("--config."):])
  signal.signal(signal.SIGTERM, _on_term)
  where = "start-up (nothing was written)"
  try:
    import jax
    from dynamics import config as cfg  # configures the devices: may refuse the environment
    from dynamics import sweep
    by_hand = (args.coordinator_address, args.num_processes, args.process_id)
    if any(v is not None for v in by_hand):
      if any(v is None for v in by_hand):
        ap.error("--coordinator_address, --num_processes and --process_id go together")
      jax.distributed.initialize(*by_hand)  # before any computation
    elif args.distributed:
      jax.distributed.initialize()
    config = cfg.load_config(args.config, overrides)
    if args.out is None and not config.get("output_dir"):
      raise ValueError("no --out given and the config has no output_dir.")
    out, name = (args.out, "--out") if args.out else (config.output_dir, "config.output_dir")
    start = time.perf_counter()
    path = sweep.run_sweep(
        config, out, memory_budget_mb=args.memory_budget_mb,
        checkpoint_every_s=args.checkpoint_every_s, stall_timeout_s=args.stall_timeout_s,
        figures=args.figures, out_name=name,
        restart=args.restart)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except OSError as e:  # a full or vanished disk: what was written so far is kept
    where_ = f" ({e.filename})" if e.filename else ""
    print(f"error: writing the run failed: {e.strerror or e}{where_}; every finished "
          "chunk and checkpoint is kept, and rerunning the same command resumes.",
          file=sys.stderr)
    return 2
  except KeyboardInterrupt as e:
    code = 143 if isinstance(getattr(e, "cause", e), _Terminated) else 130
    what = getattr(e, "where", where)
    print(f"\ninterrupted ({'SIGINT' if code == 130 else 'SIGTERM'}) during {what}; rerun the "
          "same command to resume.", file=sys.stderr)
    # Leave at once: what the run wrote is on disk (every file is renamed into
    # place whole), and interpreter shutdown with XLA's threads still busy can
    # abort the process instead of exiting with `code`.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
  if jax.process_index() > 0:
    return 0  # process 0 wrote the run and reports it
  files = ["results.parquet", "summary.csv", "summary.json", "points/"]
  if os.path.exists(os.path.join(path, "figure.png")):
    files.insert(3, "figure.png")
  print(f"{time.perf_counter() - start:.1f} s (compile included); wrote {path}/: "
        f"{', '.join(files)} (load with dynamics.load_sweep)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
