"""The figures every experiment draws: seeds thin, their mean solid, theory dashed.

    fig, axes = plots.figure(2)
    plots.trajectories(axes[0], t, out["u"][..., 0], pred["u"][..., 0], label="mode 0")
    plots.save(fig, path)

matplotlib runs headless (Agg) and is imported only when a figure is drawn.
"""

from __future__ import annotations

import numpy as np


def figure(ncols: int = 1, nrows: int = 1, *, size: tuple = (5.2, 4.0)):
  """`(fig, axes)`, axes a flat array of `nrows * ncols` panels."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows),
                           squeeze=False)
  return fig, axes.ravel()


def save(fig, path: str, title: str | None = None) -> None:
  """Saves and closes `fig`: empty panels hidden, and log axes that span a
  decade or more labelled at powers of ten only (matplotlib also labels
  minor ticks on short log axes, where the labels run into each other)."""
  import matplotlib.pyplot as plt
  from matplotlib.ticker import NullFormatter
  for ax in fig.axes:
    if not ax.has_data() and not ax.images:
      ax.axis("off")
    for axis, lim in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
      lo, hi = sorted(lim)
      if axis.get_scale() == "log" and lo > 0 and hi / lo >= 10:
        axis.set_minor_formatter(NullFormatter())
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def trajectories(ax, t, sim, pred=None, *, color="C0", label: str | None = None,
                 log: bool = False) -> None:
  """Per seed thin, seed mean solid, theory dashed black, against `t`.

  Seeds whose last value is not finite (diverged: the runner masks what they
  logged after diverging) are left out of the lines and the mean, and
  counted in the legend entry (`label (2 of 8 diverged, left out)`).

  Args:
    t: `[L]` times.
    sim: `[S, L]` one metric of every seed.
    pred: `[S, L]` (per seed; its mean over the kept seeds is drawn) or `[L]`, or None.
  """
  from matplotlib.collections import LineCollection
  sim = np.asarray(sim, np.float64)
  t = np.asarray(t, np.float64)
  kept = np.isfinite(sim[:, -1])
  if not kept.all():
    label = f"{label or 'mean'} ({(~kept).sum()} of {len(kept)} diverged, left out)"
    if pred is not None and np.ndim(pred) == 2 and kept.any():
      pred = np.asarray(pred)[kept]
    sim = sim[kept] if kept.any() else sim
  if log:
    ax.set_yscale("log")
  # one collection, not a line per seed: half the drawing time
  ax.add_collection(LineCollection(np.stack([np.broadcast_to(t, sim.shape), sim], -1),
                                   colors=color, alpha=0.15, lw=0.7))
  ax.autoscale_view()
  plot = ax.plot
  with np.errstate(all="ignore"):
    mean = np.nanmean(np.where(np.isfinite(sim), sim, np.nan), 0) \
        if np.isfinite(sim).any() else np.full(sim.shape[1], np.nan)
  plot(t, mean, color=color, lw=2, label=label)
  if pred is not None:
    pred = np.asarray(pred, np.float64)
    plot(t, pred.mean(0) if pred.ndim == 2 else pred, "--", color="k", lw=1.2)


def legend_theory(ax, **kwargs) -> None:
  """A legend with one 'theory (dashed)' entry added."""
  ax.plot([], [], "--", color="k", lw=1.2, label="theory")
  ax.legend(fontsize=8, **kwargs)


def default(t, out: dict, pred: dict, names, path: str, title: str = "") -> None:
  """One panel per metric in `names` (`[S, L]`, or `[S, L, K]` as K lines),
  theory dashed where `pred` has it."""
  names = list(names)[:8]
  fig, axes = figure(min(len(names), 4), -(-len(names) // 4))
  for ax, name in zip(axes, names):
    sim = np.asarray(out[name])
    p = pred.get(name)
    if sim.ndim == 2:
      sim, p = sim[..., None], (None if p is None else np.asarray(p)[..., None])
    for k in range(min(sim.shape[-1], 10)):
      trajectories(ax, t, sim[..., k], None if p is None else p[..., k], color=f"C{k}")
    ax.set(xlabel="t = lr x steps", ylabel=name, title=name)
    if p is not None:
      legend_theory(ax)
  save(fig, path, title)
