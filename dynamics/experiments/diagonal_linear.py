"""Sparse regression with a diagonal linear network, from the kernel regime
to the rich one (Woodworth et al. 2020).

A grid point is one init scale `model.alpha` (and lr). Each seed draws its
own problem: `task.num_train` Gaussian measurements of a `task.sparsity`-sparse
`beta*` in `task.d` dimensions (non-zeros +-1, noiseless), and
`task.num_test` test inputs. The network `f(x) = <u*u - v*v, x>` starts at
`u = v = alpha` and trains by full-batch gradient descent on the loss of
`docs/conventions.md`. Logged: train and test loss, and the learned `beta`.

Theory (`interpolators`, used by the summary): the interpolator gradient flow reaches,
`theory.diagonal_linear.implicit_bias_solution(x, y, alpha)`, per seed, and
the two limits (`min_l1_solution`, `min_l2_solution`). The summary gives the
learned `beta`'s distance to each, relative to `||beta*||`, the test error,
and the same for the predicted interpolator; across alpha the sweep draws the
phase diagram: rich (near l1, low test error) at small alpha, lazy (near l2)
at large alpha, the simulation as points on the theory's lines.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dynamics import config as cfg
from dynamics import make_optimizer, metrics, plots, trajectory
from dynamics.models import diagonal_linear as dln
from theory import diagonal_linear as td

HPARAMS = {"model.alpha": "alpha", "train.lr": "lr"}
CONSTANTS = ("x", "y", "beta_star", "x_test")
TABLE = ("loss", "test_loss")


def validate(config) -> None:
  cfg.positive(config, "model.alpha")
  cfg.integer(config, "task.d")
  cfg.integer(config, "task.num_train")
  cfg.integer(config, "task.num_test")
  cfg.integer(config, "task.sparsity")
  if config.task.num_train > config.task.d:
    raise ValueError(f"`task.num_train` ({config.task.num_train}) must be at most `task.d` "
                     f"({config.task.d}): the network interpolates an underdetermined problem.")
  if config.task.sparsity > config.task.d:
    raise ValueError(f"`task.sparsity` must be at most `task.d`, got {config.task.sparsity}.")
  cfg.schedule(config)


def make_train(config):
  t = config.task
  dtype = cfg.float_dtype(config.precision)

  def train(key, hp):
    k_x, k_s, k_sign, k_t = jax.random.split(key, 4)
    x = jax.random.normal(k_x, (t.num_train, t.d), dtype)
    support = jax.random.permutation(k_s, t.d)[:t.sparsity]
    signs = jnp.where(jax.random.bernoulli(k_sign, 0.5, (t.sparsity,)), 1.0, -1.0)
    beta_star = jnp.zeros(t.d, dtype).at[support].set(signs.astype(dtype))
    y = x @ beta_star
    x_test = jax.random.normal(k_t, (t.num_test, t.d), dtype)
    y_test = x_test @ beta_star
    loss = lambda p, x_, y_: 0.5 * jnp.mean((dln.apply(p, x_) - y_) ** 2)
    state, logged = trajectory(
        dln.init(t.d, hp["alpha"], dtype), loss_fn=loss, data=(x, y),
        optimizer=make_optimizer("sgd", hp["lr"]),
        metrics_fn=lambda p: {"loss": loss(p, x, y), "test_loss": loss(p, x_test, y_test),
                              "beta": dln.beta(p)},
        num_steps=config.train.num_steps, log_every=config.train.log_every)
    return {**logged, "x": x, "y": y, "beta_star": beta_star, "x_test": x_test,
            "diverged_at": state.diverged_at}

  return train


def interpolators(config, out: dict) -> dict:
  """Per seed: the predicted interpolator and the l1 and l2 ones, `[S, d]`
  (limits as t -> infinity, so not a table column beside a trajectory)."""
  alpha = float(config.model.alpha)
  xs, ys = np.asarray(out["x"], np.float64), np.asarray(out["y"], np.float64)
  return {"beta_pred": np.stack([td.implicit_bias_solution(x, y, alpha) for x, y in zip(xs, ys)]),
          "beta_l1": np.stack([td.min_l1_solution(x, y) for x, y in zip(xs, ys)]),
          "beta_l2": np.stack([td.min_l2_solution(x, y) for x, y in zip(xs, ys)])}


def summarize(config, out: dict, _pred: dict) -> dict:
  """Seed means: distances (relative to `||beta*||`) of the learned and the
  predicted `beta` to the prediction, the l1 and the l2 interpolators, and
  their test errors `||beta - beta*||^2 / ||beta*||^2` (the test loss for
  isotropic inputs, up to 1/2)."""
  pred = interpolators(config, out)
  star = np.asarray(out["beta_star"], np.float64)
  learned = np.asarray(out["beta"], np.float64)[:, -1]
  norm = np.linalg.norm(star, axis=-1)
  dist = lambda a, b: np.linalg.norm(a - b, axis=-1) / norm
  per_seed = {
      "to_prediction": dist(learned, pred["beta_pred"]),
      "to_l1": dist(learned, pred["beta_l1"]), "to_l2": dist(learned, pred["beta_l2"]),
      "pred_to_l1": dist(pred["beta_pred"], pred["beta_l1"]),
      "pred_to_l2": dist(pred["beta_pred"], pred["beta_l2"]),
      "test_error": dist(learned, star) ** 2, "pred_test_error": dist(pred["beta_pred"], star) ** 2,
      "final_loss": np.asarray(out["loss"], np.float64)[:, -1]}
  return {"alpha": float(config.model.alpha), "lr": float(config.train.lr),
          **{k: float(metrics.seed_stats(v)["mean"]) for k, v in per_seed.items()}}


def text(config, summary: dict) -> str:
  return ("  " + ", ".join(f"{k} {summary[k]:.3g}" for k in
                           ("to_prediction", "to_l1", "to_l2", "test_error", "final_loss")))


def plot(config, out, _pred, summary, path) -> None:
  """Learned `beta` (every seed's coordinates) against the predicted one."""
  pred = interpolators(config, out)
  fig, (ax,) = plots.figure(1)
  learned = np.asarray(out["beta"])[:, -1].ravel()
  predicted = np.asarray(pred["beta_pred"]).ravel()
  ax.plot(predicted, learned, "o", ms=3, alpha=0.6, label="every seed's coordinates")
  lim = [min(predicted.min(), learned.min()), max(predicted.max(), learned.max())]
  ax.plot(lim, lim, "k--", lw=1, label="y = x")
  ax.set(xlabel="predicted beta (implicit_bias_solution)", ylabel="learned beta",
         title=f"alpha {config.model.alpha:g}: relative gap {summary['to_prediction']:.2g}")
  ax.legend(fontsize=8)
  plots.save(fig, path)


def sweep_summary(config, points) -> dict:
  rows = sorted((p.summary for p in points), key=lambda r: (r["lr"], r["alpha"]))
  return {"worst_to_prediction": max((r["to_prediction"] for r in rows), default=None),
          "alpha": [r["alpha"] for r in rows]}


def sweep_text(config, summary: dict) -> str:
  return (f"worst relative gap between the learned and the predicted beta: "
          f"{summary['worst_to_prediction']:.3g}")


def sweep_plot(config, points, summary, path) -> None:
  """The phase diagram: distance to the l1 and l2 interpolators and test
  error against alpha, simulation as points on the theory's lines."""
  fig, (ax, ax_err) = plots.figure(2)
  for lr in sorted({p.summary["lr"] for p in points}):
    rows = sorted((p.summary for p in points if p.summary["lr"] == lr), key=lambda r: r["alpha"])
    a = [r["alpha"] for r in rows]
    for key, color, label in (("l1", "C0", "to the min-l1 interpolator"),
                              ("l2", "C1", "to the min-l2 interpolator")):
      ax.plot(a, [r[f"pred_to_{key}"] for r in rows], "-", color=color, label=f"theory, {label}")
      ax.plot(a, [r[f"to_{key}"] for r in rows], "o", color=color, label=f"network (lr {lr:g})")
    ax_err.plot(a, [r["pred_test_error"] for r in rows], "k-", label="theory")
    ax_err.plot(a, [r["test_error"] for r in rows], "o", color="C2", label=f"network (lr {lr:g})")
  ax.set(xscale="log", yscale="log", xlabel="init scale alpha",
         ylabel="||beta - beta_interp|| / ||beta*||", title="rich (small alpha) to lazy (large)")
  ax_err.set(xscale="log", xlabel="init scale alpha", ylabel="||beta - beta*||^2 / ||beta*||^2",
             title="test error")
  ax.legend(fontsize=7)
  ax_err.legend(fontsize=7)
  plots.save(fig, path)
