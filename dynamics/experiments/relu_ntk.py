"""Fully connected networks of growing width against their linearisation (NTK).

A grid point is one width and depth (`model.width`, `model.depth`) of
`dynamics.models.mlp` with `model.activation` and `model.parameterization`;
its seeds train by full-batch gradient descent on `(1/2n) ||f - y||^2`. Per
seed `init` keeps the empirical NTK at init on the training points (`theta0`)
and between test and training points (`theta0_test`). Logged: outputs and
loss on train and test points, the kernel drift `||Theta_t - Theta_0||_F /
||Theta_0||_F`, the weight change `||theta_t - theta_0|| / ||theta_0||`
(`dynamics.metrics`), the gap of `Theta_t(test, train)` to the
infinite-width `theory.ntk.mlp_kernel` (`setup`'s `k_ana_test`) and
`ntk_x0 = Theta_t(x_test, x_train[0])`. `theory`: the network linearised on
the seed's empirical NTK at init (`loss`, `test_loss`, `f_*_lin`) and on the
analytic one (`f_*_ana`), `theory.ntk.mse_predictor` with the seed's step
(exact gradient descent on the linear model, no O(lr) gap).

Tasks: `sphere_teacher` (inputs on the sphere, a random ReLU teacher) and
`circle`: `num_train` inputs at angles `2 pi i / num_train` on the unit circle
(`x0 = (1, 0)` first), targets `sin(3 gamma)`, `num_test` test inputs evenly
spaced in angle, so that `ntk_x0` is `Theta(x0, x_gamma)` over the circle
(Jacot et al. 2018, Fig. 1).

Step: `train.lr` times `lr_scale`: `2n / lambda_max(Theta_0)` of the seed's own
kernel with `train.lr_units = 'critical'` (the linearisation's largest stable
step, `theory.ntk.max_learning_rate`); `m` in the `'mean_field'`
parameterization, whose NTK is `O(1/m)` (the same function-space time; there
the kernel moves by O(1) and `m Theta` is compared with the limit).

`report`: per point the seed mean and std of the NTK gap at init and at the
end, the largest drift, the weight change, the largest distance (relative to
`||y||`) to both linearisations, the loss's peak over its start (the catapult),
the final losses, and `lr_multiple`, the step in units of `2n /
lambda_max(Theta_0)`. Across widths, per depth (and value of any other swept
field) where the linearisation converges, the log-log slopes against width
(NTK regime: -1/2 or steeper; Jacot et al. 2018, Lee et al. 2019). Figure:
those against width; for the circle, `Theta(x0, x_gamma)` per seed at init and
at the end with the limit; for a grid over `train.lr`, Lee et al.'s claim: the
loss peak and final losses against `lr_multiple`, per width.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dynamics import config as cfg
from dynamics import metrics, plots
from dynamics.models import mlp
from dynamics.tasks.sphere_teacher import sphere_teacher
from theory import ntk

TASKS = ("sphere_teacher", "circle")
LR_UNITS = ("absolute", "critical")
FIGURES = ("kernel_gap", "kernel_gap_end", "drift", "dist_train_emp", "dist_test_emp",
           "dist_train_ana", "dist_test_ana")


def setup(config) -> dict:
  """Checks the config; the task and the infinite-width NTK on it."""
  m, t = config.model, config.task
  cfg.integer(config, "model.width")
  cfg.integer(config, "model.depth", minimum=2)
  cfg.one_of(config, "model.activation", ntk.ACTIVATIONS)
  cfg.one_of(config, "model.parameterization", mlp.PARAMETERIZATIONS)
  cfg.nonnegative(config, "model.w_std"), cfg.nonnegative(config, "model.b_std")
  cfg.one_of(config, "task.name", TASKS)
  cfg.integer(config, "task.seed", minimum=0)
  if cfg.integer(config, "task.d") != 2 and t.name == "circle":
    cfg.fail("task.d", f"must be 2 for the circle task, got {t.d}.")
  n, n_test = cfg.integer(config, "task.num_train"), cfg.integer(config, "task.num_test")
  cfg.integer(config, "task.teacher_width")
  for field, only in (("optimizer", "sgd"), ("decay", "constant")):  # the linearisation's
    if field in config.train:
      cfg.one_of(config, f"train.{field}", (only,))
  if cfg.one_of(config, "train.lr_units", LR_UNITS) == "critical" and \
      m.parameterization == "mean_field":
    cfg.fail("train.lr_units", "'critical' is defined for the 'ntk' and 'standard' "
             "parameterizations (the mean-field kernel is O(1/width)).")
  dtype = cfg.float_dtype(config.precision)
  if t.name == "circle":
    point = lambda g: jnp.asarray(np.stack([np.cos(g), np.sin(g)], 1), dtype)
    g, gt = 2 * np.pi * np.arange(n) / n, 2 * np.pi * np.arange(n_test) / n_test
    x, y, xt, yt = point(g), jnp.asarray(np.sin(3 * g), dtype), point(gt), \
        jnp.asarray(np.sin(3 * gt), dtype)
  else:
    xs, ys = sphere_teacher(jax.random.PRNGKey(t.seed), d=t.d, num_samples=n + n_test,
                            teacher_width=t.teacher_width, dtype=dtype)
    x, y, xt, yt = xs[:n], ys[:n], xs[n:], ys[n:]
  kernel = ntk.mlp_kernel(m.depth, m.activation, m.w_std, m.b_std,
                          "standard" if m.parameterization == "standard" else "ntk",
                          width=m.width)
  return {"x": x, "y": y, "x_test": xt, "y_test": yt,
          "k_ana": kernel(x)["ntk"], "k_ana_test": kernel(xt, x)["ntk"]}


def _scale(config):
  """`m` for 'mean_field' (whose NTK is O(1/m)), else 1: `scale x Theta` is
  the kernel compared with the limit."""
  return config.model.width if config.model.parameterization == "mean_field" else 1


def _kw(config):
  m = config.model
  return dict(activation=m.activation, parameterization=m.parameterization, w_std=m.w_std,
              b_std=m.b_std)


def _params(config, key, data):
  m = config.model
  return mlp.init(key, data["x"].shape[1], (m.width,) * (m.depth - 1),
                  parameterization=m.parameterization, w_std=m.w_std, b_std=m.b_std,
                  dtype=data["x"].dtype)


def init(config, key, data) -> dict:
  """Parameters, the init key (`observe` draws `theta_0` again from it for the
  weight change), the empirical NTK at init and the step's scale."""
  params, x = _params(config, key, data), data["x"]
  theta0 = mlp.ntk(params, x, x, **_kw(config))
  if config.train.lr_units == "critical":  # theory.ntk.max_learning_rate, per seed
    lr_scale = 2 * x.shape[0] / jnp.linalg.eigvalsh(theta0)[-1]
  else:
    lr_scale = jnp.asarray(_scale(config), x.dtype)
  return {"params": params, "init_key": key, "theta0": theta0,
          "theta0_test": mlp.ntk(params, data["x_test"], x, **_kw(config)),
          "lr_scale": lr_scale}


def _half_mse(f, y):
  return 0.5 * jnp.mean((f - y) ** 2, -1)


def loss(config, state, data, key):
  return _half_mse(mlp.apply(state["params"], data["x"], **_kw(config)), data["y"])


def observe(config, state, data) -> dict:
  p, x, xt = state["params"], data["x"], data["x_test"]
  f, ft = mlp.apply(p, x, **_kw(config)), mlp.apply(p, xt, **_kw(config))
  k_test = _scale(config) * mlp.ntk(p, xt, x, **_kw(config))
  k_ana = data["k_ana_test"]
  return {"loss": _half_mse(f, data["y"]), "test_loss": _half_mse(ft, data["y_test"]),
          "f_train": f, "f_test": ft,
          "drift": metrics.kernel_distance(mlp.ntk(p, x, x, **_kw(config)), state["theta0"]),
          "weight_change": metrics.relative_weight_change(
              p, _params(config, state["init_key"], data)),
          "kernel_gap_test": jnp.linalg.norm(k_test - k_ana) / jnp.linalg.norm(k_ana),
          "ntk_x0": k_test[:, 0]}


def theory(config, data, start, t) -> dict:
  """The seed's network linearised on its empirical NTK at init (`loss`,
  `test_loss`, `f_*_lin`) and on the infinite-width one (`f_*_ana`), from its
  outputs at init, with its step."""
  lr, s = config.train.lr * start["lr_scale"], _scale(config)

  def linear(k, k_test):
    return ntk.mse_predictor(k, data["y"], lr=lr)(t, start["f_train"], k_test, start["f_test"])

  f, ft = linear(start["theta0"], start["theta0_test"])
  fa, fta = linear(data["k_ana"] / s, data["k_ana_test"] / s)
  return {"loss": _half_mse(f, data["y"]), "test_loss": _half_mse(ft, data["y_test"]),
          "f_train_lin": f, "f_test_lin": ft, "f_train_ana": fa, "f_test_ana": fta}


def _point(r) -> tuple[dict, dict]:
  """A point's numbers (seed means over the kept seeds, `_std` beside) and its
  NTK curves `Theta(x_test, x0)` (for the circle figure)."""
  traj, pred, data, c = r.traj, r.pred, r.data, r.config
  kept, s = traj.kept, _scale(c)
  lam = np.linalg.eigvalsh(np.asarray(traj.start["theta0"], np.float64))[:, -1]
  y, n = np.asarray(data["y"], np.float64), len(data["y"])
  multiple = c.train.lr * np.asarray(traj.start["lr_scale"], np.float64) * lam / (2 * n)
  row = {"lr_multiple": float(np.mean(multiple))}
  if not kept.any():
    return row, {}
  lg = {k: np.asarray(v, np.float64)[kept] for k, v in traj.logged.items()}
  pr = {k: np.asarray(v, np.float64)[kept] for k, v in pred.items()}
  k_ana = np.asarray(data["k_ana"], np.float64)
  dist = lambda f, g: np.max(np.linalg.norm(f - g, axis=-1), -1) / np.linalg.norm(y)
  per_seed = {
      "kernel_gap": np.linalg.norm(s * traj.start["theta0"][kept] - k_ana, axis=(1, 2))
                    / np.linalg.norm(k_ana),
      "kernel_gap_end": lg["kernel_gap_test"][:, -1], "drift": np.max(lg["drift"], 1),
      "dist_train_emp": dist(lg["f_train"], pr["f_train_lin"]),
      "dist_test_emp": dist(lg["f_test"], pr["f_test_lin"]),
      "dist_train_ana": dist(lg["f_train"], pr["f_train_ana"]),
      "dist_test_ana": dist(lg["f_test"], pr["f_test_ana"]),
      "weight_change": lg["weight_change"][:, -1],
      # the catapult's signature: the loss rising above its start before it falls
      "loss_peak": np.max(lg["loss"], 1) / lg["loss"][:, 0],
      "final_loss": lg["loss"][:, -1], "lin_final_loss": pr["loss"][:, -1],
      "start_loss": lg["loss"][:, 0]}
  stats = {k: metrics.seed_stats(v) for k, v in per_seed.items()}
  row.update({k: float(v["mean"]) for k, v in stats.items()})
  row.update({f"{k}_std": float(v["std"]) for k, v in stats.items()})
  curves = {"init": lg["ntk_x0"][:, 0], "end": lg["ntk_x0"][:, -1],
            "limit": np.asarray(data["k_ana_test"])[:, 0]}
  return row, curves


def _groups(results, rows, without: str) -> dict:
  """`{label: [(index, value of `without`), ...]}`: the points equal in every
  swept field but `without`, labelled by depth (and those other fields)."""
  out = {}
  for i, r in enumerate(results):
    other = ", ".join(f"{f}={v}" for f, v in r.fields.items()
                      if f not in (without, "model.depth"))
    label = str(r.config.model.depth) + (f", {other}" if other else "")
    out.setdefault(label, []).append((i, cfg.get(r.config, without)))
  return {k: sorted(v, key=lambda p: p[1]) for k, v in out.items()}


def report(config, results) -> dict:
  """Per point the numbers; across widths the slopes (where the linearisation
  converges: every seed kept, `lr_multiple < 1`); the figure (module docstring)."""
  pairs = [_point(r) for r in results]
  rows, curves = [p[0] for p in pairs], [p[1] for p in pairs]
  out = {"points": rows}
  lazy = lambda i: rows[i].get("lr_multiple", 1) < 1 and not results[i].summary.get(
      "diverged_seeds") and "drift" in rows[i]
  slopes = {label: {k: metrics.loglog_slope([w for _, w in g], [rows[i][k] for i, _ in g])
                    for k in FIGURES}
            for label, g in _groups(results, rows, "model.width").items()
            if len(g) > 1 and all(lazy(i) for i, _ in g)}
  if slopes:
    out["slopes_by_depth"] = slopes
    out["predicted_slope"] = None if config.model.parameterization == "mean_field" else -0.5
    if len(slopes) == 1:
      out["slopes"] = next(iter(slopes.values()))
  lrs = {r.config.train.lr for r in results}
  if config.task.name == "circle":
    out["figure"] = _circle_figure(config, results, curves)
  elif len(lrs) > 1:
    out["figure"], out["trains_up_to"] = _lr_figure(results, rows)
  else:
    out["figure"] = _width_figure(config, rows, _groups(results, rows, "model.width"), slopes)
  return out


def _width_figure(config, rows, groups, slopes):
  """Gap, drift and distance to the linearisation against width, with width^-1/2."""
  fig, axes = plots.figure(3)
  for ax, (k, title) in zip(axes, (("kernel_gap", "NTK gap at init"),
                                   ("drift", "kernel drift (max over t)"),
                                   ("dist_test_emp", "||f - f_lin|| / ||y||, test"))):
    for j, (label, g) in enumerate(groups.items()):
      ok = [(w, rows[i]) for i, w in g if k in rows[i]]
      if not ok:
        continue
      w = np.array([w for w, _ in ok], np.float64)
      slope = slopes.get(label, {}).get(k)
      ax.errorbar(w, [r[k] for _, r in ok], yerr=[r[f"{k}_std"] for _, r in ok], fmt="o-",
                  color=f"C{j}", label=f"depth {label}" + (f": slope {slope:.2f}"
                                                           if slope is not None else ""))
      if j == 0:
        ax.plot(w, ok[0][1][k] * (w / w[0]) ** -0.5, "k--", lw=1, label="width^-1/2")
    ax.set(xscale="log", yscale="log", xlabel="width m", title=title)
    ax.legend(fontsize=7)
  fig.suptitle(f"{config.model.activation}, {config.model.parameterization} "
               "parameterization: seed mean +- std", fontsize=10)
  return fig


def _circle_figure(config, results, curves):
  """Jacot et al. (2018) Fig. 1: `Theta(x0, x_gamma)` per seed at init (solid)
  and at the end (dashed), per width, with the infinite-width kernel."""
  fig, (ax,) = plots.figure(1, size=(6.5, 4.6))
  n = config.task.num_test
  gamma = 2 * np.pi * np.arange(n) / n
  order = sorted(range(len(results)), key=lambda i: results[i].config.model.width)
  for j, i in enumerate(i for i in order if curves[i]):
    for key, style in (("init", "-"), ("end", "--")):
      for s, curve in enumerate(curves[i][key]):
        ax.plot(gamma, curve, style, color=f"C{j}", lw=0.7, alpha=0.6, label=(
            f"width {results[i].config.model.width}, {key}" if s == 0 else None))
  if any(curves):
    ax.plot(gamma, next(c for c in curves if c)["limit"], "k-", lw=2, label="infinite width")
  ax.set(xlabel="angle gamma", ylabel="Theta(x0, (cos gamma, sin gamma))",
         title=f"depth {config.model.depth} {config.model.activation}, b_std "
               f"{config.model.b_std}: NTK at init (solid), after training (dashed)")
  ax.legend(fontsize=7)
  return fig


def _lr_figure(results, rows):
  """Lee et al. (2019): the loss's peak and the final losses against the step
  in units of `2n / lambda_max(Theta_0)`, per width; the linearisation
  converges below 1, a catapult (Lewkowycz et al. 2020) can train the network
  up to about 2. Also, per group, the largest multiple at which every seed of
  the network (the linearisation) ended below its start."""
  fig, (ax, ax_f) = plots.figure(2)
  edges = []
  for j, (label, g) in enumerate(_groups(results, rows, "train.lr").items()):
    width = results[g[0][0]].config.model.width
    ok = sorted((rows[i] for i, _ in g if "loss_peak" in rows[i]),
                key=lambda r: r["lr_multiple"])
    x = [r["lr_multiple"] for r in ok]
    ax.plot(x, [r["loss_peak"] for r in ok], "o-", color=f"C{j}", label=f"depth {label}")
    ax_f.plot(x, [r["final_loss"] for r in ok], "o-", color=f"C{j}", label=f"depth {label}")
    ax_f.plot(x, [r["lin_final_loss"] for r in ok], "x--", color=f"C{j}")
    trained = lambda key, rs: max((r["lr_multiple"] for r in rs if r[key] < r["start_loss"]),
                                  default=None)
    whole = [rows[i] for i, _ in g if "loss_peak" in rows[i]
             and not results[i].summary.get("diverged_seeds")]
    edges.append({"width": width, "depth": results[g[0][0]].config.model.depth,
                  "network": trained("final_loss", whole), "linearised": trained(
                      "lin_final_loss", ok),
                  "loss_peak_max": max((r["loss_peak"] for r in ok), default=None)})
  for a in (ax, ax_f):
    for edge, text in ((1, "2n/lambda_max (linearised edge)"), (2, "2x")):
      a.axvline(edge, color="gray", ls=":" if edge == 2 else "--", lw=1, label=text)
    a.set(xlabel="lr / (2n / lambda_max(Theta_0))", yscale="log")
    a.legend(fontsize=7)
  ax.set(ylabel="max_t loss / loss at init", title="the catapult: the loss's peak")
  ax_f.set(ylabel="final train loss", title="final loss, network (o) and linearised (x)")
  return fig, edges
