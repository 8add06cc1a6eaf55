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
  params: PyTree          # model parameters
  opt_state: PyTree       # optax state
  key: jax.Array          # [] per-seed key, folded with the step for minibatches
  step: jax.Array         # [] int32, optimizer steps taken
  diverged_at: jax.Array  # [] int32, first step whose loss was not finite; -1


def make_optimizer(name: str, lr, *, momentum: float = 0.9,
                   decay_steps: int | None = None) -> optax.GradientTransformation:
  """An optax optimizer by name; `lr` may be traced (vmapped sweeps).

  `'sgd'` is plain gradient descent `theta <- theta - lr grad L`, whose
  trajectories match gradient flow at time `t = lr * steps`. `decay_steps`
  decays `lr` to 0 by a cosine over that many steps (endpoint studies: it
  removes the SGD noise floor; the time is then no longer `lr * steps`).
  """
  if decay_steps:
    lr = optax.cosine_decay_schedule(lr, decay_steps)
  if name == "sgd":
    return optax.sgd(lr)
  if name == "momentum":
    return optax.sgd(lr, momentum=momentum)
  if name == "adam":
    return optax.adam(lr)
  raise ValueError(f"Unknown optimizer {name!r}; known: {OPTIMIZERS}.")


def masked(optimizer: optax.GradientTransformation, mask: PyTree
           ) -> optax.GradientTransformation:
  """`optimizer` restricted to the entries where `mask` is 1 (a 0/1 pytree like
  the parameters, e.g. `theory.pruning.prune_mask`): gradients are zeroed
  there before the optimizer sees them and updates after, so a pruned
  parameter set to 0 stays exactly 0 with any optax optimizer (momentum and
  Adam state included)."""
  keep = lambda tree: jax.tree_util.tree_map(
      lambda x, m: jnp.where(m > 0, x, jnp.zeros_like(x)), tree, mask)

  def update(grads, state, params=None):
    updates, state = optimizer.update(keep(grads), state, params)
    return keep(updates), state

  return optax.GradientTransformation(optimizer.init, update)


def init_state(params: PyTree, optimizer: optax.GradientTransformation,
               key: jax.Array | None = None) -> TrainState:
  """The state before the first step (`key` drives minibatches)."""
  key = jax.random.key(0) if key is None else key
  return TrainState(params, optimizer.init(params), key,
                    jnp.zeros((), jnp.int32), -jnp.ones((), jnp.int32))


def make_advance(*, loss_fn: Callable, data: tuple,
                 optimizer: optax.GradientTransformation,
                 metrics_fn: Callable[[PyTree], dict], log_every: int,
                 batch_size: int | None = None,
                 progress: Callable[[int], None] | None = None) -> Callable:
  """`advance(state, num_logs) -> (state, metrics)`: `num_logs * log_every`
  optimizer steps as a scan of chunks, `metrics_fn` logged after each chunk
  (leaves `[num_logs, ...]`). Arguments as in `trajectory`. Consecutive calls
  continue one trajectory, so a long run can be checkpointed between them."""
  grad_fn = jax.value_and_grad(loss_fn)
  online = callable(data)
  num_samples = None if online else jax.tree_util.tree_leaves(data)[0].shape[0]

  def step(state: TrainState, _):
    if online:  # a fresh batch every step
      batch = data(jax.random.fold_in(state.key, state.step))
    else:
      batch = data
    if not online and batch_size is not None and batch_size < num_samples:
      idx = jax.random.choice(jax.random.fold_in(state.key, state.step),
                              num_samples, (batch_size,), replace=False)
      batch = jax.tree_util.tree_map(lambda a: a[idx], data)
    loss, grads = grad_fn(state.params, *batch)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    diverged_at = jnp.where((state.diverged_at < 0) & ~jnp.isfinite(loss),
                            state.step, state.diverged_at)
    return TrainState(params, opt_state, state.key, state.step + 1,
                      diverged_at), None

  def chunk(state: TrainState, _):
    state, _ = jax.lax.scan(step, state, None, length=log_every)
    if progress is not None:
      jax.debug.callback(lambda s: progress(int(np.max(s))), state.step)
    return state, metrics_fn(state.params)

  def advance(state: TrainState, num_logs: int):
    return jax.lax.scan(chunk, state, None, length=num_logs)

  return advance


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
    data: arrays whose leading axis is the sample axis, e.g. `(x, y)`; or
      a sampler `data(key) -> tuple of arrays`, called every step with
      `fold_in(key, step)` for online learning (fresh samples per step).
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
    ...]`; `state.diverged_at` is the first step whose loss was not finite.
  """
  if num_steps % log_every:
    raise ValueError(f"num_steps={num_steps} must be a multiple of "
                     f"log_every={log_every}.")
  advance = make_advance(loss_fn=loss_fn, data=data, optimizer=optimizer,
                         metrics_fn=metrics_fn, log_every=log_every,
                         batch_size=batch_size, progress=progress)
  state, logged = advance(init_state(params, optimizer, key),
                          num_steps // log_every)
  return state, join_logs(metrics_fn(params), [logged])


def join_logs(first: dict, segments: list) -> dict:
  """Step-0 metrics (leaves `[...]`) followed by logged segments (`[n, ...]`)."""
  return jax.tree_util.tree_map(
      lambda a, *b: jnp.concatenate([a[None], *b]), first, *segments)


def seed_keys(seed: int, num_seeds: int, start: int = 0) -> jax.Array:
  """Keys of seeds `start, ..., start + num_seeds - 1`: `fold_in(PRNGKey(seed), i)`."""
  base = jax.random.PRNGKey(seed)
  return jax.vmap(lambda i: jax.random.fold_in(base, i))(
      jnp.arange(start, start + num_seeds, dtype=jnp.uint32))


def run_seeds(train: Callable, keys: jax.Array, *args,
              devices: list | None = None) -> PyTree:
  """`jit(vmap(train))(keys, *args)`, the seed axis sharded over devices.

  `args` (e.g. the hyperparameter dict) are shared by every seed; see
  `run_rows` for padding and sharding.

  Returns:
    The outputs of `train` with a leading seed axis `[S, ...]`.
  """
  return run_rows(vmap_rows(train, len(args), batched=False), keys, *args,
                  batched=False, devices=devices)


def vmap_rows(train: Callable, num_args: int, batched: bool = True):
  """`jit(vmap(train))` over a row axis: one key per row and, if `batched`,
  one slice of every leaf of the `num_args` other arguments. Build it once
  and reuse it, so that chunks of a sweep share one compiled executable."""
  axes = (0,) + ((0 if batched else None),) * num_args
  return jax.jit(jax.vmap(train, in_axes=axes))


def pad_and_shard(keys: jax.Array, *args, batched: bool = True,
                  devices: list | None = None):
  """Pads the row axis to a multiple of the device count (copies of the last
  row) and shards it over `devices` (default `jax.devices()`) with a 1-D
  `Mesh` and `NamedSharding`. Returns `(keys, args)`."""
  devices = jax.devices() if devices is None else devices
  pad = -keys.shape[0] % len(devices)
  pad_rows = lambda a: jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)])
  if pad:
    keys = pad_rows(keys)
    if batched:
      args = jax.tree_util.tree_map(pad_rows, args)
  if len(devices) > 1:
    sharding = jax.sharding.NamedSharding(
        jax.sharding.Mesh(np.array(devices), ("rows",)),
        jax.sharding.PartitionSpec("rows"))
    keys = jax.device_put(keys, sharding)
    if batched:
      args = jax.device_put(args, sharding)
  return keys, args


_SAFE: dict = {}


def row_devices(fn: Callable, keys: jax.Array, *args,
                devices: list | None = None) -> list:
  """The devices to shard the rows of `fn(keys, *args)` over: `devices`
  (default `jax.devices()`), but one CPU device when the program holds a
  batched LAPACK kernel or an FFT.

  XLA's CPU runtime runs those kernels by fanning a batch out to the
  intra-op thread pool they already run on and waiting for it. With one
  device per core, every pool thread can be a device waiting inside such a
  kernel, and the run hangs (jaxlib 0.10.2 on two cores: a batched SVD in a
  vmapped train function under two devices). Decided once per `fn` and
  argument shapes from the lowered program.
  """
  devices = jax.devices() if devices is None else list(devices)
  if len(devices) < 2 or devices[0].platform != "cpu":
    return devices
  spec = jax.tree_util.tree_map(
      lambda a: (a.shape, a.dtype) if hasattr(a, "dtype") else type(a), (keys, args))
  key = (fn, str(spec))
  if key not in _SAFE:
    lower = fn.lower if hasattr(fn, "lower") else jax.jit(fn).lower
    text = lower(keys, *args).as_text()
    _SAFE[key] = not any(
        ("custom_call @lapack" in line and 'num_batch_dims = "0"' not in line)
        or "stablehlo.fft" in line for line in text.splitlines())
  return devices if _SAFE[key] else devices[:1]


def run_rows(fn: Callable, keys: jax.Array, *args, batched: bool = True,
             devices: list | None = None) -> PyTree:
  """Runs `fn = vmap_rows(...)` over rows sharded on `devices` (see
  `row_devices`); the padding of `pad_and_shard` is dropped from the result,
  so a row's output does not depend on the device count."""
  rows = keys.shape[0]
  devices = row_devices(fn, keys, *args, devices=devices)
  keys, args = pad_and_shard(keys, *args, batched=batched, devices=devices)
  out = fn(keys, *args)
  return jax.tree_util.tree_map(lambda a: a[:rows], out)
