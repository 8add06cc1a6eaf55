"""A metric against a swept field, theory beside simulation, with seed bands.

    python scripts/plot_sweep.py --dir=runs/depth_sweep --x=train.lr --metric=loss \\
        [--t=4.0 | --step=-1] [--logy] [--out=runs/depth_sweep/loss_vs_lr.png]

For every combination of the other swept fields: the seed mean of `metric` at
time `--t` (`t = lr x step`, interpolated linearly between the two logged
steps around it, so that points with different learning rates are compared at
the same time) or at logged step `--step` (an index; default: the last), as a
line with its own marker and style, mean +- one standard deviation over seeds
as a band, and the theory (`<metric>_pred`), where the experiment has one,
dashed. Diverged seeds (masked values) are left out. Errors are one line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import pandas as pd


class Usage(Exception):
  pass


def at_time(table, cols, t):
  """Each (point, seed)'s `cols` at time `t`, linearly interpolated between the
  logged steps around it; a point whose run ends before `t` is left out."""
  rows = []
  for _, run in table.groupby(["point", "seed"]):
    run = run.sort_values("t")
    if not run["t"].iloc[0] <= t <= run["t"].iloc[-1]:
      continue
    row = run.iloc[0].copy()
    for c in cols:
      row[c] = np.interp(t, run["t"].to_numpy(), run[c].to_numpy())
    rows.append(row)
  if not rows:
    raise Usage(f"--t={t} lies outside every run's logged times")
  return pd.DataFrame(rows)


def swept_fields(directory) -> list:
  from dynamics import config as cfg
  with open(os.path.join(directory, "run.json")) as f:
    sweep = json.load(f)["config"].get("sweep") or {}
  return cfg.leaf_fields(sweep)


def plot(directory, x, metric, t=None, step=None, logy=False, out=None) -> str:
  from dynamics import load_sweep, plots
  if not os.path.isdir(directory):
    raise Usage(f"--dir {directory!r} is not a directory")
  table = load_sweep(directory)
  swept = swept_fields(directory)
  if x not in swept:
    raise Usage(f"--x={x!r} is not a swept field; swept: {', '.join(swept) or 'none'}")
  if metric not in table.columns:
    known = [c for c in table.columns if not c.endswith(("_pred", "_rel_error"))]
    raise Usage(f"--metric={metric!r} is not a column; columns: {', '.join(known)}")
  if t is not None and step is not None:
    raise Usage("--t and --step: choose one")
  cols = [c for c in (metric, f"{metric}_pred") if c in table.columns]
  if t is not None:
    at, where = at_time(table, cols, t), f"t = {t:g} (interpolated)"
  else:
    steps = np.sort(table["step"].unique())
    if step is not None and not -len(steps) <= step < len(steps):
      raise Usage(f"--step={step} is not an index of the {len(steps)} logged steps")
    chosen = steps[-1 if step is None else step]
    at, where = table[table["step"] == chosen], f"step {chosen}"
  others = [f for f in swept if f != x]
  fig, (ax,) = plots.figure(1, size=(6.5, 4.2))
  groups = at.groupby(others) if others else [((), at)]
  for i, (key, rows) in enumerate(groups):
    marker, style = "osD^vP*X"[i % 8], ("-", "-.", ":")[i // 8 % 3]
    key = key if isinstance(key, tuple) else (key,)
    label = ", ".join(f"{f}={v}" for f, v in zip(others, key)) or "simulation"
    stats = rows.groupby(x)[metric].agg(["mean", "std"])
    xs = stats.index.to_numpy(dtype=float)
    color = f"C{i}"
    ax.plot(xs, stats["mean"], marker=marker, ls=style, color=color, label=label,
            ms=8 - 4 * i / max(len(groups) - 1, 1), mfc="none" if i % 2 else color)
    ax.fill_between(xs, stats["mean"] - stats["std"].fillna(0),
                    stats["mean"] + stats["std"].fillna(0), color=color, alpha=0.2)
    if f"{metric}_pred" in rows.columns:
      ax.plot(xs, rows.groupby(x)[f"{metric}_pred"].mean(), "--", color="k", lw=1.2,
              marker=marker, ms=4, label="theory (dashed)" if i == 0 else None)
  values = np.sort(at[x].unique())
  if np.issubdtype(values.dtype, np.integer):  # ticks at the swept integers only
    ax.set_xticks(values, [str(v) for v in values])
  ax.set(xlabel=x, ylabel=f"{metric} at {where}",
         title=f"{os.path.basename(os.path.abspath(directory))}: seed mean +- std")
  if logy:
    ax.set_yscale("log")
  ax.legend(fontsize=8)
  out = out or os.path.join(directory, f"{metric}_vs_{x}.png")
  plots.save(fig, out)
  return out


class OneLineParser(argparse.ArgumentParser):
  """Usage errors in one line (`--help` has the rest), exit status 2."""

  def error(self, message):
    self.exit(2, f"error: {message} (see --help)\n")


def main(argv=None) -> int:
  ap = OneLineParser(description=__doc__.split("\n")[0])
  ap.add_argument("--dir", required=True, help="a finished run directory")
  ap.add_argument("--x", required=True, help="swept field on the x axis, e.g. train.lr")
  ap.add_argument("--metric", default="loss", help="column of results.parquet")
  ap.add_argument("--step", type=int, help="logged step index (default -1, the last)")
  ap.add_argument("--t", type=float, help="time t = lr x step, interpolated")
  ap.add_argument("--logy", action="store_true")
  ap.add_argument("--out", help="PNG path (default: DIR/METRIC_vs_X.png)")
  args = ap.parse_args(argv)
  try:
    out = plot(args.dir, args.x, args.metric, args.t, args.step, args.logy, args.out)
  except (Usage, ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
