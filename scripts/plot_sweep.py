"""A metric against a swept field, theory beside simulation, with seed bands.

    python scripts/plot_sweep.py --dir=runs/depth_sweep --x=train.lr --metric=loss \\
        [--t=4.0 | --step=-1] [--logy] [--out=runs/depth_sweep/loss_vs_lr.png]

For every combination of the other swept fields: the seed mean of `metric` at
time `--t` (`t = lr x step`, interpolated linearly between the two logged
steps around it, so that points with different learning rates are compared at
the same time) or at logged step `--step` (an index; default: the last), as a
line with its own marker and style, mean +- one standard deviation over seeds
as a band, and the theory (`<metric>_pred`), where the experiment has one,
dashed. Diverged seeds (masked values) are left out.
"""

from __future__ import annotations

import json
import os

from absl import app, flags
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from dynamics import load_sweep

_DIR = flags.DEFINE_string("dir", None, "Sweep directory.")
_X = flags.DEFINE_string("x", None, "Swept field on the x axis, e.g. train.lr.")
_METRIC = flags.DEFINE_string("metric", "loss", "Column of results.parquet.")
_STEP = flags.DEFINE_integer("step", None, "Logged step (index into the logged steps; "
                             "default -1, the last). Not with --t.")
_T = flags.DEFINE_float("t", None, "Time t = lr x step at which to compare every point, "
                        "interpolated between logged steps.")
_LOGY = flags.DEFINE_bool("logy", False, "Logarithmic y axis.")
_OUT = flags.DEFINE_string("out", None, "PNG path (default: DIR/METRIC_vs_X.png).")


def at_time(table, cols, t):
  """Each (point, seed)'s `cols` at time `t`, linearly interpolated between the
  logged steps around it; a point whose run ends before `t` is left out."""
  rows = []
  for (point, seed), run in table.groupby(["point", "seed"]):
    run = run.sort_values("t")
    if not run["t"].iloc[0] <= t <= run["t"].iloc[-1]:
      continue
    row = run.iloc[0].copy()
    for c in cols:
      row[c] = np.interp(t, run["t"].to_numpy(), run[c].to_numpy())
    rows.append(row)
  if not rows:
    raise app.UsageError(f"--t={t} lies outside every run's logged times")
  return pd.DataFrame(rows)


def main(argv):
  del argv
  table = load_sweep(_DIR.value)
  with open(os.path.join(_DIR.value, "grid.json")) as f:
    swept = list(json.load(f)["points"][0])
  if _X.value not in swept:
    raise app.UsageError(f"--x must be a swept field: {swept}")
  if _METRIC.value not in table.columns:
    raise app.UsageError(f"--metric must be a column: {sorted(table.columns)}")
  if _T.value is not None and _STEP.value is not None:
    raise app.UsageError("--t and --step: choose one")
  cols = [c for c in (_METRIC.value, f"{_METRIC.value}_pred") if c in table.columns]
  if _T.value is not None:
    at, where = at_time(table, cols, _T.value), f"t = {_T.value:g} (interpolated)"
  else:
    steps = np.sort(table["step"].unique())
    step = steps[-1 if _STEP.value is None else _STEP.value]
    at, where = table[table["step"] == step], f"step {step}"
  others = [f for f in swept if f != _X.value]
  fig, ax = plt.subplots(figsize=(6.5, 4.2))
  groups = at.groupby(others) if others else [((), at)]
  for i, (key, rows) in enumerate(groups):
    marker, style = "osD^vP*X"[i % 8], ("-", "--", "-.", ":")[i // 8 % 4]
    key = key if isinstance(key, tuple) else (key,)
    label = ", ".join(f"{f}={v}" for f, v in zip(others, key)) or "simulation"
    stats = rows.groupby(_X.value)[_METRIC.value].agg(["mean", "std"])
    x = stats.index.to_numpy(dtype=float)
    color = f"C{i}"
    ax.plot(x, stats["mean"], marker=marker, ls=style, color=color, label=label,
            ms=8 - 4 * i / max(len(groups) - 1, 1), mfc="none" if i % 2 else color)
    ax.fill_between(x, stats["mean"] - stats["std"].fillna(0),
                    stats["mean"] + stats["std"].fillna(0), color=color, alpha=0.2)
    pred = f"{_METRIC.value}_pred"
    if pred in rows.columns:
      ax.plot(x, rows.groupby(_X.value)[pred].mean(), ":", color="k", lw=1.2, marker=marker,
              ms=4,
              label="theory" if i == 0 else None)
  ax.set(xlabel=_X.value, ylabel=f"{_METRIC.value} at {where}",
         title=f"{os.path.basename(os.path.abspath(_DIR.value))}: seed mean +- std")
  if _LOGY.value:
    ax.set_yscale("log")
  ax.legend(fontsize=8)
  fig.tight_layout()
  out = _OUT.value or os.path.join(_DIR.value, f"{_METRIC.value}_vs_{_X.value}.png")
  fig.savefig(out, dpi=120)
  print(f"wrote {out}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["dir", "x"])
  app.run(main)
