"""Kernel learning curves on the sphere: kernel regression with a network's NTK
and the wide network itself, against `theory.learning_curves.test_error`.

A grid point is one `n = task.num_train`, dimension `task.d`, `ridge` and
`task.noise`; each seed is one draw of `n` inputs uniform on the sphere of
radius `sqrt(d)` with labels `y = f(x) + xi`, `xi ~ N(0, noise)`, `f` the
target of `dynamics.tasks.sphere_harmonics` (power `task.powers` in degrees
`task.degrees`). On that draw a `dynamics.models.mlp` of `model.width` in the
'ntk' parameterization, centred (`f_theta(x) - f_theta0(x)`: the function
starts at 0, as kernel regression does), is trained by gradient descent on

    L = 1/(2n) sum_i (f(x_i) - y_i)^2 + ridge/(2n) |theta - theta0|^2,

whose linearisation ends at kernel ridge regression `k(x, X) (K + ridge I)^{-1}
y` with the network's infinite-width NTK `K` (`theory.ntk.mlp_kernel`;
docs/conventions.md). The step is `train.lr x n / (lambda_max(K) + ridge)`: at
`train.lr = 1` the top mode is fitted in one step, 2 is the edge.

Logged: `loss` (the data term) and `excess`, the mean squared error against
the clean target on `task.num_test` fixed test points. `theory`, per seed, in
float64 on the seed's own draw: the infinite-width network's gradient descent
at the same steps (`loss`, `excess`: each eigenmode of `K` moves by `1 - (1 -
lr (lambda + ridge)/n)^k`), its end, kernel regression (`krr_excess`,
`krr_train`, `krr_modes`: the residual's power in each degree, exactly, from
the kernel's Mercer expansion) and the learning-curve theory from
`sphere_spectrum` (`curve_*`, the spectrum's tail above `task.max_degree`
folded into the ridge). `report`: the curves against `n` with kernel
regression and the network, the modes learned in order of eigenvalue, the
optimal ridge predicted and measured, and where the finite-width network
leaves the infinite-width one (docs/learning_curves.md).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from dynamics import config as cfg
from dynamics import metrics, plots
from dynamics.models import mlp
from dynamics.tasks import sphere_harmonics as sh
from theory import learning_curves as lc
from theory import ntk

LEAVES = 0.1  # the network "leaves" the infinite-width curve past 10% (and 3 s.e.)


def _kernel(config):
  m = config.model
  return ntk.mlp_kernel(m.depth, m.activation, m.w_std, m.b_std, "ntk")


def _modes(config) -> int:
  """The degrees whose residual is reported: 0 to two past the target's."""
  return max(config.task.degrees) + 2


def setup(config) -> dict:
  """Checks; the test points, the target and the kernel's spectrum."""
  t = config.task
  cfg.integer(config, "model.width"), cfg.integer(config, "model.depth", minimum=2)
  cfg.one_of(config, "model.activation", ntk.ACTIVATIONS)
  cfg.nonnegative(config, "model.w_std"), cfg.nonnegative(config, "model.b_std")
  d = cfg.integer(config, "task.d", minimum=2)
  cfg.integer(config, "task.seed", minimum=0), cfg.integer(config, "task.num_train")
  cfg.integer(config, "task.num_test"), cfg.integer(config, "task.directions")
  cfg.nonnegative(config, "task.noise"), cfg.nonnegative(config, "ridge")
  degrees = cfg.get(config, "task.degrees")
  degrees = tuple(degrees) if isinstance(degrees, (tuple, list)) else (degrees,)
  powers = cfg.numbers(config, "task.powers", minimum=0.0)
  if not degrees or any(not isinstance(l, int) or isinstance(l, bool) or l < 0
                        for l in degrees) or len(set(degrees)) != len(degrees):
    cfg.fail("task.degrees", f"must be distinct non-negative integers, got {degrees!r}.")
  if len(powers) != len(degrees):
    cfg.fail("task.powers", f"must give one power per degree of task.degrees "
             f"({len(degrees)}), got {len(powers)}.")
  top = cfg.integer(config, "task.max_degree", minimum=0)
  if top < _modes(config):
    cfg.fail("task.max_degree", f"must reach the reported degrees (max(task.degrees) + 2 = "
             f"{_modes(config)}), got {top}.")
  for field, only in (("optimizer", "sgd"), ("decay", "constant")):  # the linearisation's
    if field in config.train:
      cfg.one_of(config, f"train.{field}", (only,))
  dtype = cfg.float_dtype(config.precision)
  k_test, k_target = jax.random.split(jax.random.PRNGKey(t.seed))
  target = sh.draw_target(k_target, d, degrees, powers, t.directions, dtype)
  target["c"] = jnp.pad(target["c"], ((0, _modes(config) - max(degrees)), (0, 0)))
  x_test = sh.sphere(k_test, t.num_test, d, dtype)
  m = config.model
  sp = _spectrum(m.depth, m.activation, m.w_std, m.b_std, d, top,
                 cfg.integer(config, "task.quadrature"))
  power = np.zeros(top + 1)
  power[list(degrees)] = powers
  return {"x_test": x_test, "y_test": sh.evaluate(target, x_test), **target,
          "eigenvalues": sp["eigenvalues"], "multiplicities": sp["multiplicities"],
          "power": power, "tail": np.asarray(max(sp["tail"], 0.0))}


@functools.lru_cache(maxsize=16)
def _spectrum(depth, activation, w_std, b_std, d, top, quadrature) -> dict:
  """`sphere_spectrum` of the network's NTK, once per kernel and sphere (the
  grid's points share it; the quadrature's kernel calls take seconds)."""
  kernel = ntk.mlp_kernel(depth, activation, w_std, b_std, "ntk")
  sp = lc.sphere_spectrum(kernel, d, top, radius=np.sqrt(d), quadrature=quadrature)
  for v in sp.values():
    if isinstance(v, np.ndarray):
      v.setflags(write=False)
  return sp


def _apply(config, params, x):
  m = config.model
  return mlp.apply(params, x, activation=m.activation, parameterization="ntk",
                   w_std=m.w_std, b_std=m.b_std)


def init(config, key, data) -> dict:
  """One draw: inputs, noisy labels, the network, its outputs at init and the step."""
  m, t, dtype = config.model, config.task, data["x_test"].dtype
  k_x, k_noise, k_net = jax.random.split(key, 3)
  x = sh.sphere(k_x, t.num_train, t.d, dtype)
  y = sh.evaluate(data, x) + jnp.sqrt(t.noise) * jax.random.normal(k_noise, (t.num_train,),
                                                                    dtype)
  params = mlp.init(k_net, t.d, (m.width,) * (m.depth - 1), parameterization="ntk",
                    w_std=m.w_std, b_std=m.b_std, dtype=dtype)
  top = jnp.linalg.eigvalsh(_kernel(config)(x)["ntk"])[-1]
  return {"params": params, "params0": params, "x": x, "y": y,
          "f0": _apply(config, params, x), "f0_test": _apply(config, params, data["x_test"]),
          "lr_scale": t.num_train / (top + config.ridge)}


def _terms(config, state, data):
  p, n = state["params"], config.task.num_train
  fit = 0.5 * jnp.mean((_apply(config, p, state["x"]) - state["f0"] - state["y"]) ** 2)
  move = sum(jnp.sum((a - b) ** 2) for a, b in zip(jax.tree_util.tree_leaves(p),
                                                   jax.tree_util.tree_leaves(state["params0"])))
  return fit, config.ridge / (2 * n) * move


def loss(config, state, data, key):
  return sum(_terms(config, state, data))


def observe(config, state, data) -> dict:
  f = _apply(config, state["params"], data["x_test"]) - state["f0_test"]
  return {"loss": _terms(config, state, data)[0],
          "excess": jnp.mean((f - data["y_test"]) ** 2)}


def _degree_residuals(data, x, alpha, top):
  """`E_x (f_hat_l - f_l)^2` for degrees `0..top` of `f_hat = sum_i alpha_i
  k(., x_i)`, exactly: with `k(s) = sum_l lambda_l m_l P_l(s)` (Mercer),
  `f_hat_l = lambda_l m_l sum_i alpha_i P_l(x_i . x)`, and the addition theorem
  gives `|f_hat_l|^2 = lambda_l^2 m_l alpha^T P_l(G) alpha`, `<f_hat_l, f_l> =
  lambda_l sqrt(m_l) alpha^T P_l(X U^T) c_l`, `|f_l|^2` the target's power."""
  d = x.shape[1]
  xs = x / jnp.sqrt(jnp.asarray(d, x.dtype))
  lam, mult = data["eigenvalues"][:top + 1], data["multiplicities"][:top + 1]
  cross = jnp.einsum("lnp,n,lp->l", lc.gegenbauer(xs @ data["u"].T, top, d), alpha, data["c"])
  quad = jnp.einsum("lij,i,j->l", lc.gegenbauer(xs @ xs.T, top, d), alpha, alpha)
  return lam**2 * mult * quad - 2 * lam * jnp.sqrt(mult) * cross + data["power"][:top + 1]


def descent(k, y, lr, steps, ridge):
  """Kernel gradient descent with weight decay to the init: the coefficients
  `alpha [L, n]` (`f = k(., X) alpha`) after `steps [L]` steps of size `lr` on
  `1/(2n) |f - y|^2 + ridge/(2n) |theta - theta0|^2` for a linear model of
  kernel `k [n, n]`, and kernel ridge regression's (`steps = inf`): in the
  eigenbasis `k = V diag(lambda) V^T`, `alpha = V diag((1 - (1 - a)^s) / (lambda +
  ridge)) V^T y`, `a = lr (lambda + ridge) / n`. Eigenvalues at or below `n eps
  max(lambda)` are null (as in `lstsq`)."""
  n = k.shape[0]
  lam, vec = jnp.linalg.eigh(k)
  lam = jnp.where(lam <= n * jnp.finfo(lam.dtype).eps * lam[-1], 0.0, lam)
  s = lam + ridge
  a, steps = lr * s / n, jnp.asarray(steps, lam.dtype)[:, None]
  decay = jnp.sign(1 - a) ** (steps % 2) * jnp.abs(1 - a) ** steps  # (1 - a)^steps
  moved = jnp.where(a < 0.5, -jnp.expm1(steps * jnp.log1p(-jnp.minimum(a, 0.5))), 1 - decay)
  null = s <= 0
  inv = jnp.where(null, 0.0, 1 / jnp.where(null, 1.0, s))
  proj = vec.T @ y
  return (moved * inv * proj) @ vec.T, vec @ (inv * proj)


def theory(config, data, start, t) -> dict:
  """The infinite-width network on this draw (its descent at the logged steps,
  kernel regression at its end) and the learning curve of `sphere_spectrum`
  (the tail above `task.max_degree` in the ridge; the training error is the
  explicit ridge's, `(ridge / (n kappa))^2 test`: the tail is part of `K`)."""
  n, ridge, top = config.task.num_train, config.ridge, _modes(config)
  x, y, kern = start["x"], start["y"], _kernel(config)
  k, k_test = kern(x)["ntk"], kern(data["x_test"], x)["ntk"]
  lr = config.train.lr * start["lr_scale"]
  alpha, alpha_krr = descent(k, y, lr, jnp.round(t / lr), ridge)
  mse = lambda f, g: jnp.mean((f - g) ** 2, -1)
  curve = lc.test_error(data["eigenvalues"], jnp.sqrt(data["power"] / data["multiplicities"]),
                        n, ridge + data["tail"], config.task.noise, data["multiplicities"])
  return {"loss": 0.5 * mse(alpha @ k, y), "excess": mse(alpha @ k_test.T, data["y_test"]),
          "krr_excess": mse(k_test @ alpha_krr, data["y_test"]),
          "krr_train": mse(k @ alpha_krr, y),
          "krr_modes": _degree_residuals(data, x, alpha_krr, top),
          "curve_excess": curve["excess"], "curve_test": curve["test"],
          "curve_train": (ridge / (n * curve["kappa"]))**2 * curve["test"],
          "curve_modes": curve["mode_residuals"][:top + 1], "kappa": curve["kappa"]}


def _point(r) -> dict:
  """Seed means (and standard errors, `_se`) over the kept seeds."""
  c, kept = r.config, r.traj.kept
  lg = {k: np.asarray(v, np.float64)[kept] for k, v in r.traj.logged.items()}
  pr = {k: np.asarray(v, np.float64)[kept] for k, v in r.pred.items()}
  per = {"net_excess": lg["excess"][:, -1], "inf_width_excess": pr["excess"][:, -1],
         "krr_excess": pr["krr_excess"], "krr_train": pr["krr_train"],
         "net_over_inf_width": lg["excess"][:, -1] / pr["excess"][:, -1],
         "net_train": 2 * lg["loss"][:, -1]}
  row = {"d": c.task.d, "n": c.task.num_train, "ridge": c.ridge, "noise": c.task.noise,
         "width": c.model.width}
  for k, v in per.items():
    st = metrics.seed_stats(v)
    row[k], row[f"{k}_se"] = float(st["mean"]), float(st["sem"])
  row.update({k: float(pr[k][0]) for k in ("curve_excess", "curve_test", "curve_train",
                                          "kappa")})
  row["krr_over_curve"] = row["krr_excess"] / row["curve_excess"]
  # the descent's own distance from its end: how far from converged the network is
  row["unconverged"] = row["inf_width_excess"] / row["krr_excess"] - 1
  for l in range(pr["krr_modes"].shape[1]):  # each degree's residual power
    st = metrics.seed_stats(pr["krr_modes"][:, l])
    row[f"krr_mode_{l}"], row[f"krr_mode_{l}_se"] = float(st["mean"]), float(st["sem"])
    row[f"curve_mode_{l}"] = float(pr["curve_modes"][0, l])
  return row


def _curve(r, ns, ridge):
  """The learning curve of `r`'s spectrum at `ns` (float64)."""
  data, c = r.data, r.config
  with jax.enable_x64(True):
    f = jax.jit(jax.vmap(lambda n: lc.test_error(
        data["eigenvalues"], np.sqrt(data["power"] / data["multiplicities"]), n,
        ridge + data["tail"], c.task.noise, data["multiplicities"])))
    return jax.tree_util.tree_map(np.asarray, f(jnp.asarray(ns, jnp.float64)))


def _key(row):
  return (row["d"], row["noise"], row["width"])


def report(config, results) -> dict:
  rows = [_point(r) if r.traj.kept.any() else {} for r in results]
  done = [(r, x) for r, x in zip(results, rows) if x]
  out = {"points": rows, "figures": {}}
  panels = sorted({_key(x) for _, x in done})
  fig, axes = plots.figure(len(panels) or 1, size=(5.6, 4.4))
  leaves = {}
  for ax, key in zip(axes, panels):
    same = [(r, x) for r, x in done if _key(x) == key]
    for j, ridge in enumerate(sorted({x["ridge"] for _, x in same})):
      pts = sorted((x for _, x in same if x["ridge"] == ridge), key=lambda x: x["n"])
      ns = np.array([x["n"] for x in pts], np.float64)
      dense = np.geomspace(max(ns.min() / 1.5, 1), ns.max() * 1.5, 80)
      r0 = next(r for r, x in same if x["ridge"] == ridge)
      col = f"C{j}"
      ax.plot(dense, _curve(r0, dense, ridge)["excess"], "-", color=col, lw=1.2,
              label=f"ridge {ridge:g}")
      ax.errorbar(ns, [x["krr_excess"] for x in pts], [x["krr_excess_se"] for x in pts],
                  fmt="o", color=col, ms=4)
      ax.errorbar(ns, [x["net_excess"] for x in pts], [x["net_excess_se"] for x in pts],
                  fmt="x", color=col, ms=6)
      ax.plot(ns, [x["inf_width_excess"] for x in pts], "s", mfc="none", color=col, ms=6)
      gone = [x["n"] for x in pts if abs(x["net_over_inf_width"] - 1) > max(
          LEAVES, 3 * x["net_over_inf_width_se"])]
      leaves[f"d_{key[0]}_noise_{key[1]:g}_width_{key[2]}_ridge_{ridge:g}"] = (
          min(gone) if gone else None)
    for fmt, text in (("-", "test_error (sphere_spectrum)"), ("o", "kernel regression"),
                      ("x", f"network, width {key[2]}"),
                      ("s", "infinite width, same steps")):  # one entry per marker
      ax.plot([], [], fmt, color="k", mfc="none" if fmt == "s" else None, label=text)
    ax.set(xscale="log", yscale="log", xlabel="n (training points)",
           ylabel="excess test error E (f - f*)^2",
           title=f"d = {key[0]}, noise {key[1]:g}: mean over draws")
    ax.legend(fontsize=7)
  out["figure"] = fig
  out["network_leaves_at_n"] = leaves
  modes = _modes_figure(done)
  if modes is not None:
    out["figures"]["modes"] = modes
  ridge_fig, optimal = _ridge_figure(done)
  if ridge_fig is not None:
    out["figures"]["ridge"], out["optimal_ridge"] = ridge_fig, optimal
  return out


def _modes_figure(done):
  """Canatar et al.'s spectral bias: each target degree's residual over its
  power against `n` (the smallest ridge), kernel regression and theory."""
  panels = sorted({_key(x) for _, x in done})
  if not panels:
    return None
  fig, axes = plots.figure(len(panels), size=(5.6, 4.4))
  for ax, key in zip(axes, panels):
    same = [(r, x) for r, x in done if _key(x) == key]
    ridge = min(x["ridge"] for _, x in same)
    pts = sorted(((r, x) for r, x in same if x["ridge"] == ridge), key=lambda p: p[1]["n"])
    r0 = pts[0][0]
    ns = np.array([x["n"] for _, x in pts], np.float64)
    dense = np.geomspace(max(ns.min() / 1.5, 1), ns.max() * 1.5, 80)
    theory = _curve(r0, dense, ridge)["mode_residuals"]
    power, lam = np.asarray(r0.data["power"]), np.asarray(r0.data["eigenvalues"])
    for j, l in enumerate(int(l) for l in r0.config.task.degrees):
      if power[l] <= 0:
        continue
      ax.plot(dense, theory[:, l] / power[l], "-", color=f"C{j}",
              label=f"degree {l} (lambda {lam[l]:.2g})")
      ax.errorbar(ns, [x[f"krr_mode_{l}"] / power[l] for _, x in pts],
                  [np.nan_to_num(x[f"krr_mode_{l}_se"]) / power[l] for _, x in pts],
                  fmt="o", ms=4, color=f"C{j}")
    ax.set(xscale="log", yscale="log", xlabel="n", ylabel="residual power / target power",
           title=f"modes learned in order of eigenvalue (d = {key[0]}, ridge {ridge:g})")
    ax.legend(fontsize=7)
  return fig


def _ridge_figure(done):
  """With three or more ridges at a point: the test error against ridge per
  `n`, the theory's minimum on a fine grid and kernel regression's (a
  parabola in log ridge through the best swept ridge and its neighbours)."""
  groups = {}
  for r, x in done:
    groups.setdefault(_key(x) + (x["n"],), []).append((r, x))
  groups = {k: sorted(v, key=lambda p: p[1]["ridge"]) for k, v in groups.items()
            if len([p for p in v if p[1]["ridge"] > 0]) >= 3}
  if not groups:
    return None, None
  fig, (ax,) = plots.figure(1, size=(6.4, 4.6))
  optimal = {}
  for j, (key, pts) in enumerate(sorted(groups.items())):
    pts = [p for p in pts if p[1]["ridge"] > 0]
    ridges = np.array([x["ridge"] for _, x in pts])
    dense = np.geomspace(ridges.min() / 3, ridges.max() * 3, 400)
    r0, c = pts[0][0], pts[0][0].config
    with jax.enable_x64(True):
      f = jax.jit(jax.vmap(lambda rd: lc.test_error(
          r0.data["eigenvalues"], np.sqrt(r0.data["power"] / r0.data["multiplicities"]),
          c.task.num_train, rd + r0.data["tail"], c.task.noise,
          r0.data["multiplicities"])["test"]))
      theory = np.asarray(f(jnp.asarray(dense)))
    measured = np.array([x["krr_excess"] + x["noise"] for _, x in pts])
    i = int(np.argmin(measured))
    best = float(ridges[i])
    if 0 < i < len(ridges) - 1:  # the vertex of a parabola in log ridge
      lx, ly = np.log(ridges[i - 1:i + 2]), measured[i - 1:i + 2]
      a, b, _ = np.polyfit(lx, ly, 2)
      if a > 0:
        best = float(np.exp(np.clip(-b / (2 * a), lx[0], lx[-1])))
    name = f"d_{key[0]}_noise_{key[1]:g}_n_{key[3]}"
    optimal[name] = {"predicted": float(dense[np.argmin(theory)]), "measured": best,
                     "measured_on_grid": float(ridges[i])}
    col = f"C{j % 10}"
    ax.plot(dense, theory, "-", color=col, label=f"n {key[3]}, d {key[0]}: test_error")
    ax.errorbar(ridges, measured, [x["krr_excess_se"] for _, x in pts], fmt="o", ms=4,
                color=col)
    ax.axvline(optimal[name]["predicted"], color=col, ls=":", lw=1)
    ax.plot(best, measured.min(), "v", color=col, ms=9, mfc="none")
  ax.set(xscale="log", yscale="log", xlabel="ridge", ylabel="test error (excess + noise)",
         title="kernel regression (o), test_error (-);\noptimal ridge predicted (dotted), "
         "measured (v)")
  ax.legend(fontsize=7)
  return fig, optimal
