"""Gradient descent on a separable quadratic, against its exact solution.

The smallest complete experiment, written only against the public API
(docs/experiments.md walks through it). The loss is

    L(w) = (1/2) sum_i a_i (w_i - 1)^2,   a = linspace(0.5, 2, dim),

and gradient descent with step lr contracts each coordinate's distance to the
minimum by (1 - lr a_i) per step, so after k = t / lr steps

    w_i(k) = 1 + (w_i(0) - 1) (1 - lr a_i)^k,

exact (not the flow `exp(-a_i t)`, which it approaches as lr -> 0).
"""

import jax
import jax.numpy as jnp

from dynamics import config as cfg


def setup(config):
  cfg.integer(config, "dim")
  return {"a": jnp.linspace(0.5, 2.0, config.dim)}


def init(config, key, data):
  return {"params": jax.random.normal(key, data["a"].shape)}


def loss(config, state, data, key):
  return 0.5 * jnp.sum(data["a"] * (state["params"] - 1.0) ** 2)


def observe(config, state, data):
  return {"loss": loss(config, state, data, None), "w": state["params"]}


def theory(config, data, start, t):
  """One seed's exact trajectory from its own start `w(0)`."""
  lr, a = config.train.lr, data["a"]
  w = 1.0 + (start["w"] - 1.0) * (1.0 - lr * a) ** (t / lr)[:, None]
  return {"w": w, "loss": 0.5 * jnp.sum(a * (w - 1.0) ** 2, -1)}
