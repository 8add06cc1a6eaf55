"""Sparse regression with a diagonal linear network, from the kernel regime
to the rich one (Woodworth et al. 2020).

A grid point is one init scale `model.alpha` (and lr). Each seed draws its
own problem in `init`: `task.num_train` Gaussian measurements of a
`task.sparsity`-sparse `beta*` in `task.d` dimensions (non-zeros +-1,
noiseless) and `task.num_test` test inputs. The network
`f(x) = <u*u - v*v, x>` starts at `u = v = alpha` and trains by full-batch
gradient descent on the loss of docs/conventions.md. Logged: train and test
loss and the learned `beta`.

Theory, per seed, on that seed's own measurements: the interpolator gradient
flow reaches, `theory.diagonal_linear.implicit_bias_solution(x, y, alpha)`
(`beta_pred`), and the two limits (`beta_l1`, `beta_l2`). The report gives the
learned `beta`'s distance to each, relative to `||beta*||`, the test errors,
and across alpha the phase diagram: rich (near l1, low test error) at small
alpha, lazy (near l2) at large alpha, the simulation as points on the
theory's lines.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dynamics import config as cfg
from dynamics import metrics, plots
from dynamics.models import diagonal_linear as dln
from theory import diagonal_linear as td


def setup(config) -> dict:
  cfg.positive(config, "model.alpha")
  d = cfg.integer(config, "task.d")
  n = cfg.integer(config, "task.num_train")
  cfg.integer(config, "task.num_test")
  if n > d:
    cfg.fail("task.num_train", f"({n}) must be at most task.d ({d}): the network "
             "interpolates an underdetermined problem.")
  if cfg.integer(config, "task.sparsity") > d:
    cfg.fail("task.sparsity", f"must be at most task.d ({d}), got {config.task.sparsity}.")
  return {}


def init(config, key, data) -> dict:
  """The seed's own problem (its constants) and `u = v = alpha`."""
  t = config.task
  k_x, k_s, k_sign, k_t = jax.random.split(key, 4)
  x = jax.random.normal(k_x, (t.num_train, t.d))
  support = jax.random.permutation(k_s, t.d)[:t.sparsity]
  signs = jnp.where(jax.random.bernoulli(k_sign, 0.5, (t.sparsity,)), 1.0, -1.0)
  beta_star = jnp.zeros(t.d, x.dtype).at[support].set(signs.astype(x.dtype))
  x_test = jax.random.normal(k_t, (t.num_test, t.d))
  return {"params": dln.init(t.d, config.model.alpha, x.dtype), "x": x, "y": x @ beta_star,
          "beta_star": beta_star, "x_test": x_test}


def loss(config, state, data, key):
  """`(1/2n) ||X beta - y||^2` (docs/conventions.md)."""
  return 0.5 * jnp.mean((dln.apply(state["params"], state["x"]) - state["y"]) ** 2)


def observe(config, state, data) -> dict:
  y_test = state["x_test"] @ state["beta_star"]
  return {"loss": loss(config, state, data, None),
          "test_loss": 0.5 * jnp.mean((dln.apply(state["params"], state["x_test"]) - y_test) ** 2),
          "beta": dln.beta(state["params"])}


def theory(config, data, start, t) -> dict:
  """The interpolators, from the seed's own measurements: gradient flow's
  (`beta_pred`), the minimum-l1 and the minimum-l2 ones (limits as t -> inf)."""
  x, y = np.asarray(start["x"]), np.asarray(start["y"])
  return {"beta_pred": td.implicit_bias_solution(x, y, float(config.model.alpha)),
          "beta_l1": td.min_l1_solution(x, y), "beta_l2": td.min_l2_solution(x, y)}


def _point(r) -> dict:
  """Seed means: distances (relative to `||beta*||`) of the learned and the
  predicted `beta` to the prediction and to the l1 and l2 interpolators, and
  their test errors `||beta - beta*||^2 / ||beta*||^2` (the test loss for
  isotropic inputs, up to 1/2)."""
  kept, pred = r.traj.kept, r.pred
  star = np.asarray(r.traj.start["beta_star"], np.float64)[kept]
  learned = np.asarray(r.traj.logged["beta"], np.float64)[kept, -1]
  dist = lambda a, b: np.linalg.norm(a - b, axis=-1) / np.linalg.norm(star, axis=-1)
  p, l1, l2 = (pred[k][kept] for k in ("beta_pred", "beta_l1", "beta_l2"))
  per_seed = {"to_prediction": dist(learned, p), "to_l1": dist(learned, l1),
              "to_l2": dist(learned, l2), "pred_to_l1": dist(p, l1), "pred_to_l2": dist(p, l2),
              "test_error": dist(learned, star) ** 2, "pred_test_error": dist(p, star) ** 2,
              "final_loss": np.asarray(r.traj.logged["loss"], np.float64)[kept, -1]}
  return {"alpha": float(r.config.model.alpha), "lr": float(r.config.train.lr),
          **{k: float(metrics.seed_stats(v)["mean"]) for k, v in per_seed.items()}}


def report(config, results) -> dict:
  """Per point the distances and test errors; across alpha the phase diagram."""
  rows = [_point(r) if r.traj.kept.any() else {} for r in results]
  done = [r for r in rows if r]
  fig, (ax, ax_err) = plots.figure(2)
  for lr in sorted({r["lr"] for r in done}):
    pts = sorted((r for r in done if r["lr"] == lr), key=lambda r: r["alpha"])
    a = [r["alpha"] for r in pts]
    for key, color, label in (("l1", "C0", "to the min-l1 interpolator"),
                              ("l2", "C1", "to the min-l2 interpolator")):
      ax.plot(a, [r[f"pred_to_{key}"] for r in pts], "-", color=color, label=f"theory, {label}")
      ax.plot(a, [r[f"to_{key}"] for r in pts], "o", color=color, label=f"network (lr {lr:g})")
    ax_err.plot(a, [r["pred_test_error"] for r in pts], "k-", label="theory")
    ax_err.plot(a, [r["test_error"] for r in pts], "o", color="C2", label=f"network (lr {lr:g})")
  ax.set(xscale="log", yscale="log", xlabel="init scale alpha",
         ylabel="||beta - beta_interp|| / ||beta*||", title="rich (small alpha) to lazy (large)")
  ax_err.set(xscale="log", xlabel="init scale alpha", ylabel="||beta - beta*||^2 / ||beta*||^2",
             title="test error")
  ax.legend(fontsize=7)
  ax_err.legend(fontsize=7)
  worst = max((r["to_prediction"] for r in done), default=None)
  return {"points": rows, "figure": fig, "worst_to_prediction": worst}
