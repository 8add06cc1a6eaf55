"""Fully connected networks of growing width against their linearisation (NTK).

A grid point is one width and depth (`model.width`, `model.depth`; the
default grid sweeps both) of `dynamics.models.mlp` with `model.activation`
(ReLU by default): its seeds train by full-batch gradient descent. Logged
per seed: outputs on train and test points, the train and test loss, and the
relative kernel drift `||Theta_t - Theta_0||_F / ||Theta_0||_F` on the
training points and the relative weight change `||theta_t - theta_0|| /
||theta_0||` (`dynamics.metrics`); the NTK between test and training points at init and at the
end (`theta0_test`, `theta_end_test`). Beside them (`theory`): the linearised
network, `theory.ntk.gradient_descent_mse` on each seed's empirical NTK at
init with the same `lr` and steps (so no O(lr) discretisation gap). The
summary adds the linearisation on the infinite-width `theory.ntk.mlp_kernel`
and the Monte-Carlo gap `||Theta_0 - Theta_inf||_F / ||Theta_inf||_F`.

Tasks: `sphere_teacher` (inputs on the sphere, a random ReLU teacher) and
`circle`: `num_train` inputs at angles `2 pi i / num_train` on the unit
circle (the first is `x0 = (1, 0)`), targets `sin(3 gamma)`, and
`num_test` test inputs evenly spaced in angle, so that `theta*_test[:, :, 0]`
is `Theta(x0, x_gamma)` over the circle (Jacot et al. 2018, Fig. 1).

Across widths (`sweep_summary`), the NTK regime predicts gap, drift and
distance to the linearisation all falling as `width^(-1/2)` (Jacot et al.
2018; Lee et al. 2019): their log-log slopes against width, per depth. In the
`'mean_field'` parameterization the NTK is `O(1/m)`: the run trains with
`lr * m` (the same function-space time) and the kernel moves by O(1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dynamics import config as cfg
from dynamics import metrics, plots
from dynamics.experiments import logged_times
from dynamics import train as engine
from dynamics.models import mlp
from dynamics.tasks.sphere_teacher import sphere_teacher
from theory import ntk

HPARAMS = {"train.lr": "lr"}
CONSTANTS = ("theta0", "theta0_test", "theta_end_test", "lr_used")
LR_UNITS = ("absolute", "critical")
TABLE = ("loss", "test_loss", "drift", "weight_change")
FIGURES = ("kernel_gap", "kernel_gap_end", "drift", "dist_train_emp", "dist_test_emp",
           "dist_train_ana", "dist_test_ana")
TASKS = ("sphere_teacher", "circle")


def validate(config) -> None:
  cfg.integer(config, "model.width")
  cfg.integer(config, "model.depth", minimum=2)
  cfg.one_of(config, "model.activation", ntk.ACTIVATIONS)
  cfg.one_of(config, "model.parameterization", mlp.PARAMETERIZATIONS)
  cfg.nonnegative(config, "model.w_std")
  cfg.nonnegative(config, "model.b_std")
  cfg.one_of(config, "task.name", TASKS)
  cfg.integer(config, "task.seed", minimum=0)
  cfg.integer(config, "task.d")
  if config.task.name == "circle" and config.task.d != 2:
    raise ValueError(f"`task.d` must be 2 for the circle task, got {config.task.d}.")
  cfg.integer(config, "task.num_train")
  cfg.integer(config, "task.num_test")
  cfg.integer(config, "task.teacher_width")
  cfg.one_of(config, "train.optimizer", ("sgd",))
  if cfg.one_of(config, "train.lr_units", LR_UNITS) == "critical" and \
      config.model.parameterization == "mean_field":
    cfg.fail("train.lr_units", "'critical' is defined for the 'ntk' and 'standard' "
             "parameterizations (the mean-field kernel is O(1/width)).")
  cfg.schedule(config)


def make_task(config):
  """`(x, y, x_test, y_test)`: see the module docstring."""
  t = config.task
  dtype = cfg.float_dtype(config.precision)
  if t.name == "circle":
    angle = lambda n: 2 * np.pi * np.arange(n) / n
    point = lambda g: jnp.asarray(np.stack([np.cos(g), np.sin(g)], 1), dtype)
    target = lambda g: jnp.asarray(np.sin(3 * g), dtype)
    g, gt = angle(t.num_train), angle(t.num_test)
    return point(g), target(g), point(gt), target(gt)
  x, y = sphere_teacher(jax.random.PRNGKey(t.seed), d=t.d,
                        num_samples=t.num_train + t.num_test,
                        teacher_width=t.teacher_width, dtype=dtype)
  return x[:t.num_train], y[:t.num_train], x[t.num_train:], y[t.num_train:]


def _kernel_scale(config):
  """The NTK of 'mean_field' is O(1/m); m x it is the NTK-normalised kernel."""
  return config.model.width if config.model.parameterization == "mean_field" else 1


def _model(config):
  m = config.model
  kw = dict(activation=m.activation, parameterization=m.parameterization, w_std=m.w_std,
            b_std=m.b_std)
  return (lambda p, x_: mlp.apply(p, x_, **kw)), (lambda p, a, b: mlp.ntk(p, a, b, **kw))


def analytic_ntk(config, x1, x2):
  """The infinite-width NTK (`mean_field`: the NTK-normalised one, as `'ntk'`)."""
  m = config.model
  par = "standard" if m.parameterization == "standard" else "ntk"
  return ntk.mlp_kernel(m.depth, m.activation, m.w_std, m.b_std, par,
                        width=m.width)(x1, x2)["ntk"]


def make_train(config):
  """`train(key, hp)`: outputs, losses and drift logged; kernels at init and end."""
  m = config.model
  x, y, xt, yt = make_task(config)
  f, kernel = _model(config)
  loss_fn = lambda p, x_, y_: 0.5 * jnp.mean((f(p, x_) - y_) ** 2)
  scale = _kernel_scale(config)

  def train(key, hp):
    params = mlp.init(key, x.shape[1], (m.width,) * (m.depth - 1),
                      parameterization=m.parameterization, w_std=m.w_std, b_std=m.b_std,
                      dtype=x.dtype)
    theta0 = kernel(params, x, x)

    def metrics_fn(p):
      return {"f_train": f(p, x), "f_test": f(p, xt), "loss": loss_fn(p, x, y),
              "test_loss": loss_fn(p, xt, yt),
              "drift": metrics.kernel_distance(kernel(p, x, x), theta0),
              "weight_change": metrics.relative_weight_change(p, params)}

    lr = hp["lr"] * scale
    if config.train.lr_units == "critical":  # theory.ntk.max_learning_rate of this seed's NTK
      lr = hp["lr"] * 2 * x.shape[0] / jnp.linalg.eigvalsh(theta0)[-1]
    state, logged = engine.trajectory(
        params, loss_fn=loss_fn, data=(x, y),
        optimizer=engine.make_optimizer("sgd", lr),
        metrics_fn=metrics_fn, num_steps=config.train.num_steps,
        log_every=config.train.log_every)
    return {**logged, "theta0": theta0 * scale,
            "theta0_test": kernel(params, xt, x) * scale,
            "theta_end_test": kernel(state.params, xt, x) * scale,
            "lr_used": lr / scale,
            "diverged_at": state.diverged_at}

  return train


def _linearised(config, k, k_test, out):
  """Per seed, the linear model on kernel `k` (`[S, n, n]` or `[n, n]`) from
  the seed's outputs at init: `(f_train [S, L, n], f_test [S, L, n_test])`."""
  _, y, _, _ = make_task(config)
  steps, _ = logged_times(config)
  lrs = np.asarray(out["lr_used"], np.float64)  # per seed ('critical' units differ)
  per_seed = np.ndim(k) == 3 or np.ptp(lrs) > 0
  shared = None if per_seed else ntk.mse_predictor(k, y, lr=lrs[0])  # one eigh for all
  kernel = lambda s: k[s] if np.ndim(k) == 3 else k
  lin = [(ntk.mse_predictor(kernel(s), y, lr=lrs[s]) if per_seed else shared)(
      lrs[s] * steps, out["f_train"][s, 0], k_test[s] if np.ndim(k_test) == 3 else k_test,
      out["f_test"][s, 0]) for s in range(len(out["f_train"]))]
  return (np.stack([np.asarray(a) for a, _ in lin]),
          np.stack([np.asarray(b) for _, b in lin]))


def theory(config, out: dict) -> dict:
  """The network linearised on each seed's empirical NTK at init."""
  _, y, _, yt = make_task(config)
  f_train, f_test = _linearised(config, out["theta0"], out["theta0_test"], out)
  return {"f_train": f_train, "f_test": f_test,
          "loss": 0.5 * np.mean((f_train - np.asarray(y)) ** 2, -1),
          "test_loss": 0.5 * np.mean((f_test - np.asarray(yt)) ** 2, -1)}


def summarize(config, out: dict, pred: dict) -> dict:
  """Seed mean and std of: the NTK gap at init, the largest drift, and the
  largest distance (relative to `||y||`) to the linearisation on the
  empirical and on the analytic NTK."""
  x, y, xt, _ = make_task(config)
  k_ana, k_ana_test = analytic_ntk(config, x, x), analytic_ntk(config, xt, x)
  ana_train, ana_test = _linearised(config, k_ana, k_ana_test, out)
  dist = lambda f, g: np.max(np.linalg.norm(f - g, axis=-1), -1) / np.linalg.norm(y)
  per_seed = {
      "kernel_gap": np.linalg.norm(out["theta0"] - k_ana, axis=(1, 2)) / np.linalg.norm(k_ana),
      "kernel_gap_end": np.linalg.norm(out["theta_end_test"] - k_ana_test, axis=(1, 2))
                        / np.linalg.norm(k_ana_test),
      "drift": np.max(out["drift"], 1),
      "dist_train_emp": dist(out["f_train"], pred["f_train"]),
      "dist_test_emp": dist(out["f_test"], pred["f_test"]),
      "dist_train_ana": dist(out["f_train"], ana_train),
      "dist_test_ana": dist(out["f_test"], ana_test),
      # the catapult's signature: the loss rising above its start before it falls
      "loss_peak": np.max(out["loss"], 1) / out["loss"][:, 0],
      "final_loss": out["loss"][:, -1], "lin_final_loss": pred["loss"][:, -1]}
  stats = {k: metrics.seed_stats(v) for k, v in per_seed.items()}
  out_summary = {"width": int(config.model.width), "depth": int(config.model.depth),
                 "lr": float(config.train.lr), "lr_units": config.train.lr_units,
                 "activation": config.model.activation,
                 "parameterization": config.model.parameterization,
                 **{k: float(s["mean"]) for k, s in stats.items()},
                 **{f"{k}_std": float(s["std"]) for k, s in stats.items()}}
  if config.task.name == "circle":  # Theta(x0, x_gamma) per seed, for the sweep figure
    out_summary["curve"] = {
        "gamma": (2 * np.pi * np.arange(config.task.num_test) / config.task.num_test).tolist(),
        "init": np.asarray(out["theta0_test"])[:, :, 0].tolist(),
        "trained": np.asarray(out["theta_end_test"])[:, :, 0].tolist(),
        "limit": np.asarray(k_ana_test)[:, 0].tolist()}
  return out_summary


def text(config, summary: dict) -> str:
  s = summary
  unit = " x 2n/lambda_max" if s["lr_units"] == "critical" else ""
  return ("  " + ", ".join(f"{k} {s[k]:.3e}" for k in FIGURES) +
          f"\n  lr {s['lr']:g}{unit}: loss peak / start {s['loss_peak']:.3g}, final loss "
          f"{s['final_loss']:.3g} (linearised {s['lin_final_loss']:.3g})")


def plot(config, out, pred, summary, path) -> None:
  """Train and test loss against the linearised network's, and the drift."""
  _, t = logged_times(config)
  fig, (ax, ax_d) = plots.figure(2)
  for name, color in (("loss", "C0"), ("test_loss", "C1")):
    plots.trajectories(ax, t[1:], out[name][:, 1:], pred[name][:, 1:], color=color,
                       log=True, label=name.replace("_", " "))
  ax.set(xscale="log", xlabel="t = lr x steps", ylabel="loss",
         title=f"width {config.model.width}: network vs linearised (dashed)")
  plots.legend_theory(ax)
  plots.trajectories(ax_d, t, out["drift"], color="C2")
  ax_d.set(xlabel="t = lr x steps", ylabel="||Theta_t - Theta_0|| / ||Theta_0||",
           title="kernel drift")
  plots.save(fig, path)


def _slope(widths, values) -> float | None:
  """Least-squares slope of log(value) against log(width)."""
  widths, values = np.asarray(widths, np.float64), np.asarray(values, np.float64)
  ok = np.isfinite(values) & (values > 0)
  if ok.sum() < 2 or len(set(widths[ok])) < 2:
    return None
  return float(np.polyfit(np.log(widths[ok]), np.log(values[ok]), 1)[0])


def _by_depth(points) -> dict:
  """`{depth: (widths, summaries sorted by width)}`."""
  rows = [p.summary for p in points if "drift" in p.summary]
  out = {}
  for depth in sorted({r["depth"] for r in rows}):
    group = sorted((r for r in rows if r["depth"] == depth), key=lambda r: r["width"])
    out[depth] = (np.array([r["width"] for r in group]), group)
  return out


def sweep_summary(config, points) -> dict:
  """Log-log slopes against width of every figure, per depth (NTK regime:
  -0.5 each); `slopes` is the one depth's when the grid has one."""
  groups = _by_depth(points)
  by_depth = {str(d): {k: _slope(w, [r[k] for r in rows]) for k in FIGURES}
              for d, (w, rows) in groups.items()}
  parameterizations = {r["parameterization"] for _, rows in groups.values() for r in rows}
  out = {"slopes_by_depth": by_depth,
         "predicted_slope": None if "mean_field" in parameterizations else -0.5}
  if len(by_depth) == 1:
    out["slopes"] = next(iter(by_depth.values()))
  return out


def sweep_text(config, summary: dict) -> str:
  lines = []
  for depth, slopes in summary["slopes_by_depth"].items():
    lines.append(f"depth {depth}, log-log slope against width: " + " ".join(
        f"{k} {'-' if v is None else f'{v:.3f}'}" for k, v in slopes.items()))
  pred = summary["predicted_slope"]
  return "\n".join(lines) + "\n" + (
      "NTK regime predicts slope -0.5 for each" if pred is not None else
      "mean_field: no NTK limit; the kernel moves by O(1)")


def sweep_plot(config, points, summary, path) -> None:
  """Gap, drift and distance to the linearisation against width (one line
  style per depth), with the width^-1/2 of the NTK regime; for the circle
  task, `Theta(x0, x_gamma)` over the circle's angle instead."""
  if config.task.name == "circle":
    return _circle_plot(config, points, path)
  groups = _by_depth(points)
  fig, (ax,) = plots.figure(1, size=(6.5, 4.6))
  styles = ("o-", "s--", "^:", "d-.")
  for j, (depth, (widths, rows)) in enumerate(groups.items()):
    slopes = summary["slopes_by_depth"][str(depth)]
    for i, (k, label) in enumerate((("kernel_gap", "NTK gap at init"),
                                    ("drift", "kernel drift (max over t)"),
                                    ("dist_test_emp", "||f - f_lin|| / ||y||, test"))):
      ax.errorbar(widths, [r[k] for r in rows], yerr=[r[f"{k}_std"] for r in rows],
                  fmt=styles[j % len(styles)], color=f"C{i}",
                  label=f"depth {depth}, {label}: slope "
                        f"{'-' if slopes[k] is None else f'{slopes[k]:.2f}'}")
  if groups:
    widths, rows = next(iter(groups.values()))
    ax.plot(widths, rows[0]["drift"] * (widths / widths[0]) ** -0.5, "k--", lw=1,
            label="width^-1/2")
  ax.set(xscale="log", yscale="log", xlabel="width m",
         title=f"{config.model.activation}, {config.model.parameterization} "
               "parameterization, seed mean +- std")
  ax.legend(fontsize=7)
  plots.save(fig, path)


def _circle_plot(config, points, path) -> None:
  """Jacot et al. (2018) Fig. 1: `Theta(x0, x_gamma)`, `x0 = (1, 0)`, for
  every seed at init (solid) and after training (dashed), per width, with
  the infinite-width kernel."""
  fig, (ax,) = plots.figure(1, size=(6.5, 4.6))
  rows = sorted((p.summary for p in points if "curve" in p.summary), key=lambda r: r["width"])
  for i, r in enumerate(rows):
    c = r["curve"]
    for key, style, what in (("init", "-", "init"), ("trained", "--", "trained")):
      for s, curve in enumerate(c[key]):
        ax.plot(c["gamma"], curve, style, color=f"C{i}", lw=0.7, alpha=0.6,
                label=f"width {r['width']}, {what}" if s == 0 else None)
  if rows:
    ax.plot(rows[0]["curve"]["gamma"], rows[0]["curve"]["limit"], "k-", lw=2,
            label="infinite width")
  ax.set(xlabel="angle gamma", ylabel="Theta(x0, (cos gamma, sin gamma))",
         title=f"depth {config.model.depth} {config.model.activation}, "
               f"b_std {config.model.b_std}: NTK at init (solid), after training (dashed)")
  ax.legend(fontsize=7)
  plots.save(fig, path)
