"""Progressive sharpening and the edge of stability (Cohen et al. 2021, 2022).

A grid point is one activation, optimizer (`train.optimizer`: `sgd`, `momentum`,
`adam`) and learning rate. The task is fixed by `task.seed`: `task.n` Gaussian
inputs in `R^d`, each labelled by the largest of `task.classes` outputs of a
random tanh teacher (`classes` one-hot targets). The model is a
`dynamics.models.mlp` in the standard parameterization (PyTorch's scale of
init), trained full batch on

    mse:            L(theta) = 1/(2n) sum_i |f(x_i) - y_i|^2
    cross_entropy:  L(theta) = 1/n sum_i [logsumexp f(x_i) - f(x_i) . y_i]

Logged along every trajectory, from Hessian-vector products
(`dynamics.curvature`): the sharpness (the Hessian's top eigenvalue, Lanczos),
the effective sharpness the optimizer's stability threshold applies to (the
sharpness for GD and momentum; `P^{-1/2} H P^{-1/2}` with Adam's preconditioner
at that step, NaN at step 0 where Adam has none), the Hessian's trace
(Hutchinson) and `|cos|` between the gradient and the top eigenvector.

`theory` gives each point's threshold (`theory.stability`: `2/lr`,
`(2 + 2 beta)/lr`, `38/lr`) and, for GD with a smooth activation, the gradient
flow from the seed's own init (`theory.stability.gradient_flow`, float64) with
its loss and sharpness up to `theory.flow_time` (0: none). Not for relu: its gradient
jumps wherever a unit's pre-activation changes sign, and an adaptive solver
shrinks its step at each of the many such crossings (minutes per seed). `report` measures, per point: when the effective
sharpness first reaches the threshold, its mean ratio to the threshold after,
how much it grew before (progressive sharpening), and when GD leaves the flow.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dynamics import config as cfg
from dynamics import curvature, plots
from dynamics.models import mlp
from theory import stability

LOSSES = ("mse", "cross_entropy")
ACTIVATIONS = ("tanh", "relu", "gelu", "erf")
DEPARTURE = 0.05  # GD has left the flow once |S - S_flow| > 0.05 S_flow (docs/curvature.md)


def setup(config) -> dict:
  """The task: inputs `x: [n, d]` and one-hot teacher labels `y: [n, classes]`."""
  n, d = cfg.integer(config, "task.n"), cfg.integer(config, "task.d")
  classes = cfg.integer(config, "task.classes", minimum=2)
  cfg.integer(config, "task.seed", minimum=0)
  cfg.one_of(config, "task.loss", LOSSES)
  cfg.one_of(config, "model.activation", ACTIVATIONS)
  widths = config.model.widths
  if isinstance(widths, int) or not widths or any(
      not isinstance(w, int) or isinstance(w, bool) or w < 1 for w in widths):
    cfg.fail("model.widths", f"must be a tuple of positive integers, got {widths!r}.")
  cfg.integer(config, "curvature.num_iters")
  cfg.integer(config, "curvature.trace_samples", minimum=2)
  cfg.nonnegative(config, "theory.flow_time")  # 0: no flow
  if config.train.get("decay", "constant") != "constant":
    cfg.fail("train.decay", "must be 'constant': the thresholds are those of a fixed lr.")
  cfg.positive(config, "theory.rtol")
  k_x, k_w, k_a = jax.random.split(jax.random.PRNGKey(config.task.seed), 3)
  x = jax.random.normal(k_x, (n, d))
  teacher = jnp.tanh(x @ jax.random.normal(k_w, (d, 4 * classes)) / np.sqrt(d))
  labels = jnp.argmax(teacher @ jax.random.normal(k_a, (4 * classes, classes)), -1)
  return {"x": x, "y": jax.nn.one_hot(labels, classes, dtype=x.dtype)}


def init(config, key, data) -> dict:
  return {"params": mlp.init(key, data["x"].shape[1], tuple(config.model.widths),
                             data["y"].shape[1], parameterization="standard",
                             dtype=data["x"].dtype)}


def objective(config, params, data):
  """The training loss (module docstring) of `params`."""
  f = mlp.apply(params, data["x"], activation=config.model.activation,
                parameterization="standard")
  if config.task.loss == "mse":
    return 0.5 * jnp.mean(jnp.sum((f - data["y"]) ** 2, -1))
  return jnp.mean(jax.nn.logsumexp(f, -1) - jnp.sum(f * data["y"], -1))


def loss(config, state, data, key):
  return objective(config, state["params"], data)


def sharpness(config, params, data, key=jax.random.PRNGKey(0), num_iters=None):
  """The Hessian's top eigenvalue and unit eigenvector (Lanczos from a fixed
  Gaussian start: the same at every logged step)."""
  fn = lambda p: objective(config, p, data)
  lam, vec = curvature.top_eigenvalues(fn, params, k=1, key=key, return_vectors=True,
                                       num_iters=num_iters or config.curvature.num_iters)
  return lam[0], jax.tree_util.tree_map(lambda v: v[0], vec)


def observe(config, state, data) -> dict:
  params, opt = state["params"], state["opt_state"]
  fn = lambda p: objective(config, p, data)
  lam, top = sharpness(config, params, data)
  out = {"loss": fn(params), "sharpness": lam, "effective_sharpness": lam,
         "trace": curvature.hessian_trace(fn, params, key=jax.random.PRNGKey(1),
                                          num_samples=config.curvature.trace_samples)[0],
         "alignment": curvature.gradient_alignment(fn, params, top)}
  if isinstance(opt, optax.ScaleByAdamState):  # P^{-1/2} H P^{-1/2}; no P before step 1
    pre = curvature.preconditioned_sharpness(fn, params, opt,
                                             num_iters=config.curvature.num_iters)
    out["effective_sharpness"] = jnp.where(opt.count > 0, pre, jnp.nan)
  return out


def threshold(config) -> float:
  """The effective sharpness the optimizer is linearly stable below."""
  tr = config.train
  opt = tr.get("optimizer", "sgd")
  if opt == "sgd":
    return float(stability.gd_threshold(tr.lr))
  if opt == "momentum":
    return float(stability.momentum_threshold(tr.lr, tr.get("momentum", 0.9)))
  return float(stability.adam_threshold(tr.lr, 0.9))


def theory(config, data, start, t) -> dict:
  """The threshold; for GD (smooth activations) the gradient flow from this
  seed's init (float64): its loss and sharpness (Lanczos with 2x the logged
  iterations) at the logged times up to `theory.flow_time`, NaN after."""
  out = {"threshold": jnp.asarray(threshold(config))}
  if (config.train.get("optimizer", "sgd") != "sgd" or config.model.activation == "relu"
      or config.theory.flow_time == 0):
    return out
  fn = lambda p: objective(config, p, data)
  horizon = min(config.theory.flow_time, config.train.lr * config.train.num_steps)
  flow = stability.gradient_flow(fn, start["params"], jnp.minimum(t, horizon),
                                 rtol=config.theory.rtol, atol=1e-3 * config.theory.rtol)
  flow_s = jax.lax.map(lambda p: sharpness(config, p, data,
                                           num_iters=2 * config.curvature.num_iters)[0], flow)
  inside = t <= horizon * (1 + 1e-9)
  return {**out, "flow_loss": jnp.where(inside, jax.lax.map(fn, flow), jnp.nan),
          "flow_sharpness": jnp.where(inside, flow_s, jnp.nan)}


def _first(mask):
  """Per seed, the first index where `mask` holds, or -1."""
  return np.where(mask.any(1), mask.argmax(1), -1)


def crossing(s, thr):
  """Per seed, the first logged index where the effective sharpness `s` `[S, L]`
  reaches `thr` from below (after a start above it, as in a catapult, once it
  has fallen below), or -1; and whether it started above."""
  above = np.nan_to_num(s, nan=-np.inf) >= thr
  below_yet = np.maximum.accumulate(~above & np.isfinite(s), axis=1)
  return _first(above & np.roll(below_yet, 1, axis=1) & (np.arange(s.shape[1]) > 0)), above[:, 0]


def _point(r) -> dict:
  """One point's measured numbers (module docstring), means over kept seeds."""
  k, c = r.traj.kept, r.config
  t, s = r.traj.t[k], r.traj.logged["effective_sharpness"][k]
  thr = threshold(c)
  cross, started_above = crossing(s, thr)
  seeds = np.arange(len(s))
  after = lambda x: np.array([np.nanmean(x[i, j:]) if j >= 0 else np.nan
                              for i, j in zip(seeds, cross)])
  upto = np.where(cross >= 0, cross, s.shape[1] - 1)
  low = np.array([np.nanmin(s[i, :j + 1]) for i, j in zip(seeds, upto)])  # after any catapult
  align = r.traj.logged["alignment"][k]
  before_align = np.array([np.nanmean(align[i, :max(j, 1)]) for i, j in zip(seeds, upto)])
  row = {"activation": c.model.activation, "optimizer": c.train.get("optimizer", "sgd"),
         "lr": float(c.train.lr), "threshold": thr, "crossed": float(np.mean(cross >= 0)),
         "started_above": float(np.mean(started_above)),
         "crossing_t": _mean(np.where(cross >= 0, t[seeds, cross], np.nan)),
         "ratio_after": _mean(after(s / thr)), "ratio_after_sd": _sd(after(s / thr)),
         "sharpening": _mean(s[seeds, upto] / low),
         "alignment_before": _mean(before_align), "alignment_after": _mean(after(align))}
  if "flow_sharpness" in r.pred:
    fs = r.pred["flow_sharpness"][k]
    with np.errstate(invalid="ignore"):
      gap = np.abs(r.traj.logged["sharpness"][k] - fs) / fs
    left = _first(np.nan_to_num(gap) > DEPARTURE)
    row["departs_t"] = _mean(np.where(left >= 0, t[seeds, left], np.nan))
    row["flow_gap_at_crossing"] = _mean(np.where(cross >= 0, gap[seeds, cross], np.nan))
  return row


def _mean(x):
  x = np.asarray(x, float)
  return float(np.nanmean(x)) if np.isfinite(x).any() else None


def _sd(x):
  x = np.asarray(x, float)[np.isfinite(x)]
  return float(x.std(ddof=1)) if len(x) > 1 else None


def _median(x):
  with warnings.catch_warnings():  # Adam's step 0, the flow past its horizon: NaN
    warnings.simplefilter("ignore", RuntimeWarning)
    return np.nanmedian(x, 0)


def _panels(results, name, flow_name, log_y):
  """(Activation, loss) x optimizer panels of `name` against t, one color per lr, the
  threshold dashed (sharpness), the gradient flow in black."""
  rows = sorted({(r.config.model.activation, r.config.task.loss) for r in results})
  opts = [o for o in ("sgd", "momentum", "adam")
          if any(r.config.train.get("optimizer", "sgd") == o for r in results)]
  fig, axes = plots.figure(len(opts), len(rows), size=(4.6, 3.6))
  axes = np.asarray(axes).reshape(len(rows), len(opts))
  for (i, row), (j, opt) in ((a, o) for a in enumerate(rows) for o in enumerate(opts)):
    ax = axes[i, j]
    pts = sorted((r for r in results if (r.config.model.activation, r.config.task.loss) == row
                  and r.config.train.get("optimizer", "sgd") == opt and r.traj.kept.any()),
                 key=lambda r: r.config.train.lr)
    for n, r in enumerate(pts):
      k, color = r.traj.kept, f"C{n}"
      t = np.median(r.traj.t[k], 0)
      ax.plot(t, _median(r.traj.logged[name][k]), color=color, lw=1.2,
              label=f"lr {r.config.train.lr:g}")
      if name.endswith("sharpness"):
        ax.axhline(threshold(r.config), color=color, ls="--", lw=0.9)
      if flow_name in r.pred and n == len(pts) - 1:  # the same flow at every lr: the longest
        ax.plot(t, _median(r.pred[flow_name][k]), "k-", lw=1.0, alpha=0.8,
                label="gradient flow")
    title = ", ".join(row if len({l for _, l in rows}) > 1 else row[:1]) + f", {opt}"
    ax.set(xlabel="t = lr x steps", ylabel=name.replace("_", " "), title=title,
           yscale="log" if log_y or opt == "adam" else "linear")
    ax.legend(fontsize=7)
  return fig


def report(config, results) -> dict:
  """Per point its numbers; per activation and optimizer the mean ratio after
  the crossing; the sharpness figure (thresholds dashed, the flow in black),
  the loss's, and the trace's."""
  rows = [_point(r) if r.traj.kept.any() else {} for r in results]
  edge = {}
  for row in rows:
    if row.get("ratio_after") is not None:
      edge.setdefault(f"{row['activation']}.{row['optimizer']}", []).append(row["ratio_after"])
  return {"points": rows,
          "ratio_after": {k: float(np.mean(v)) for k, v in edge.items()},
          "figure": _panels(results, "effective_sharpness", "flow_sharpness", False),
          "figures": {"loss": _panels(results, "loss", "flow_loss", True),
                      "trace": _panels(results, "trace", None, False)}}
