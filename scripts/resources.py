"""What each config costs: wall time, peak memory and disk, one config at a time.

    python scripts/resources.py [CONFIG ...] [--out DIR] [--skip NAME ...]

Runs `scripts/run.py --config=CONFIG --out=DIR/NAME` for each config (default:
every file in configs/papers/, then configs/*.py) in its own process, one after
another, and prints a markdown table: seconds of wall time, the process's peak
resident memory (`os.wait4`'s `ru_maxrss`), the bytes the run left in its
directory (total, and the results table alone) and its exit status. Each
row is also printed as one JSON line as soon as it finishes. Results:
docs/reproductions.md.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def disk(path: str) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path)
             for f in files)


def measure(config: str, out: str) -> dict:
  name = os.path.splitext(os.path.relpath(config, os.path.join(ROOT, "configs")))[0]
  target = os.path.join(out, name.replace(os.sep, "_"))
  shutil.rmtree(target, ignore_errors=True)
  t = time.perf_counter()
  proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "scripts", "run.py"),
                           f"--config={config}", f"--out={target}"], cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  _, status, usage = os.wait4(proc.pid, 0)
  seconds = time.perf_counter() - t
  err = proc.stderr.read().decode(errors="replace").strip().splitlines()
  proc.stderr.close()
  code = os.waitstatus_to_exitcode(status)
  table = os.path.join(target, "results.parquet")
  return {"config": name, "seconds": round(seconds, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024),
          "disk_mb": round(disk(target) / 2**20, 1) if os.path.isdir(target) else 0.0,
          "table_mb": round(os.path.getsize(table) / 2**20, 1) if os.path.exists(table) else 0.0,
          "rc": code, "error": err[-1] if code and err else ""}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("configs", nargs="*", help="config files (default: every paper config, "
                      "then every config)")
  parser.add_argument("--out", default=None, help="where the runs go (default: a temporary "
                      "directory, removed at the end)")
  parser.add_argument("--skip", nargs="*", default=[], help="config names to leave out")
  args = parser.parse_args(argv)
  configs = args.configs or (sorted(glob.glob(os.path.join(ROOT, "configs", "papers", "*.py")))
                             + sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))))
  configs = [c for c in configs if os.path.splitext(os.path.basename(c))[0] not in args.skip]
  for c in configs:
    if not os.path.isfile(c):
      parser.error(f"no config file {c!r}")
  out = args.out or tempfile.mkdtemp(prefix="resources-")
  rows = []
  try:
    for c in configs:
      rows.append(measure(os.path.abspath(c), out))
      print(json.dumps(rows[-1]), flush=True)
  finally:
    if args.out is None:
      shutil.rmtree(out, ignore_errors=True)
  print("\n| config | wall s | peak memory MB | disk MB (table) | rc |\n|---|---|---|---|---|")
  for r in rows:
    print(f"| `{r['config']}` | {r['seconds']:.0f} | {r['peak_rss_mb']} | "
          f"{r['disk_mb']} ({r['table_mb']}) | {r['rc']} |")
  return 0 if all(r["rc"] == 0 for r in rows) else 1


if __name__ == "__main__":
  sys.exit(main())
