"""Gradient descent on a separable quadratic, against its exact solution.

The smallest complete experiment, written only against the public API
(docs/experiments.md walks through it). The loss is

    L(w) = (1/2) sum_i a_i (w_i - 1)^2,   a = linspace(0.5, 2, dim),

and gradient descent with step lr contracts each coordinate's distance to the
minimum by (1 - lr a_i) per step, so after k steps

    w_i(k) = 1 + (w_i(0) - 1) (1 - lr a_i)^k,

exact (not the flow `exp(-a_i t)`, which it approaches as lr -> 0 at t = lr k).
"""

import jax
import jax.numpy as jnp
import numpy as np

from dynamics import config as cfg
from dynamics import logged_times, make_optimizer, metrics, trajectory

HPARAMS = {"train.lr": "lr"}  # stacked: every lr of a grid runs in one compiled call


def validate(config):
  cfg.integer(config, "dim")
  cfg.schedule(config)  # train.lr > 0, num_steps a multiple of log_every


def curvatures(config):
  return np.linspace(0.5, 2.0, config.dim)


def make_train(config):
  a = jnp.asarray(curvatures(config), jnp.float32)
  target = jnp.ones(config.dim)
  loss = lambda w, target: 0.5 * jnp.sum(a * (w - target) ** 2)

  def train(key, hp):
    w0 = jax.random.normal(key, (config.dim,))
    state, logged = trajectory(
        w0, loss_fn=loss, data=(target,), optimizer=make_optimizer("sgd", hp["lr"]),
        metrics_fn=lambda w: {"loss": loss(w, target), "w": w},
        num_steps=config.train.num_steps, log_every=config.train.log_every)
    return {**logged, "diverged_at": state.diverged_at}

  return train


def theory(config, out):
  """Every seed's exact trajectory from its own start `out["w"][:, 0]`."""
  a = curvatures(config)
  k, _ = logged_times(config)  # the logged steps 0, log_every, ..., num_steps
  w = 1.0 + (out["w"][:, :1] - 1.0) * (1.0 - config.train.lr * a) ** k[None, :, None]
  return {"w": w, "loss": 0.5 * np.sum(a * (w - 1.0) ** 2, -1)}


def summarize(config, out, pred):
  cmp = metrics.compare(out["loss"], pred["loss"])
  return {"loss_max_rel_error": float(np.max(cmp["max_rel_error"])),
          "w_max_abs_error": float(np.max(np.abs(out["w"] - pred["w"])))}
