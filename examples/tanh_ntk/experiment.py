"""A tanh MLP against its own linearization (docs/experiments.md walks through it).

Each seed's theory is its network linearised around its init: gradient descent on
the empirical NTK `K` of that init, `f_lin(k) = y + (I - lr K/n)^k (f0 - y)`
(`theory.ntk.linearized`, exact for the linear model). The distance to it falls at
least like 1/sqrt(width) (Lee et al. 2019), like 1/width for a smooth activation
(docs/ntk.md); the report fits the slope.
"""

import jax
import jax.numpy as jnp

from dynamics import config as cfg
from dynamics import plots
from dynamics.models import mlp
from theory import ntk


def setup(config):
  """Inputs on the sphere of radius sqrt(d), target y = x_0 x_1 (from the task seed)."""
  cfg.integer(config, "model.width"), cfg.integer(config, "model.depth")
  n, d = cfg.integer(config, "task.n"), cfg.integer(config, "task.d", minimum=2)
  x = jax.random.normal(jax.random.PRNGKey(config.task.seed), (n + 8, d))
  x = x * jnp.sqrt(d) / jnp.linalg.norm(x, axis=1, keepdims=True)
  return {"x": x[:n], "y": x[:n, 0] * x[:n, 1], "x_test": x[n:]}


def apply(params, x):
  return mlp.apply(params, x, activation="tanh")


def init(config, key, data):
  return {"params": mlp.init(key, config.task.d, (config.model.width,) * config.model.depth)}


def loss(config, state, data, key):
  return 0.5 * jnp.mean((apply(state["params"], data["x"]) - data["y"]) ** 2)


def observe(config, state, data):
  return {"loss": loss(config, state, data, None), "f_test": apply(state["params"], data["x_test"])}


def theory(config, data, start, t):
  """This seed's linearization, from its own initial parameters."""
  lin = ntk.linearized(apply, start["params"], data["x"], data["y"], data["x_test"],
                       lr=config.train.lr)(t)
  return {"loss": lin["loss"], "f_test": lin["f_test"]}


def report(config, results):
  """Distance to the linearization (seed mean) against width, one line per lr."""
  fig, slopes = plots.against(results, x="model.width", y="f_test.rel_error_mean",
                              by="train.lr", loglog=True)
  return {"figure": fig, "slope_by_lr": slopes}
