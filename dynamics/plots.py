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
    t: `[L]` times, or `[S, L]` (each seed's own; the mean is drawn against
      their mean).
    sim: `[S, L]` one metric of every seed.
    pred: `[S, L]` (per seed; its mean over the kept seeds is drawn) or `[L]`, or None.
  """
  from matplotlib.collections import LineCollection
  sim = np.asarray(sim, np.float64)
  t = np.broadcast_to(np.asarray(t, np.float64), sim.shape)
  kept = np.isfinite(sim[:, -1])
  if not kept.all():
    label = f"{label or 'mean'} ({(~kept).sum()} of {len(kept)} diverged, left out)"
    if pred is not None and np.ndim(pred) == 2 and kept.any():
      pred = np.asarray(pred)[kept]
    if kept.any():
      sim, t = sim[kept], t[kept]
  if log:
    ax.set_yscale("log")
  # one collection, not a line per seed: half the drawing time
  ax.add_collection(LineCollection(np.stack([t, sim], -1), colors=color, alpha=0.15, lw=0.7))
  ax.autoscale_view()
  with np.errstate(all="ignore"):
    mean = np.nanmean(np.where(np.isfinite(sim), sim, np.nan), 0) \
        if np.isfinite(sim).any() else np.full(sim.shape[1], np.nan)
  tm = t.mean(0)
  ax.plot(tm, mean, color=color, lw=2, label=label)
  if pred is not None:
    pred = np.asarray(pred, np.float64)
    ax.plot(tm, pred.mean(0) if pred.ndim == 2 else pred, "--", color="k", lw=1.2)


def legend_theory(ax, **kwargs) -> None:
  """A legend with one 'theory (dashed)' entry added."""
  ax.plot([], [], "--", color="k", lw=1.2, label="theory")
  ax.legend(fontsize=8, **kwargs)


def point(result, path: str) -> None:
  """A grid point's default figure: one panel per observation with a theory
  (or the loss, without one), up to 8; a vector observation as up to 10
  lines; seeds thin, mean solid, theory dashed."""
  traj, pred = result.traj, result.pred
  names = [k for k in traj.logged if k in pred and np.ndim(traj.logged[k]) <= 3] or \
      [k for k in traj.logged if np.ndim(traj.logged[k]) == 2][:1]
  names = names[:8]
  fig, axes = figure(min(len(names), 4), -(-len(names) // 4))
  for ax, name in zip(axes, names):
    sim = np.asarray(traj.logged[name], np.float64)
    p = pred.get(name)
    if sim.ndim == 2:
      sim, p = sim[..., None], (None if p is None else np.asarray(p)[..., None])
    kept = sim[np.asarray(traj.kept)]
    positive = kept[np.isfinite(kept)]
    log = positive.size and np.all(positive > 0) and positive.max() > 10 * positive.min()
    for k in range(min(sim.shape[-1], 10)):
      trajectories(ax, traj.t, sim[..., k], None if p is None else p[..., k], color=f"C{k}",
                   log=bool(log), label=f"{name}[{k}]" if sim.shape[-1] > 1 else None)
    ax.set(xlabel="t = lr x steps", ylabel=name, title=name)
    if p is not None:
      legend_theory(ax)
  title = ", ".join(f"{k}={v}" for k, v in result.fields.items())
  save(fig, path, title or None)


def against(summary, *, x: str, y: str, by: str | None = None, loglog: bool = False,
            ax=None, label: str | None = None):
  """A per-point summary (`dynamics.load_summary`'s frame, a report's `results`,
  or a list of dicts)
  against a swept axis: one line per value of `by`, and with `loglog` the
  least-squares slope of `log y` against `log x` (`dynamics.metrics.loglog_slope`)
  in each legend entry. Returns `(fig, slopes)`: `slopes` maps each `by` value
  (or None) to its slope."""
  import pandas as pd
  from dynamics import metrics
  if isinstance(summary, pd.DataFrame):
    frame = summary
  else:  # Results (a report's argument) or dicts
    frame = pd.DataFrame([{**r.fields, **r.summary} if hasattr(r, "summary") else r
                          for r in summary])
  for col in (x, y) + ((by,) if by else ()):
    if col not in frame.columns:
      raise ValueError(f"against(): no column {col!r} in the summary (columns: "
                       f"{', '.join(map(str, frame.columns))}).")
  fig = None
  if ax is None:
    fig, (ax,) = figure(1)
  slopes = {}
  groups = frame.groupby(by, sort=True) if by else [(None, frame)]
  for j, (value, rows) in enumerate(groups):
    rows = rows.sort_values(x)
    xs, ys = rows[x].to_numpy(np.float64), rows[y].to_numpy(np.float64)
    text = f"{by} = {value}" if by else (label or y)
    if loglog:
      slopes[value] = metrics.loglog_slope(xs, ys)
      text += "" if slopes[value] is None else f": slope {slopes[value]:.2f}"
    ax.plot(xs, ys, "o-", color=f"C{j}", label=text)
  if loglog:
    ax.set(xscale="log", yscale="log")
  ax.set(xlabel=x, ylabel=y)
  values = np.sort(frame[x].unique()).astype(np.float64)
  if len(values) <= 12:  # label the swept values themselves
    from matplotlib.ticker import NullFormatter
    ax.set_xticks(values, [f"{v:g}" for v in values])
    ax.xaxis.set_minor_formatter(NullFormatter())
  ax.legend(fontsize=8)
  return (fig if fig is not None else ax.figure), slopes


def grid(results, path: str, title: str | None = None) -> None:
  """A grid's default figure: one panel per observation with a theory (or
  the loss), up to 4; each point's seed mean solid (one colour a point,
  labelled by its swept fields), its theory dashed."""
  results = list(results)
  first = results[0]
  names = [k for k in first.traj.logged if k in first.pred and np.ndim(first.traj.logged[k]) == 2]
  names = (names or [k for k in first.traj.logged if np.ndim(first.traj.logged[k]) == 2][:1])[:4]
  fig, axes = figure(max(len(names), 1))
  for ax, name in zip(axes, names):
    for j, r in enumerate(results[:10]):
      traj = r.traj
      kept = traj.kept
      if not kept.any():
        continue
      sim = np.asarray(traj.logged[name], np.float64)[kept]
      t = np.asarray(traj.t)[kept].mean(0)
      label = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in r.fields.items())
      ax.plot(t, np.nanmean(sim, 0), color=f"C{j}", lw=1.5, label=label)
      if name in r.pred:
        ax.plot(t, np.asarray(r.pred[name])[kept].mean(0), "--", color="k", lw=1)
    ax.set(xlabel="t = lr x steps", ylabel=name, title=f"{name}: seed means, theory dashed")
    ax.legend(fontsize=7)
  save(fig, path, title or (f"first 10 of {len(results)} grid points" if len(results) > 10
                            else None))


def ridge_minima(groups: dict):
  """The test error against the ridge, one line per group, with the theory's
  minimum on a fine grid (dotted) and the measured one (`v`,
  `metrics.log_parabola_min` over the swept ridges). `groups`: name -> (ridges,
  measured, standard errors, `theory(ridges) -> test error`); groups of fewer
  than three positive ridges are left out. Returns `(figure, {name:
  {"predicted", "measured", "measured_on_grid"}})`, or `(None, None)`."""
  from dynamics import metrics
  groups = {k: v for k, v in groups.items() if len(v[0]) >= 3}
  if not groups:
    return None, None
  fig, (ax,) = figure(1, size=(6.4, 4.6))
  optimal = {}
  for j, (name, (ridges, measured, se, theory)) in enumerate(groups.items()):
    order = np.argsort(ridges)
    ridges, measured = np.asarray(ridges)[order], np.asarray(measured)[order]
    dense = np.geomspace(ridges.min() / 3, ridges.max() * 3, 400)
    curve, best, col = theory(dense), metrics.log_parabola_min(ridges, measured), f"C{j % 10}"
    optimal[name] = {"predicted": float(dense[np.argmin(curve)]), "measured": best,
                     "measured_on_grid": float(ridges[np.argmin(measured)])}
    ax.plot(dense, curve, "-", color=col, label=f"{name}: test_error")
    ax.errorbar(ridges, measured, np.asarray(se)[order], fmt="o", ms=4, color=col)
    ax.axvline(optimal[name]["predicted"], color=col, ls=":", lw=1)
    ax.plot(best, measured.min(), "v", color=col, ms=9, mfc="none")
  ax.set(xscale="log", yscale="log", xlabel="ridge", ylabel="test error (excess + noise)",
         title="kernel regression (o), test_error (-);\noptimal ridge predicted (dotted), "
         "measured (v)")
  ax.legend(fontsize=7)
  return fig, optimal
