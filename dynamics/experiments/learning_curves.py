"""Kernel learning curves on the sphere: kernel regression with a network's NTK
and the wide network itself, against `theory.learning_curves.test_error`.

A grid point is one `n = task.num_train`, `task.d`, `ridge` and `task.noise`; a
seed is one draw of `n` points uniform on the sphere of radius `sqrt(d)`,
labels `y = f(x) + xi` (`dynamics.tasks.sphere_harmonics`: power `task.powers`
in degrees `task.degrees`). On it a centred (`f_theta - f_theta0`) 'ntk'
`dynamics.models.mlp` is trained on `1/(2n) sum (f - y)^2 + ridge/(2n) |theta -
theta0|^2`, whose linearisation ends at kernel ridge regression with its
infinite-width NTK `K`, at step `train.lr x n / (lambda_max(K) + ridge)` (2 is
the edge). Logged: `loss` (the data term), `excess` (MSE against the clean
target on fixed test points). `theory` (float64, the seed's draw): the
infinite-width descent at the same steps (`theory.learning_curves.
kernel_descent`), kernel regression (`krr_*`, each degree's residual exact),
and `test_error` of `sphere_spectrum` (`curve_*`, the tail above
`task.max_degree` in the ridge). `report`: curves against `n`, the degrees
learned in order of eigenvalue, the optimal ridge predicted and measured,
where the network leaves its infinite-width descent (docs/learning_curves.md).
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
  for field in ("model.width", "task.num_train", "task.num_test", "task.directions"):
    cfg.integer(config, field)
  for field in ("model.w_std", "model.b_std", "task.noise", "ridge"):
    cfg.nonnegative(config, field)
  cfg.integer(config, "model.depth", minimum=2), cfg.integer(config, "task.seed", minimum=0)
  cfg.one_of(config, "model.activation", ntk.ACTIVATIONS)
  d, degrees, powers, top = sh.check_target(config, reported=2)
  for field, only in (("optimizer", "sgd"), ("decay", "constant")):  # the linearisation's
    if field in config.train:
      cfg.one_of(config, f"train.{field}", (only,))
  dtype = cfg.float_dtype(config.precision)
  k_test, k_target = jax.random.split(jax.random.PRNGKey(t.seed))
  target = sh.draw_target(k_target, d, degrees, powers, t.directions, dtype)
  target["c"] = jnp.pad(target["c"], ((0, _modes(config) - max(degrees)), (0, 0)))
  x_test = sh.sphere(k_test, t.num_test, d, dtype)
  m = config.model
  sp = sh.ntk_spectrum(m.depth, m.activation, m.w_std, m.b_std, d, top,
                       cfg.integer(config, "task.quadrature"))
  power = np.zeros(top + 1)
  power[list(degrees)] = powers
  return {"x_test": x_test, "y_test": sh.evaluate(target, x_test), **target,
          "eigenvalues": sp["eigenvalues"], "multiplicities": sp["multiplicities"],
          "power": power, "tail": np.asarray(max(sp["tail"], 0.0))}


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
  move = sum(jax.tree_util.tree_leaves(jax.tree_util.tree_map(
      lambda a, b: jnp.sum((a - b) ** 2), p, state["params0"])))
  return fit, config.ridge / (2 * n) * move


def loss(config, state, data, key):
  return sum(_terms(config, state, data))


def observe(config, state, data) -> dict:
  f = _apply(config, state["params"], data["x_test"]) - state["f0_test"]
  return {"loss": _terms(config, state, data)[0],
          "excess": jnp.mean((f - data["y_test"]) ** 2)}


def theory(config, data, start, t) -> dict:
  """The infinite-width network on this draw (its descent at the logged steps,
  kernel regression at its end) and the learning curve of `sphere_spectrum`
  (the tail above `task.max_degree` in the ridge; the training error is the
  explicit ridge's, `(ridge / (n kappa))^2 test`: the tail is part of `K`)."""
  n, ridge, top = config.task.num_train, config.ridge, _modes(config)
  x, y, kern = start["x"], start["y"], _kernel(config)
  k, k_test = kern(x)["ntk"], kern(data["x_test"], x)["ntk"]
  lr = config.train.lr * start["lr_scale"]
  alpha, alpha_krr = lc.kernel_descent(k, y, lr, jnp.round(t / lr), ridge)
  mse = lambda f, g: jnp.mean((f - g) ** 2, -1)
  curve = _test_error(data, n, ridge, config.task.noise)
  return {"loss": 0.5 * mse(alpha @ k, y), "excess": mse(alpha @ k_test.T, data["y_test"]),
          "krr_excess": mse(k_test @ alpha_krr, data["y_test"]),
          "krr_train": mse(k @ alpha_krr, y),
          "krr_modes": sh.degree_residuals(data, x, alpha_krr, data["eigenvalues"],
                                           data["multiplicities"], data["power"], top),
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
         "net_train": 2 * lg["loss"][:, -1],
         **{f"krr_mode_{l}": v for l, v in enumerate(pr["krr_modes"].T)}}  # per degree
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
  row.update({f"curve_mode_{l}": float(v) for l, v in enumerate(pr["curve_modes"][0])})
  return row


def _test_error(data, n, ridge, noise):
  """`test_error` of the point's spectrum (its tail in the ridge)."""
  return lc.test_error(data["eigenvalues"], jnp.sqrt(data["power"] / data["multiplicities"]),
                       n, ridge + data["tail"], noise, data["multiplicities"])


def _curve(r, n, ridge):
  """`_test_error` of `r`'s spectrum along arrays `n` and `ridge` (float64)."""
  n, ridge = np.broadcast_arrays(np.asarray(n, np.float64), np.asarray(ridge, np.float64))
  with jax.enable_x64(True):
    f = jax.jit(jax.vmap(lambda n_, r_: _test_error(r.data, n_, r_, r.config.task.noise)))
    return jax.tree_util.tree_map(np.asarray, f(jnp.asarray(n), jnp.asarray(ridge)))


def _key(row):
  return (row["d"], row["noise"], row["width"])


def report(config, results) -> dict:
  """Per panel (d, noise, width): the excess against `n` per ridge (`figure`),
  each target degree's residual at the smallest ridge (`figures/modes`); with
  three or more ridges at an `n`, the optimal ridge (`figures/ridge`)."""
  rows = [_point(r) if r.traj.kept.any() else {} for r in results]
  done = [(r, x) for r, x in zip(results, rows) if x]
  panels = sorted({_key(x) for _, x in done})
  fig, axes = plots.figure(len(panels) or 1, size=(5.6, 4.4))
  fig_m, axes_m = plots.figure(len(panels) or 1, size=(5.6, 4.4))
  leaves = {}
  for ax, ax_m, key in zip(axes, axes_m, panels):
    same = [(r, x) for r, x in done if _key(x) == key]
    for j, ridge in enumerate(sorted({x["ridge"] for _, x in same})):
      pairs = sorted(((r, x) for r, x in same if x["ridge"] == ridge), key=lambda p: p[1]["n"])
      pts, r0 = [x for _, x in pairs], pairs[0][0]
      ns = np.array([x["n"] for x in pts], np.float64)
      dense = np.geomspace(max(ns.min() / 1.5, 1), ns.max() * 1.5, 80)
      curve, col = _curve(r0, dense, ridge), f"C{j}"
      ax.plot(dense, curve["excess"], "-", color=col, lw=1.2, label=f"ridge {ridge:g}")
      for name, fmt in (("krr_excess", "o"), ("net_excess", "x")):
        ax.errorbar(ns, [x[name] for x in pts], [x[f"{name}_se"] for x in pts], fmt=fmt,
                    color=col, ms=5)
      ax.plot(ns, [x["inf_width_excess"] for x in pts], "s", mfc="none", color=col, ms=6)
      gone = [x["n"] for x in pts if abs(x["net_over_inf_width"] - 1) > max(
          LEAVES, 3 * x["net_over_inf_width_se"])]
      leaves[f"d_{key[0]}_noise_{key[1]:g}_width_{key[2]}_ridge_{ridge:g}"] = min(
          gone, default=None)
      if j == 0:  # the smallest ridge: Canatar et al.'s spectral bias, degree by degree
        power, lam = np.asarray(r0.data["power"]), np.asarray(r0.data["eigenvalues"])
        for i, l in enumerate(l for l in r0.config.task.degrees if power[l] > 0):
          ax_m.plot(dense, curve["mode_residuals"][:, l] / power[l], "-", color=f"C{i}",
                    label=f"degree {l} (lambda {lam[l]:.2g})")
          ax_m.errorbar(ns, [x[f"krr_mode_{l}"] / power[l] for x in pts],
                        [np.nan_to_num(x[f"krr_mode_{l}_se"]) / power[l] for x in pts],
                        fmt="o", ms=4, color=f"C{i}")
        ax_m.set(xscale="log", yscale="log", xlabel="n", ylabel="residual / target power",
                 title=f"modes learned in order of eigenvalue (d = {key[0]}, ridge {ridge:g})")
        ax_m.legend(fontsize=7)
    for fmt, text in (("-", "test_error (sphere_spectrum)"), ("o", "kernel regression"),
                      ("x", f"network, width {key[2]}"), ("s", "infinite width, same steps")):
      ax.plot([], [], fmt, color="k", mfc="none" if fmt == "s" else None, label=text)
    ax.set(xscale="log", yscale="log", xlabel="n (training points)",
           ylabel="excess test error E (f - f*)^2",
           title=f"d = {key[0]}, noise {key[1]:g}: mean over draws")
    ax.legend(fontsize=7)
  out = {"points": rows, "figure": fig, "network_leaves_at_n": leaves,
         "figures": {"modes": fig_m} if panels else {}}
  groups = {}  # the optimal ridge where three or more positive ridges share an n
  for r, x in done:
    if x["ridge"] > 0:
      groups.setdefault(_key(x) + (x["n"],), []).append((r, x))
  ridge_fig, optimal = plots.ridge_minima(
      {f"d_{k[0]}_noise_{k[1]:g}_n_{k[3]}": (
          [x["ridge"] for _, x in v], [x["krr_excess"] + x["noise"] for _, x in v],
          [x["krr_excess_se"] for _, x in v], functools.partial(
              lambda r, n, ridge: _curve(r, n, ridge)["test"], v[0][0], k[3]))
       for k, v in sorted(groups.items())})
  if ridge_fig is not None:
    out["figures"]["ridge"], out["optimal_ridge"] = ridge_fig, optimal
  return out
