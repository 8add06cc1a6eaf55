"""Two-layer ReLU networks of growing width against their linearisation (NTK).

A grid point is one width (`model.width`; the default grid sweeps it): its
seeds train by full-batch gradient descent on a fixed teacher on the sphere.
Logged per seed: outputs on train and test points, the train and test loss,
and the relative kernel drift `||Theta_t - Theta_0||_F / ||Theta_0||_F` on
the training points. Beside them (`theory`): the linearised network,
`theory.ntk.gradient_descent_mse` on each seed's empirical NTK at init with
the same `lr` and steps (so no O(lr) discretisation gap). The summary adds
the linearisation on the analytic `relu_ntk` and the Monte-Carlo gap
`||Theta_0 - relu_ntk||_F / ||relu_ntk||_F`.

Across widths (`sweep_summary`), the NTK regime predicts gap, drift and
distance to the linearisation all falling as `width^(-1/2)` (Jacot et al.
2018; Lee et al. 2019): their log-log slopes against width. In the
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
from dynamics.models import relu_net
from dynamics.tasks.sphere_teacher import sphere_teacher
from theory import ntk

HPARAMS = {"train.lr": "lr"}
CONSTANTS = ("theta0", "theta0_test")
TABLE = ("loss", "test_loss", "drift")
FIGURES = ("kernel_gap", "drift", "dist_train_emp", "dist_test_emp", "dist_train_ana",
           "dist_test_ana")


def validate(config) -> None:
  cfg.integer(config, "model.width")
  cfg.one_of(config, "model.parameterization", relu_net.PARAMETERIZATIONS)
  cfg.nonnegative(config, "model.w_std")
  cfg.nonnegative(config, "model.b_std")
  cfg.integer(config, "task.seed", minimum=0)
  cfg.integer(config, "task.d")
  cfg.integer(config, "task.num_train")
  cfg.integer(config, "task.num_test")
  cfg.integer(config, "task.teacher_width")
  cfg.one_of(config, "train.optimizer", ("sgd",))
  cfg.schedule(config)


def make_task(config):
  """Inputs uniform on the sphere of radius sqrt(d) (`x.x/d = 1`), labels from
  a fixed random two-layer ReLU teacher scaled to unit variance."""
  t = config.task
  x, y = sphere_teacher(jax.random.PRNGKey(t.seed), d=t.d,
                        num_samples=t.num_train + t.num_test,
                        teacher_width=t.teacher_width,
                        dtype=cfg.float_dtype(config.precision))
  return x[:t.num_train], y[:t.num_train], x[t.num_train:], y[t.num_train:]


def _kernel_scale(config):
  """The NTK of 'mean_field' is O(1/m); m x it is the NTK-normalised kernel."""
  return config.model.width if config.model.parameterization == "mean_field" else 1


def make_train(config):
  """`train(key, hp)`: outputs, losses and drift logged; kernels at init."""
  m, width = config.model, config.model.width
  x, y, xt, yt = make_task(config)
  f = lambda p, x_: relu_net.apply(p, x_, parameterization=m.parameterization,
                                   w_std=m.w_std, b_std=m.b_std)
  if m.parameterization == "ntk":
    kernel = lambda p, a, b: ntk.relu_empirical_ntk(p, a, b, m.w_std, m.b_std)
  else:
    kernel = lambda p, a, b: ntk.empirical_ntk(f, p, a, b)
  loss_fn = lambda p, x_, y_: 0.5 * jnp.mean((f(p, x_) - y_) ** 2)
  scale = _kernel_scale(config)

  def train(key, hp):
    params = relu_net.init(key, x.shape[1], width, parameterization=m.parameterization,
                           w_std=m.w_std, b_std=m.b_std, dtype=x.dtype)
    theta0 = kernel(params, x, x)

    def metrics_fn(p):
      drift = jnp.linalg.norm(kernel(p, x, x) - theta0) / jnp.linalg.norm(theta0)
      return {"f_train": f(p, x), "f_test": f(p, xt), "loss": loss_fn(p, x, y),
              "test_loss": loss_fn(p, xt, yt), "drift": drift}

    state, logged = engine.trajectory(
        params, loss_fn=loss_fn, data=(x, y),
        optimizer=engine.make_optimizer("sgd", hp["lr"] * scale),
        metrics_fn=metrics_fn, num_steps=config.train.num_steps,
        log_every=config.train.log_every)
    return {**logged, "theta0": theta0 * scale,
            "theta0_test": kernel(params, xt, x) * scale,
            "diverged_at": state.diverged_at}

  return train


def _linearised(config, k, k_test, out):
  """Per seed, the linear model on kernel `k` (`[S, n, n]` or `[n, n]`) from
  the seed's outputs at init: `(f_train [S, L, n], f_test [S, L, n_test])`."""
  x, y, _, _ = make_task(config)
  steps, _ = logged_times(config)
  per_seed = np.ndim(k) == 3
  lin = [ntk.gradient_descent_mse(k[s] if per_seed else k, y, config.train.lr, steps,
                                  out["f_train"][s, 0], k_test[s] if per_seed else k_test,
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
  w, b = config.model.w_std, config.model.b_std
  k_ana, k_ana_test = ntk.relu_ntk(x, x, w, b), ntk.relu_ntk(xt, x, w, b)
  ana_train, ana_test = _linearised(config, k_ana, k_ana_test, out)
  dist = lambda f, g: np.max(np.linalg.norm(f - g, axis=-1), -1) / np.linalg.norm(y)
  per_seed = {
      "kernel_gap": np.linalg.norm(out["theta0"] - k_ana, axis=(1, 2)) / np.linalg.norm(k_ana),
      "drift": np.max(out["drift"], 1),
      "dist_train_emp": dist(out["f_train"], pred["f_train"]),
      "dist_test_emp": dist(out["f_test"], pred["f_test"]),
      "dist_train_ana": dist(out["f_train"], ana_train),
      "dist_test_ana": dist(out["f_test"], ana_test)}
  stats = {k: metrics.seed_stats(v) for k, v in per_seed.items()}
  return {"width": int(config.model.width),
          "parameterization": config.model.parameterization,
          **{k: float(s["mean"]) for k, s in stats.items()},
          **{f"{k}_std": float(s["std"]) for k, s in stats.items()}}


def text(config, summary: dict) -> str:
  return "  " + ", ".join(f"{k} {summary[k]:.3e}" for k in FIGURES)


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


def _by_width(points):
  rows = sorted((p.summary for p in points if "drift" in p.summary), key=lambda s: s["width"])
  return np.array([r["width"] for r in rows]), rows


def sweep_summary(config, points) -> dict:
  """Log-log slopes against width of every figure (NTK regime: -0.5 each)."""
  widths, rows = _by_width(points)
  parameterizations = {r["parameterization"] for r in rows}
  return {"slopes": {k: _slope(widths, [r[k] for r in rows]) for k in FIGURES},
          "predicted_slope": None if "mean_field" in parameterizations else -0.5}


def sweep_text(config, summary: dict) -> str:
  slopes = summary["slopes"]
  line = " ".join(f"{k} {'-' if v is None else f'{v:.3f}'}" for k, v in slopes.items())
  pred = summary["predicted_slope"]
  return ("log-log slope against width: " + line + "\n" +
          ("NTK regime predicts slope -0.5 for each" if pred is not None else
           "mean_field: no NTK limit; the kernel moves by O(1)"))


def sweep_plot(config, points, summary, path) -> None:
  """Gap, drift and distance to the linearisation against width, with the
  width^-1/2 of the NTK regime."""
  widths, rows = _by_width(points)
  fig, (ax,) = plots.figure(1, size=(6.5, 4.6))
  for i, (k, label) in enumerate((("kernel_gap", "NTK gap at init"),
                                  ("drift", "kernel drift (max over t)"),
                                  ("dist_test_emp", "||f - f_lin|| / ||y||, test"))):
    slope = summary["slopes"][k]
    ax.errorbar(widths, [r[k] for r in rows], yerr=[r[f"{k}_std"] for r in rows],
                fmt="o-", color=f"C{i}",
                label=f"{label}: slope {'-' if slope is None else f'{slope:.2f}'}")
  if len(rows):
    ref = rows[0]["drift"]
    ax.plot(widths, ref * (widths / widths[0]) ** -0.5, "k--", lw=1, label="width^-1/2")
  ax.set(xscale="log", yscale="log", xlabel="width m",
         title=f"{config.model.parameterization} parameterization, seed mean +- std")
  ax.legend(fontsize=8)
  plots.save(fig, path)
