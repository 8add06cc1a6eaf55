"""The training engine: whole trajectories as one `lax.scan`, seeds by `vmap`.

A run is `train(key, hparams) -> metrics`, a pure function of a per-seed key
and a dict of shape-preserving hyperparameters (learning rate, init scale,
...), built once per experiment and batched with `run_seeds`, which
`jit(vmap(...))`s it over seeds and shards the seed axis over every device
(how: `dynamics._rows`, the runner that sweeps share).

Inside, `trajectory` runs `num_steps` optimizer steps as a scan of
`num_steps / log_every` chunks, each an inner scan of `log_every` steps, and
records `metrics_fn(params)` before the first step and after every chunk, so
metric leaves have a leading axis of `num_steps / log_every + 1` entries at
steps `0, log_every, ..., num_steps`. No Python code runs per step; the
engine's progress bar is fed by a host callback every few logged intervals
(`dynamics.progress`).

Seeds (docs/conventions.md): seed `i` of a run uses
`fold_in(PRNGKey(seed), i)`; nothing in a seed's trajectory depends on the
other seeds, their number, or how they are batched or sharded.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from dynamics import _rows, progress

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
                 batch_size: int | None = None) -> Callable:
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

  def advance(state: TrainState, num_logs: int):
    # about 64 ticks a call; the callback takes no batched operand, so vmap
    # leaves it one host call per chunk of rows (not one per seed)
    every = max(1, num_logs // 64)
    tick = functools.partial(progress.tick, every * log_every)
    progress.count(num_logs * log_every)

    def chunk(state: TrainState, i):
      state, _ = jax.lax.scan(step, state, None, length=log_every)
      jax.lax.cond((i + 1) % every == 0, lambda: jax.debug.callback(tick),
                   lambda: None)
      return state, metrics_fn(state.params)

    return jax.lax.scan(chunk, state, jnp.arange(num_logs))

  return advance


def trajectory(params: PyTree, *, loss_fn: Callable, data: tuple,
               optimizer: optax.GradientTransformation,
               metrics_fn: Callable[[PyTree], dict], num_steps: int,
               log_every: int, key: jax.Array | None = None,
               batch_size: int | None = None) -> tuple[TrainState, dict]:
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

  Returns:
    `(state, metrics)` with metric leaves of shape `[num_steps/log_every+1,
    ...]`; `state.diverged_at` is the first step whose loss was not finite.
  """
  if num_steps % log_every:
    raise ValueError(f"num_steps={num_steps} must be a multiple of "
                     f"log_every={log_every}.")
  advance = make_advance(loss_fn=loss_fn, data=data, optimizer=optimizer,
                         metrics_fn=metrics_fn, log_every=log_every,
                         batch_size=batch_size)
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
              devices: list | None = None, chunk: int | None = None) -> PyTree:
  """`jit(vmap(train))(keys, *args)`, the seed axis sharded over devices.

  `args` (e.g. the hyperparameter dict) are shared by every seed. The engine
  pads the seeds to a multiple of the device count, runs each device's seeds
  in cache-sized chunks on a CPU, keeps batched LAPACK kernels on one CPU
  device, and shows a progress bar for runs longer than 2 s; none of this
  changes a seed's result beyond floating-point rounding. `devices` (default
  `jax.devices()`) and `chunk` (rows vmapped at once per device; 0: all)
  override its choices.

  Returns:
    The outputs of `train` with a leading seed axis `[S, ...]`.
  """
  fn = _SEED_ROWS.get((train, len(args)))
  if fn is None:  # one row function per train: repeated runs reuse its compilations
    if len(_SEED_ROWS) >= 64:  # keys hold functions (and what they close over)
      _SEED_ROWS.clear()
    fn = _SEED_ROWS[train, len(args)] = _rows.vmap_rows(train, len(args), batched=False)
  return _rows.run_rows(fn, keys, *args, batched=False, devices=devices, chunk=chunk)


_SEED_ROWS: dict = {}
