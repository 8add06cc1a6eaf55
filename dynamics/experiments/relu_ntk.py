"""Fully connected networks of growing width against their linearisation (NTK).

A grid point is one width and depth of `dynamics.models.mlp` (any activation
and parameterization), its seeds trained by full-batch gradient descent; `init`
keeps each seed's NTK at init (`theta0`, `theta0_test`: test x train). Logged:
outputs, losses, the kernel drift `||Theta_t - Theta_0||_F / ||Theta_0||_F`,
the weight change `||theta_t - theta_0|| / ||theta_0||`, the gap of
`Theta_t(test, train)` to the infinite-width `theory.ntk.mlp_kernel` and
`ntk_x0 = Theta_t(x_test, x_train[0])` (Jacot et al. 2018, Fig. 1 on the
`circle` task: inputs at angles `2 pi i / n`, targets `sin(3 gamma)`).
`theory`: the linearisations on the seed's NTK at init and on the analytic one.
The step is `train.lr x lr_scale`: `2n / lambda_max(Theta_0)` of the seed's own
kernel for `train.lr_units = 'critical'` (the linearisation's edge), `m` for
'mean_field' (whose NTK is O(1/m); `m Theta` meets the limit). `report`: per
point the NTK gap at init and end, the largest drift and distances (over
`||y||`) to both linearisations, the weight change, the loss's peak over its
start (a catapult), the final losses, `lr_multiple` (the step over `2n /
lambda_max`); slopes against width where the linearisation converges (NTK:
-1/2 or steeper). Figure: those; the circle's; over `train.lr`, Lee et al.'s (2019).
"""

import jax
import jax.numpy as jnp
import numpy as np

from dynamics import config as cfg
from dynamics import metrics, plots
from dynamics.models import mlp
from dynamics.tasks.sphere_teacher import sphere_teacher
from theory import ntk

FIGURES = ("kernel_gap", "kernel_gap_end", "drift", "dist_train_emp", "dist_test_emp",
           "dist_train_ana", "dist_test_ana")


def setup(config) -> dict:
  """Checks the config; the task and the infinite-width NTK on it."""
  m, t = config.model, config.task
  cfg.integer(config, "model.width"), cfg.integer(config, "model.depth", minimum=2)
  cfg.one_of(config, "model.activation", ntk.ACTIVATIONS)
  cfg.one_of(config, "model.parameterization", mlp.PARAMETERIZATIONS)
  cfg.nonnegative(config, "model.w_std"), cfg.nonnegative(config, "model.b_std")
  cfg.integer(config, "task.seed", minimum=0), cfg.integer(config, "task.teacher_width")
  if cfg.one_of(config, "task.name", ("sphere_teacher", "circle")) == "circle" and \
      cfg.integer(config, "task.d") != 2:
    cfg.fail("task.d", f"must be 2 for the circle task, got {t.d}.")
  n, n_test = cfg.integer(config, "task.num_train"), cfg.integer(config, "task.num_test")
  for field, only in (("optimizer", "sgd"), ("decay", "constant")):  # the linearisation's
    if field in config.train:
      cfg.one_of(config, f"train.{field}", (only,))
  if cfg.one_of(config, "train.lr_units", ("absolute", "critical")) == "critical" and \
      m.parameterization == "mean_field":
    cfg.fail("train.lr_units", "'critical' is defined for the 'ntk' and 'standard' "
             "parameterizations (the mean-field kernel is O(1/width)).")
  dtype = cfg.float_dtype(config.precision)
  if t.name == "circle":
    g = [2 * np.pi * np.arange(k) / k for k in (n, n_test)]
    x, xt = (jnp.asarray(np.stack([np.cos(a), np.sin(a)], 1), dtype) for a in g)
    y, yt = (jnp.asarray(np.sin(3 * a), dtype) for a in g)
  else:
    xs, ys = sphere_teacher(jax.random.PRNGKey(t.seed), d=t.d, num_samples=n + n_test,
                            teacher_width=t.teacher_width, dtype=dtype)
    x, y, xt, yt = xs[:n], ys[:n], xs[n:], ys[n:]
  kernel = ntk.mlp_kernel(m.depth, m.activation, m.w_std, m.b_std, "standard" if
                          m.parameterization == "standard" else "ntk", width=m.width)
  return {"x": x, "y": y, "x_test": xt, "y_test": yt,
          "k_ana": kernel(x)["ntk"], "k_ana_test": kernel(xt, x)["ntk"]}


def _scale(config):
  """`m` for 'mean_field' (NTK O(1/m)), else 1: `scale x Theta` meets the limit."""
  return config.model.width if config.model.parameterization == "mean_field" else 1


def _net(config, data):
  """`(init(key), apply(params, x), both(params))`; `both`: the outputs and the
  NTK against the training points of train and test points in one pass."""
  m, x = config.model, data["x"]
  kw = dict(parameterization=m.parameterization, w_std=m.w_std, b_std=m.b_std)
  apply = lambda p, x_: mlp.apply(p, x_, activation=m.activation, **kw)
  xs = jnp.concatenate([x, data["x_test"]])
  return (lambda key: mlp.init(key, x.shape[1], (m.width,) * (m.depth - 1), dtype=x.dtype,
                               **kw), apply,
          lambda p: (apply(p, xs), mlp.ntk(p, xs, x, activation=m.activation, **kw)))


def init(config, key, data) -> dict:
  """Parameters, the init key (`observe` draws `theta_0` again from it for the
  weight change), the empirical NTK at init and the step's scale."""
  draw, _, both = _net(config, data)
  params, n = draw(key), data["x"].shape[0]
  k = both(params)[1]
  lr_scale = (2 * n / jnp.linalg.eigvalsh(k[:n])[-1] if config.train.lr_units == "critical"
              else jnp.asarray(_scale(config), k.dtype))  # max_learning_rate, per seed
  return {"params": params, "init_key": key, "theta0": k[:n], "theta0_test": k[n:],
          "lr_scale": lr_scale}


def _half_mse(f, y): return 0.5 * jnp.mean((f - y) ** 2, -1)  # docs/conventions.md


def loss(config, state, data, key):
  return _half_mse(_net(config, data)[1](state["params"], data["x"]), data["y"])


def observe(config, state, data) -> dict:
  p, n, k_ana = state["params"], data["x"].shape[0], data["k_ana_test"]
  draw, _, both = _net(config, data)
  f, k = both(p)
  k_test = _scale(config) * k[n:]
  return {"loss": _half_mse(f[:n], data["y"]), "test_loss": _half_mse(f[n:], data["y_test"]),
          "f_train": f[:n], "f_test": f[n:],
          "drift": metrics.kernel_distance(k[:n], state["theta0"]),
          "weight_change": metrics.relative_weight_change(p, draw(state["init_key"])),
          "kernel_gap_test": jnp.linalg.norm(k_test - k_ana) / jnp.linalg.norm(k_ana),
          "ntk_x0": k_test[:, 0]}


def theory(config, data, start, t) -> dict:
  """The seed's network linearised on its NTK at init (`loss`, `test_loss`,
  `f_*_lin`) and on the infinite-width one (`f_*_ana`), from its outputs at
  init, with its own step."""
  lr, s, y = config.train.lr * start["lr_scale"], _scale(config), data["y"]
  linear = lambda k, k_test: ntk.mse_predictor(k, y, lr=lr)(
      t, start["f_train"], k_test, start["f_test"])
  f, ft = linear(start["theta0"], start["theta0_test"])
  fa, fta = linear(data["k_ana"] / s, data["k_ana_test"] / s)
  return {"loss": _half_mse(f, y), "test_loss": _half_mse(ft, data["y_test"]),
          "f_train_lin": f, "f_test_lin": ft, "f_train_ana": fa, "f_test_ana": fta}


def _point(r) -> tuple[dict, dict]:
  """A point's numbers (seed means over the kept seeds, `_std` beside; NaN if
  none) and its curves `Theta(x_test, x0)` at init and at the end (the circle's)."""
  traj, pred, data, c, kept = r.traj, r.pred, r.data, r.config, r.traj.kept
  y, k_ana = np.asarray(data["y"], np.float64), np.asarray(data["k_ana"], np.float64)
  theta0 = np.asarray(traj.start["theta0"], np.float64)
  lam = np.linalg.eigvalsh(theta0)[:, -1]  # the step over 2n / lambda_max, per seed:
  row = {"lr_multiple": float(np.mean(c.train.lr * traj.start["lr_scale"] * lam / len(y) / 2))}
  lg, pr = ({k: np.asarray(v, np.float64)[kept] for k, v in d.items()} for d in (traj.logged, pred))
  dist = lambda f, g: np.max(np.linalg.norm(f - g, axis=-1), -1) / np.linalg.norm(y)
  per_seed = {
      "kernel_gap": np.linalg.norm(_scale(c) * theta0[kept] - k_ana, axis=(1, 2))
                    / np.linalg.norm(k_ana),
      "kernel_gap_end": lg["kernel_gap_test"][:, -1], "drift": np.max(lg["drift"], 1),
      **{f"dist_{s}_{w}": dist(lg[f"f_{s}"], pr[f"f_{s}_{'lin' if w == 'emp' else w}"])
         for w in ("emp", "ana") for s in ("train", "test")},
      "weight_change": lg["weight_change"][:, -1],
      # the catapult's signature: the loss rising above its start before it falls
      "loss_peak": np.max(lg["loss"], 1) / lg["loss"][:, 0],
      "final_loss": lg["loss"][:, -1], "lin_final_loss": pr["loss"][:, -1],
      "start_loss": lg["loss"][:, 0]}
  stats = {k: metrics.seed_stats(v) for k, v in per_seed.items()}
  row.update({k: float(v["mean"]) for k, v in stats.items()})
  row.update({f"{k}_std": float(v["std"]) for k, v in stats.items()})
  return row, {"init": lg["ntk_x0"][:, 0], "end": lg["ntk_x0"][:, -1],
               "limit": np.asarray(data["k_ana_test"])[:, 0]}


def _group(r) -> str:
  """A point's depth and every other swept field but width: its line in width."""
  return ", ".join([str(r.config.model.depth)] + [
      f"{f}={v}" for f, v in r.fields.items() if f not in ("model.depth", "model.width")])


def report(config, results) -> dict:
  """Per point the numbers; slopes against width where the linearisation converges."""
  pairs = [_point(r) for r in results]
  rows = [{"width": r.config.model.width, "group": _group(r), **p[0]}
          for r, p in zip(results, pairs)]
  hot = {row["group"] for r, row in zip(results, rows)  # past the linearisation's edge
         if row["lr_multiple"] >= 1 or r.summary.get("diverged_seeds")}
  groups = {g: [r for r in rows if r["group"] == g] for g in {r["group"] for r in rows} - hot}
  slopes = {g: {k: metrics.loglog_slope([r["width"] for r in rs], [r[k] for r in rs])
                for k in FIGURES} for g, rs in sorted(groups.items()) if len(rs) > 1}
  over_lr = len({r.config.train.lr for r in results}) > 1  # its numbers first (the console)
  lead = ("lr_multiple", "loss_peak", "final_loss", "lin_final_loss") if over_lr else (
      *FIGURES, "weight_change")
  out = {"points": [{**{k: p[0][k] for k in lead}, **p[0]} for p in pairs]}
  if slopes:  # one group: `slopes`; the NTK regime's prediction: -1/2 (or steeper) for each
    out.update({"slopes": next(iter(slopes.values()))} if len(slopes) == 1 else
               {"slopes_by_depth": slopes})
    out["predicted_slope"] = None if config.model.parameterization == "mean_field" else -0.5
  if config.task.name == "circle":
    out["figure"] = _circle_figure(config, results, [p[1] for p in pairs])
  elif over_lr:
    out["figure"], out["trains_up_to"] = _lr_figure(results, [p[0] for p in pairs])
  else:
    out["figure"], axes = plots.figure(3)
    for ax, k in zip(axes, ("kernel_gap", "drift", "dist_test_emp")):
      ok = [r for r in rows if np.isfinite(r[k])]
      if ok:  # the seed means against width, one line per depth, and width^-1/2
        plots.against(ok, x="width", y=k, by="group", loglog=True, ax=ax)
        w = np.array(sorted({r["width"] for r in ok}), np.float64)
        ax.plot(w, max(r[k] for r in ok if r["width"] == w[0]) * (w / w[0]) ** -0.5, "k--",
                lw=1, label="width^-1/2")
        ax.legend(fontsize=7, title=f"depth, {config.model.parameterization} param.")
  return out


def _circle_figure(config, results, curves):
  """Jacot et al. (2018) Fig. 1: `Theta(x0, x_gamma)` per seed at init (solid)
  and at the end (dashed), per width, with the infinite-width kernel (black)."""
  fig, (ax,) = plots.figure(1, size=(6.5, 4.6))
  gamma = 2 * np.pi * np.arange(config.task.num_test) / config.task.num_test
  order = sorted((r.config.model.width, i) for i, r in enumerate(results) if curves[i])
  for j, (width, i) in enumerate(order):
    for key, style in (("init", "-"), ("end", "--")):
      for s, curve in enumerate(curves[i][key]):
        ax.plot(gamma, curve, style, color=f"C{j}", lw=0.7, alpha=0.6,
                label=f"width {width}, {key}" if s == 0 else None)
  if order:
    ax.plot(gamma, curves[order[0][1]]["limit"], "k-", lw=2, label="infinite width")
  ax.set(xlabel="angle gamma", ylabel="Theta(x0, (cos gamma, sin gamma))", title=f"depth "
         f"{config.model.depth}: the NTK at init (solid) and after training (dashed)")
  ax.legend(fontsize=7)
  return fig


def _lr_figure(results, rows):
  """Lee et al. (2019): loss peak and final losses against `lr_multiple` per width, and
  the largest multiple at which the network (every seed kept) and its linearisation
  end below their start: the linearisation's edge is 1, a catapult's about 2."""
  fig, (ax, ax_f) = plots.figure(2)
  edges, groups = [], {}
  for r, row in zip(results, rows):
    groups.setdefault((r.config.model.width, r.config.model.depth), []).append(
        {**row, "kept": not r.summary.get("diverged_seeds")})
  for j, ((width, depth), rs) in enumerate(groups.items()):
    ok, style = sorted((r for r in rs if np.isfinite(r["loss_peak"])),
                       key=lambda r: r["lr_multiple"]), dict(color=f"C{j}")
    x = [r["lr_multiple"] for r in ok]
    ax.plot(x, [r["loss_peak"] for r in ok], "o-", label=f"width {width}", **style)
    ax_f.plot(x, [r["final_loss"] for r in ok], "o-", label=f"width {width}", **style)
    ax_f.plot(x, [r["lin_final_loss"] for r in ok], "x--", **style)
    gone = [r["lr_multiple"] for r in rs if not r["kept"]]  # seeds diverged: at the top
    ax_f.plot(gone, [1e3] * len(gone), "v", ms=9, mfc="none", **style)
    below = lambda key, every: max((r["lr_multiple"] for r in rs if r[key] < r["start_loss"]
                                    and (r["kept"] or every)), default=None)
    edges.append({"width": width, "depth": depth, "network": below("final_loss", False),
                  "linearised": below("lin_final_loss", True),
                  "loss_peak_max": max((r["loss_peak"] for r in ok), default=None)})
  for a in (ax, ax_f):
    a.axvline(1, color="gray", ls="--", lw=1, label="2n / lambda_max: linearised edge")
    a.axvline(2, color="gray", ls=":", lw=1, label="2x")
    a.set(xlabel="lr / (2n / lambda_max(Theta_0))", yscale="log")
    a.legend(fontsize=7)
  ax.set(ylabel="max_t loss / loss at init", title="the catapult: the loss's peak")
  ax_f.set(ylabel="final loss", ylim=(None, 3e3), title="network (o, v: diverged), linear (x)")
  return fig, edges
