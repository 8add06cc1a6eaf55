"""A tiny experiment for the engine's tests: gradient descent on a separable
quadratic `L(w) = 1/2 sum_i a_i (w_i - 1)^2`, with optional noise drawn from
the step key (to see which keys a step gets), an optional per-seed step
scale, and an init that can ignore the key (so seeds differ only by their
batches)."""

import jax
import jax.numpy as jnp
import ml_collections

from dynamics import config as cfg


def get_config(arg=None):
  config = ml_collections.ConfigDict()
  config.experiment = __file__  # this file is the experiment too
  config.seed, config.num_seeds, config.precision = 0, 3, "float32"
  config.dim = 3
  config.noise = 0.0        # std of a key-driven term added to the gradient
  config.random_init = True
  config.lr_scale = 0.0     # > 0: seed i's step is train.lr x lr_scale x (1 + i)
  config.label = "a"        # a string the program never reads
  config.train = ml_collections.ConfigDict({"lr": 0.1, "num_steps": 20, "log_every": 5,
                                            "optimizer": "sgd", "decay": "constant",
                                            "batches": "per_seed"})
  config.sweep = ml_collections.ConfigDict()
  return config


def setup(config):
  cfg.integer(config, "dim")
  cfg.nonnegative(config, "noise")
  return {"a": jnp.linspace(0.5, 2.0, config.dim)}


def init(config, key, data):
  w = jax.random.normal(key, data["a"].shape) if config.random_init else jnp.zeros_like(data["a"])
  state = {"params": w}
  if config.lr_scale:
    state["lr_scale"] = config.lr_scale * (1.0 + jnp.abs(w[0]))
  return state


def loss(config, state, data, key):
  w = state["params"]
  value = 0.5 * jnp.sum(data["a"] * (w - 1.0) ** 2)
  if key is not None and config.noise:
    value = value + config.noise * jnp.sum(w * jax.random.normal(key, w.shape))
  return value


def observe(config, state, data):
  return {"loss": loss(config, state, data, None), "w": state["params"]}


def theory(config, data, start, t):
  """Exact gradient descent from the seed's own start (constant lr and scale)."""
  lr = config.train.lr * start.get("lr_scale", 1.0)
  w = 1.0 + (start["w"] - 1.0) * (1.0 - lr * data["a"]) ** (t / lr)[:, None]
  return {"w": w, "loss": 0.5 * jnp.sum(data["a"] * (w - 1.0) ** 2, -1)}
