"""The training engine: whole trajectories as one `lax.scan`, seeds by `vmap`.

A run is `train(key, hparams) -> metrics`, a pure function of a per-seed key
and a dict of shape-preserving hyperparameters (learning rate, init scale,
...), built once per experiment and batched with `run_seeds`, which
`jit(vmap(...))`s it over seeds and shards the seed axis over every device.

Inside, `trajectory` runs `num_steps` optimizer steps as a scan of
`num_steps / log_every` chunks, each an inner scan of `log_every` steps, and
records `metrics_fn(params)` before the first step and after every chunk, so
metric leaves have a leading axis of `num_steps / log_every + 1` entries at
steps `0, log_every, ..., num_steps`. No Python code runs per step.

Seeds (docs/conventions.md): seed `i` of a run uses
`fold_in(PRNGKey(seed), i)`; nothing in a seed's trajectory depends on the
other seeds, their number, or how they are batched or sharded.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

PyTree = Any

OPTIMIZERS = ("sgd", "momentum", "adam")


class TrainState(NamedTuple):
  params: PyTree     # model parameters
  opt_state: PyTree  # optax state
  key: jax.Array     # [] per-seed key, folded with the step for minibatches
  step: jax.Array    # [] int32, optimizer steps taken


def make_optimizer(name: str, lr, *, momentum: float = 0.9
                   ) -> optax.GradientTransformation:
  """An optax optimizer by name; `lr` may be traced (vmapped sweeps).

  `'sgd'` is plain gradient descent `theta <- theta - lr grad L`, whose
  trajectories match gradient flow at time `t = lr * steps`.
  """
  if name == "sgd":
    return optax.sgd(lr)
  if name == "momentum":
    return optax.sgd(lr, momentum=momentum)
  if name == "adam":
    return optax.adam(lr)
  raise ValueError(f"Unknown optimizer {name!r}; known: {OPTIMIZERS}.")


def trajectory(params: PyTree, *, loss_fn: Callable, data: tuple,
               optimizer: optax.GradientTransformation,
               metrics_fn: Callable[[PyTree], dict], num_steps: int,
               log_every: int, key: jax.Array | None = None,
               batch_size: int | None = None,
               progress: Callable[[int], None] | None = None
               ) -> tuple[TrainState, dict]:
  """Trains from `params` and returns the final state and logged metrics.

  Args:
    params: initial parameters.
    loss_fn: `loss_fn(params, *data) -> scalar`.
    data: arrays whose leading axis is the sample axis, e.g. `(x, y)`.
    optimizer: an optax transformation.
    metrics_fn: `metrics_fn(params) -> dict of arrays`, evaluated on the
      full data at steps `0, log_every, ..., num_steps`.
    num_steps: optimizer steps, a multiple of `log_every`.
    log_every: steps between logged metrics.
    key: per-seed key for minibatches (unused for full batch).
    batch_size: samples per step, drawn without replacement; `None` means
      full-batch gradient descent.
    progress: called on the host with the step count after every chunk.

  Returns:
    `(state, metrics)` with metric leaves of shape `[num_steps/log_every+1,
    ...]`.
  """
  if num_steps % log_every:
    raise ValueError(f"num_steps={num_steps} must be a multiple of "
                     f"log_every={log_every}.")
  num_samples = jax.tree_util.tree_leaves(data)[0].shape[0]
  grad_fn = jax.grad(loss_fn)
  key = jax.random.key(0) if key is None else key

  def step(state: TrainState, _):
    batch = data
    if batch_size is not None and batch_size < num_samples:
      idx = jax.random.choice(jax.random.fold_in(state.key, state.step),
                              num_samples, (batch_size,), replace=False)
      batch = jax.tree_util.tree_map(lambda a: a[idx], data)
    grads = grad_fn(state.params, *batch)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return TrainState(params, opt_state, state.key, state.step + 1), None

  def chunk(state: TrainState, _):
    state, _ = jax.lax.scan(step, state, None, length=log_every)
    if progress is not None:
      jax.debug.callback(lambda s: progress(int(np.max(s))), state.step)
    return state, metrics_fn(state.params)

  state = TrainState(params, optimizer.init(params), key,
                     jnp.zeros((), jnp.int32))
  first = metrics_fn(params)
  state, logged = jax.lax.scan(chunk, state, None,
                               length=num_steps // log_every)
  metrics = jax.tree_util.tree_map(
      lambda a, b: jnp.concatenate([a[None], b]), first, logged)
  return state, metrics


def seed_keys(seed: int, num_seeds: int, start: int = 0) -> jax.Array:
  """Keys of seeds `start, ..., start + num_seeds - 1`: `fold_in(PRNGKey(seed), i)`."""
  base = jax.random.PRNGKey(seed)
  return jax.vmap(lambda i: jax.random.fold_in(base, i))(
      jnp.arange(start, start + num_seeds, dtype=jnp.uint32))


def run_seeds(train: Callable, keys: jax.Array, *args,
              devices: list | None = None) -> PyTree:
  """`jit(vmap(train))(keys, *args)` with the seed axis sharded over devices.

  The seed axis is padded to a multiple of the device count with copies of
  the last key and the padding is dropped from the result, so every seed's
  output is independent of the number of devices. `args` are broadcast to
  every seed.

  Args:
    train: `train(key, *args) -> pytree of arrays`.
    keys: `[S]` (or `[S, 2]` raw) keys from `seed_keys`.
    devices: defaults to `jax.devices()`.

  Returns:
    The outputs of `train` with a leading seed axis `[S, ...]`.
  """
  devices = jax.devices() if devices is None else devices
  num_seeds = keys.shape[0]
  pad = -num_seeds % len(devices)
  if pad:
    keys = jnp.concatenate([keys, jnp.repeat(keys[-1:], pad, axis=0)])
  batched = jax.jit(jax.vmap(train, in_axes=(0,) + (None,) * len(args)))
  if len(devices) > 1:
    mesh = jax.sharding.Mesh(np.array(devices), ("seeds",))
    keys = jax.device_put(keys, jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec("seeds")))
  out = batched(keys, *args)
  return jax.tree_util.tree_map(lambda a: a[:num_seeds], out)
