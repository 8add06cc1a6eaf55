"""Lazy training by output scaling (Chizat, Oyallon & Bach 2019), with a Flax MLP.

`alpha (f(w, x) - f(w0, x))` (`dynamics.models.centered`) trained with step `lr / alpha^2`
follows its linearization at init (`theory.ntk.linearized`: the kernel predictor of the
seed's empirical NTK) with a gap falling like 1/alpha; the report fits the slope."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from dynamics import plots
from dynamics.models import centered
from theory import ntk


class MLP(nn.Module):
  width: int

  @nn.compact
  def __call__(self, x):
    for _ in range(2):
      x = jnp.tanh(nn.Dense(self.width)(x))
    return nn.Dense(1)(x)[..., 0]


def setup(config):
  n, d = config.task.n, config.task.d
  x = jax.random.normal(jax.random.PRNGKey(config.task.seed), (2 * n, d))
  return {"x": x[:n], "y": jnp.sin(2 * x[:n, 0]) * x[:n, 1], "x_test": x[n:]}


def init(config, key, data):
  params = MLP(config.model.width).init(key, data["x"])
  return {"params": params, "params0": params, "lr_scale": config.model.alpha ** -2.0}


def model(config, state):
  return centered(MLP(config.model.width).apply, state["params0"], config.model.alpha)


def loss(config, state, data, key):
  return 0.5 * jnp.mean((model(config, state)(state["params"], data["x"]) - data["y"]) ** 2)


def observe(config, state, data):
  f = model(config, state)(state["params"], data["x_test"])
  return {"loss": loss(config, state, data, None), "f_test": f}


def theory(config, data, start, t):
  """The seed's model linearized at its init, trained with the same steps."""
  lin = ntk.linearized(model(config, start), start["params0"], data["x"], data["y"],
                       data["x_test"], lr=config.train.lr / config.model.alpha ** 2)(t)
  return {"loss": lin["loss"], "f_test": lin["f_test"]}


def report(config, results):
  fig, slopes = plots.against(results, x="model.alpha", y="f_test.rel_error_mean",
                              by="train.lr", loglog=True)
  return {"figure": fig, "slope_by_lr": slopes}
