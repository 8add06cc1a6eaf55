"""Two-layer ReLU networks of growing width against their linearisation (NTK).

For every width in `config.model.widths` the seeds train in one compiled call
(one compilation per width) by full-batch gradient descent on a fixed teacher
on the sphere. Recorded per seed: outputs on train and test points, the loss,
and the relative kernel drift `||Theta_t - Theta_0||_F / ||Theta_0||_F` on the
training points. Beside them:
  * the linearised network, `theory.ntk.gradient_descent_mse` with the same
    `lr` and steps (so no O(lr) discretisation gap), on the empirical NTK at
    init and on the analytic `relu_ntk`;
  * the Monte-Carlo gap `||Theta_0 - relu_ntk||_F / ||relu_ntk||_F`.
The NTK regime predicts gap, drift and distance to the linearisation all
falling as `width^(-1/2)` (Jacot et al. 2018; Lee et al. 2019). In the
`'mean_field'` parameterization the NTK is `O(1/m)`: the run trains with
`lr * m` (the same function-space time) and the kernel moves by O(1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dynamics import config as cfg
from dynamics import metrics
from dynamics import train as engine
from dynamics.models import relu_net
from dynamics.tasks.sphere_teacher import sphere_teacher
from theory import ntk

HPARAMS = {"train.lr": "lr"}


def validate(config) -> None:
  cfg.integer(config, "seed", minimum=0)
  cfg.integer(config, "num_seeds")
  cfg.one_of(config, "precision", cfg.PRECISIONS)
  widths = cfg.numbers(config, "model.widths", minimum=1)
  if any(not float(w).is_integer() for w in widths):
    cfg.fail("model.widths", f"must hold integers, got {widths}.")
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


def hparams(config) -> dict:
  return {"lr": jnp.asarray(config.train.lr, cfg.float_dtype(config.precision))}


def make_task(config):
  """Inputs uniform on the sphere of radius sqrt(d) (`x.x/d = 1`), labels from
  a fixed random two-layer ReLU teacher scaled to unit variance."""
  t = config.task
  x, y = sphere_teacher(jax.random.PRNGKey(t.seed), d=t.d,
                        num_samples=t.num_train + t.num_test,
                        teacher_width=t.teacher_width,
                        dtype=cfg.float_dtype(config.precision))
  return x[:t.num_train], y[:t.num_train], x[t.num_train:], y[t.num_train:]


def _kernel_scale(config, width):
  """The NTK of 'mean_field' is O(1/m); m x it is the NTK-normalised kernel."""
  return width if config.model.parameterization == "mean_field" else 1


def make_train(config, width: int, progress=None):
  """`train(key, hp)` for one width: outputs, loss, drift, kernels at init."""
  m = config.model
  x, y, xt, _ = make_task(config)
  f = lambda p, x_: relu_net.apply(p, x_, parameterization=m.parameterization,
                                   w_std=m.w_std, b_std=m.b_std)
  if m.parameterization == "ntk":
    kernel = lambda p, a, b: ntk.relu_empirical_ntk(p, a, b, m.w_std, m.b_std)
  else:
    kernel = lambda p, a, b: ntk.empirical_ntk(f, p, a, b)
  loss_fn = lambda p, x_, y_: 0.5 * jnp.mean((f(p, x_) - y_) ** 2)
  scale = _kernel_scale(config, width)

  def train(key, hp):
    params = relu_net.init(key, x.shape[1], width, parameterization=m.parameterization,
                           w_std=m.w_std, b_std=m.b_std, dtype=x.dtype)
    theta0 = kernel(params, x, x)

    def metrics_fn(p):
      drift = jnp.linalg.norm(kernel(p, x, x) - theta0) / jnp.linalg.norm(theta0)
      return {"f_train": f(p, x), "f_test": f(p, xt), "loss": loss_fn(p, x, y),
              "drift": drift}

    state, logged = engine.trajectory(
        params, loss_fn=loss_fn, data=(x, y),
        optimizer=engine.make_optimizer("sgd", hp["lr"] * scale),
        metrics_fn=metrics_fn, num_steps=config.train.num_steps,
        log_every=config.train.log_every, progress=progress)
    return {**logged, "theta0": theta0 * scale,
            "theta0_test": kernel(params, xt, x) * scale,
            "diverged_at": state.diverged_at}

  return train


def total_steps(config) -> int:
  """Steps over every width, for the progress bar."""
  return config.train.num_steps * len(config.model.widths)


def _slope(widths, values) -> float:
  """Least-squares slope of log(value) against log(width)."""
  ok = np.isfinite(values) & (values > 0)
  return float(np.polyfit(np.log(widths[ok]), np.log(values[ok]), 1)[0])


def run(config, progress=None) -> dict:
  validate(config)
  x, y, xt, yt = make_task(config)
  steps = np.arange(0, config.train.num_steps + 1, config.train.log_every)
  lr = config.train.lr
  k_ana, k_ana_test = ntk.relu_ntk(x, x, config.model.w_std, config.model.b_std), \
      ntk.relu_ntk(xt, x, config.model.w_std, config.model.b_std)
  widths = np.array([int(w) for w in config.model.widths])
  keys = engine.seed_keys(config.seed, config.num_seeds)
  rows, per_width = {}, []
  for i, width in enumerate(widths):
    offset = i * config.train.num_steps
    step_of = None if progress is None else (lambda s, o=offset: progress(o + s))
    out = jax.tree_util.tree_map(np.asarray, engine.run_seeds(
        make_train(config, int(width), step_of), keys, hparams(config)))
    lin = lambda k, kt, s: ntk.gradient_descent_mse(
        k, y, lr, steps, out["f_train"][s, 0], kt, out["f_test"][s, 0])
    emp = [lin(out["theta0"][s], out["theta0_test"][s], s) for s in range(len(keys))]
    ana = [lin(k_ana, k_ana_test, s) for s in range(len(keys))]
    dist = lambda f, g: np.linalg.norm(f - np.asarray(g), axis=-1) / np.linalg.norm(y)
    w_rows = {
        "dist_train_emp": np.stack([dist(out["f_train"][s], e[0]) for s, e in enumerate(emp)]),
        "dist_test_emp": np.stack([dist(out["f_test"][s], e[1]) for s, e in enumerate(emp)]),
        "dist_train_ana": np.stack([dist(out["f_train"][s], a[0]) for s, a in enumerate(ana)]),
        "dist_test_ana": np.stack([dist(out["f_test"][s], a[1]) for s, a in enumerate(ana)]),
        "loss": out["loss"], "drift": out["drift"],
        "loss_pred": np.stack([0.5 * np.mean((np.asarray(e[0]) - y) ** 2, -1) for e in emp]),
        "test_loss": 0.5 * np.mean((out["f_test"] - np.asarray(yt)) ** 2, -1),
        "row_width": np.full(len(keys), width),
        "row_seed": np.arange(len(keys))}
    gap = np.linalg.norm(out["theta0"] - k_ana, axis=(1, 2)) / np.linalg.norm(k_ana)
    per_width.append({
        "width": int(width), "kernel_gap": metrics.seed_stats(gap),
        **{k: metrics.seed_stats(np.max(w_rows[k], axis=1))
           for k in ("drift", "dist_train_emp", "dist_test_emp",
                     "dist_train_ana", "dist_test_ana")}})
    for k, v in w_rows.items():
      rows.setdefault(k, []).append(v)
    if width == widths[-1]:
      widest = {"out": out, "emp": emp}
  arrays = {k: np.concatenate(v) for k, v in rows.items()}
  arrays.update({"step": steps, "t": lr * steps, "widths": widths})
  names = ("kernel_gap", "drift", "dist_train_emp", "dist_test_emp",
           "dist_train_ana", "dist_test_ana")
  means = {k: np.array([float(r[k]["mean"]) for r in per_width]) for k in names}
  summary = {
      "parameterization": config.model.parameterization,
      "num_seeds": int(config.num_seeds),
      "widths": [{"width": r["width"], **{k: float(r[k]["mean"]) for k in names},
                  **{f"{k}_std": float(r[k]["std"]) for k in names}} for r in per_width],
      "slopes": {k: _slope(widths, means[k]) for k in names},
      "predicted_slope": -0.5 if config.model.parameterization != "mean_field" else None}
  return {"arrays": arrays, "summary": summary, "table": table(summary),
          "plot": lambda path: plot(config, arrays, summary, widest, path)}


def table(summary: dict) -> str:
  cols = ("kernel_gap", "drift", "dist_train_emp", "dist_test_emp", "dist_test_ana")
  head = f"{'width':>7} " + " ".join(f"{c:>15}" for c in cols)
  lines = [f"parameterization: {summary['parameterization']} "
           f"({summary['num_seeds']} seeds; drift and distances: max over training, "
           "distances relative to ||y||)", head, "-" * len(head)]
  for r in summary["widths"]:
    lines.append(f"{r['width']:>7} " + " ".join(f"{r[c]:>15.3e}" for c in cols))
  lines.append(f"{'slope':>7} " + " ".join(f"{summary['slopes'][c]:>15.3f}" for c in cols))
  pred = summary["predicted_slope"]
  lines.append("NTK regime predicts slope -0.5 for each" if pred is not None else
               "mean_field: no NTK limit; the kernel moves by O(1)")
  return "\n".join(lines)


def plot(config, arrays, summary, widest, path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  widths = np.array([r["width"] for r in summary["widths"]])
  fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
  for i, (k, label) in enumerate((("kernel_gap", "NTK gap at init"),
                                  ("drift", "kernel drift (max over t)"),
                                  ("dist_test_emp", "||f - f_lin|| / ||y||, test"))):
    mean = np.array([r[k] for r in summary["widths"]])
    std = np.array([r[f"{k}_std"] for r in summary["widths"]])
    ax.errorbar(widths, mean, yerr=std, fmt="o-", color=f"C{i}",
                label=f"{label}: slope {summary['slopes'][k]:.2f}")
  ref = np.array([r["drift"] for r in summary["widths"]])[0]
  ax.loglog(widths, ref * (widths / widths[0]) ** -0.5, "k--", lw=1, label="width^-1/2")
  ax.set(xscale="log", yscale="log", xlabel="width m",
         title=f"{config.model.parameterization} parameterization")
  ax.legend(fontsize=8)
  t = config.train.lr * np.arange(0, config.train.num_steps + 1, config.train.log_every)
  loss = widest["out"]["loss"]
  ax2.loglog(t[1:], loss[:, 1:].T, color="C0", alpha=0.3, lw=0.8)
  ax2.loglog(t[1:], loss[:, 1:].mean(0), color="C0", lw=2, label=f"network, width {widths[-1]}")
  y = make_task(config)[1]
  lin = np.stack([0.5 * np.mean((np.asarray(e[0]) - np.asarray(y)) ** 2, -1)
                  for e in widest["emp"]])
  ax2.loglog(t[1:], lin[:, 1:].mean(0), "k--", lw=1.5, label="linearised (empirical NTK)")
  ax2.set(xlabel="t = lr x steps", ylabel="training loss", title="widest network")
  ax2.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
