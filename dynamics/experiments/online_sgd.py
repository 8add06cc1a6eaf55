"""Online SGD of soft committee machines on a teacher of the same form, beside
the order-parameter ODEs (`theory.online_sgd`), at any input dimension N.

A student `sigma(x) = sum_i v_i g(w_i . x / sqrt(N))` (`model.k` units, `g(x)
= erf(x / sqrt(2))`) learns from `tau(x) = sum_n g(w*_n . x / sqrt(N))`
(`task.m` units, rows of `W*` orthogonal with `|w*_n|^2 = N`: `T = I`), one
fresh Gaussian `x` and label `y = tau(x) + xi`, `xi ~ N(0, task.noise)`, per
step: plain SGD at `train.lr` on `L = 1/2 (sigma - y)^2`, i.e. `w_i += lr
delta_i x / sqrt(N)`. A seed's first layer starts at `init.scale` x N(0, 1)
entries (`Q ~ scale^2 I`, `R ~ scale / sqrt(N)`), its second at `init.v`;
with `model.train_second_layer` the second layer is the parameter `u = sqrt(N)
v`, so that its step is Goldt et al.'s `(lr / N) (y - sigma) g(l_i)`
(docs/conventions.md). Time: `alpha = steps / N = t / (lr N)`.

Logged: `Q = W W^T / N`, `R = W W*^T / N`, `v` and the error `eps =
committee_error(Q, R, T, v)` (exact for Gaussian inputs, against the clean
teacher). Theory: `committee_flow` from each seed's own step-0 `Q`, `R`, `v`.
The report draws the error against alpha, and across the grid measures the
finite-N gap against N, the plateau's length against ln N beside its
prediction `1 / (2 escape_rate)` (`theory.online_sgd.plateau`), and the final
error against lr beside `critical_lr` (docs/online_sgd.md).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import erf

from dynamics import config as cfg
from dynamics import metrics, plots
from theory import online_sgd as osgd

GAP_WINDOW = 0.5  # the finite-N gap is taken over alpha < GAP_WINDOW x the earliest escape


def setup(config) -> dict:
  k, m, n = (cfg.integer(config, f) for f in ("model.k", "task.m", "task.n"))
  cfg.one_of(config, "model.activation", ("erf",))  # the ODEs' closed forms are erf's
  if not isinstance(cfg.get(config, "model.train_second_layer"), bool):
    cfg.fail("model.train_second_layer", "must be True or False.")
  if n < k + m:
    cfg.fail("task.n", f"must be at least model.k + task.m = {k + m}, got {n}.")
  cfg.integer(config, "task.seed", minimum=0)
  cfg.nonnegative(config, "task.noise")
  cfg.positive(config, "init.scale")
  cfg.positive(config, "init.v")
  cfg.positive(config, "train.lr")
  if config.train.num_steps % n:
    cfg.fail("train.num_steps", f"must be a multiple of task.n = {n} (whole alphas).")
  rng = np.random.default_rng(config.task.seed)
  w_teacher = np.linalg.qr(rng.normal(size=(n, m)))[0].T * np.sqrt(n)
  return {"w_teacher": w_teacher, "t": w_teacher @ w_teacher.T / n}


def _v(config, state):
  if config.model.train_second_layer:
    return state["params"]["u"] / jnp.sqrt(config.task.n).astype(state["params"]["u"].dtype)
  return state["v_fixed"]


def init(config, key, data) -> dict:
  k, n, dtype = config.model.k, config.task.n, data["w_teacher"].dtype
  w = config.init.scale * jax.random.normal(key, (k, n), dtype)
  v = jnp.full((k,), config.init.v, dtype)
  if config.model.train_second_layer:
    return {"params": {"w": w, "u": jnp.sqrt(jnp.asarray(n, dtype)) * v}}
  return {"params": {"w": w}, "v_fixed": v}


def loss(config, state, data, key):
  """One fresh sample's `1/2 (sigma(x) - y)^2`; `key=None`: its expectation,
  `eps + noise / 2`."""
  if key is None:
    obs = observe(config, state, data)
    return obs["error"] + 0.5 * config.task.noise
  w, wt = state["params"]["w"], data["w_teacher"]
  kx, kn = jax.random.split(key)
  x = jax.random.normal(kx, (config.task.n,), w.dtype)
  g = lambda h: erf(h / jnp.sqrt(2.0).astype(w.dtype))
  root_n = jnp.sqrt(jnp.asarray(config.task.n, w.dtype))
  y = jnp.sum(g(wt @ x / root_n)) + jnp.sqrt(config.task.noise) * jax.random.normal(kn, (), w.dtype)
  return 0.5 * (_v(config, state) @ g(w @ x / root_n) - y) ** 2


def observe(config, state, data) -> dict:
  w, n = state["params"]["w"], config.task.n
  q, r, v = w @ w.T / n, w @ data["w_teacher"].T / n, _v(config, state)
  return {"q": q, "r": r, "v": v, "error": osgd.committee_error(q, r, data["t"], v)}


def _alpha(config):
  """The logged alphas, from the config (concrete inside a traced theory)."""
  tr = config.train
  return np.arange(tr.num_steps // tr.log_every + 1) * tr.log_every / config.task.n


def theory(config, data, start, t) -> dict:
  """`committee_flow` from the seed's own step-0 `Q`, `R`, `v`."""
  flow = osgd.committee_flow(start["q"], start["r"], data["t"], _alpha(config),
                             lr=config.train.lr, v0=start["v"], noise=config.task.noise,
                             train_second_layer=config.model.train_second_layer)
  return {"q": flow["q"], "r": flow["r"], "v": flow["v"], "error": flow["error"]}


def _mean(x):
  """The mean over the finite entries (seeds that escaped); None if none did."""
  x = np.asarray(x, np.float64)
  return float(np.mean(x[np.isfinite(x)])) if np.isfinite(x).any() else None


def _point(r) -> dict:
  c, kept = r.config, r.traj.kept
  alpha = _alpha(c)
  sim = np.asarray(r.traj.logged["error"], np.float64)[kept]
  pred = r.pred["error"][kept]
  out = {"n": c.task.n, "lr": float(c.train.lr), "k": c.model.k, "m": c.task.m,
         "noise": float(c.task.noise), "second_layer": bool(c.model.train_second_layer),
         "final_error": float(np.mean(sim[:, -max(1, len(alpha) // 10):])),
         "final_error_pred": float(np.mean(pred[:, -max(1, len(alpha) // 10):]))}
  window = np.ones_like(alpha, bool)
  if c.model.k == c.task.m and not c.model.train_second_layer and c.init.v == 1.0 \
      and c.task.noise == 0 and c.train.lr < osgd.critical_lr(c.model.k):
    p = osgd.plateau(c.model.k, lr=float(c.train.lr))
    esc_sim, esc_pred = (metrics.time_to_fraction(alpha, e, p["error"], 0.5)
                         for e in (sim, pred))
    both = np.concatenate([esc_sim, esc_pred])
    first = np.nanmin(both) if np.isfinite(both).any() else alpha[-1]  # none escaped
    on = (alpha > 0.3 * first) & (alpha < 0.6 * first)  # reached the plateau, not left it
    out.update(plateau_error_pred=p["error"], escape_rate=p["escape_rate"],
               plateau_error=float(np.mean(sim[:, on])) if on.any() else None,
               escape_alpha=_mean(esc_sim), escape_alpha_pred=_mean(esc_pred),
               escape_alpha_sem=float(metrics.seed_stats(esc_sim)["sem"]))
    window = alpha < GAP_WINDOW * first
  # the finite-N gap: RMS over the window of sim - theory, mean over seeds
  out["gap"] = float(np.mean(np.sqrt(np.mean((sim - pred)[:, window] ** 2, axis=1))))
  return out


def _figure_errors(results, rows):
  fig, (ax,) = plots.figure(1, size=(6.4, 4.4))
  for i, (r, row) in enumerate(zip(results, rows)):
    if not row:
      continue
    sim = np.asarray(r.traj.logged["error"], np.float64)
    fmt = lambda v: v if isinstance(v, (bool, str)) else format(v, "g")
    label = ", ".join(f"{k.split('.')[-1]} {fmt(v)}" for k, v in r.fields.items()
                      if k not in ("train.num_steps", "train.log_every")) or "online SGD"
    plots.trajectories(ax, _alpha(r.config), sim, r.pred["error"], color=f"C{i % 10}",
                       label=label, log=True)
  ax.set(xlabel="alpha = steps / N", ylabel="generalisation error eps",
         title="online SGD against committee_flow from each seed's init")
  plots.legend_theory(ax)
  return fig


def report(config, results) -> dict:
  """Per point its final and plateau errors and escape times, simulated and
  predicted; across N the gap's and the escape's slopes; across lr the final
  error against `critical_lr`."""
  rows = [_point(r) if r.traj.kept.any() else {} for r in results]
  done = [x for x in rows if x]
  out = {"points": rows, "figure": _figure_errors(results, rows), "figures": {}}
  for lr in sorted({x["lr"] for x in done}):
    same = [x for x in done if x["lr"] == lr]
    if len({x["n"] for x in same}) < 2:
      continue
    ns = np.array([x["n"] for x in same], np.float64)
    fig, (ax1, ax2) = plots.figure(2)
    slope = metrics.loglog_slope(ns, [x["gap"] for x in same])
    ax1.loglog(ns, [x["gap"] for x in same], "o-", label=f"measured: slope {slope:.2f}")
    ax1.loglog(ns, same[0]["gap"] * np.sqrt(ns[0] / ns), "k:", label="1/sqrt(N)")
    ax1.set(xlabel="N", ylabel="RMS |eps_sim - eps_flow| (seed mean)", title="finite-N gap")
    ax1.legend(fontsize=8)
    grid = {f"lr_{lr:g}.gap_slope": slope}
    if all("escape_alpha" in x for x in same):
      fit = lambda y: float(np.polyfit(np.log(ns), y, 1)[0])
      esc = [x["escape_alpha"] for x in same]
      w = 1 / np.maximum([x["escape_alpha_sem"] for x in same], 1e-9) ** 2  # weighted LS
      lx = np.log(ns) - np.sum(w * np.log(ns)) / np.sum(w)
      grid[f"lr_{lr:g}.escape_slope_se"] = float(1 / np.sqrt(np.sum(w * lx**2)))
      pred = 1 / (2 * same[0]["escape_rate"])
      grid.update({f"lr_{lr:g}.escape_slope": fit(esc), f"lr_{lr:g}.escape_slope_flow":
                   fit([x["escape_alpha_pred"] for x in same]),
                   f"lr_{lr:g}.escape_slope_pred": pred})
      ax2.errorbar(ns, esc, [x["escape_alpha_sem"] for x in same], fmt="o", label=(
          f"online SGD: {fit(esc):.2f} per ln N"))
      ax2.plot(ns, [x["escape_alpha_pred"] for x in same], "s--", mfc="none",
               label="committee_flow from each seed's init")
      ax2.plot(ns, esc[0] + pred * np.log(ns / ns[0]), "k:",
               label=f"1 / (2 escape_rate) = {pred:.2f} per ln N")
      ax2.set(xscale="log", xlabel="N", ylabel="alpha at which eps < plateau / 2",
              title="plateau length")
      ax2.legend(fontsize=8)
    from matplotlib.ticker import NullFormatter
    for ax in (ax1, ax2):
      ax.set_xticks(ns, [f"{n:g}" for n in ns])
      ax.xaxis.set_minor_formatter(NullFormatter())
    out["figures"][f"n_sweep_lr_{lr:g}"] = fig
    out.update(grid)
  lrs = sorted({x["lr"] for x in done})
  if len(lrs) > 1:
    fig, (ax,) = plots.figure(1)
    for j, n in enumerate(sorted({x["n"] for x in done})):
      same = sorted((x for x in done if x["n"] == n), key=lambda x: x["lr"])
      ax.plot([x["lr"] for x in same], [x["final_error"] for x in same], "o", color=f"C{j}",
              label=f"online SGD, N {n}")
      ax.plot([x["lr"] for x in same], [x["final_error_pred"] for x in same], "--",
              color=f"C{j}", label=f"committee_flow, N {n}")
    c = results[0].config
    if c.model.k == c.task.m and not c.model.train_second_layer:
      out["critical_lr"] = osgd.critical_lr(c.model.k)
      ax.axvline(out["critical_lr"], color="k", lw=0.8,
                 label=f"critical_lr = {out['critical_lr']:.3f}")
    ax.set(yscale="log", xlabel="lr", ylabel="final error (last 10% of alpha)",
           title="where learning fails")
    ax.legend(fontsize=8)
    out["figures"]["lr"] = fig
  if len({x["k"] for x in done}) > 1:  # over-parameterisation (Goldt et al. 2019)
    fig, (ax,) = plots.figure(1)
    for j, second in enumerate(sorted({x["second_layer"] for x in done})):
      same = sorted((x for x in done if x["second_layer"] == second), key=lambda x: x["k"])
      name = "both layers" if second else "first layer"
      ax.plot([x["k"] for x in same], [x["final_error"] for x in same], "o", color=f"C{j}",
              label=f"online SGD, {name}")
      ax.plot([x["k"] for x in same], [x["final_error_pred"] for x in same], "--",
              color=f"C{j}", label=f"committee_flow, {name}")
    ax.set(yscale="log", xlabel="student units K", ylabel="final error (last 10% of alpha)",
           title=f"a teacher of M = {done[0]['m']} units")
    ax.legend(fontsize=8)
    out["figures"]["k"] = fig
  return out
