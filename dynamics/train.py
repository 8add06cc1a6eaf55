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

import os
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dynamics.devices import compiler_options

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
              devices: list | None = None, chunk: int | None = None) -> PyTree:
  """`jit(vmap(train))(keys, *args)`, the seed axis sharded over devices.

  `args` (e.g. the hyperparameter dict) are shared by every seed; see
  `run_rows` for padding, sharding and chunking.

  Returns:
    The outputs of `train` with a leading seed axis `[S, ...]`.
  """
  fn = _SEED_ROWS.get((train, len(args)))
  if fn is None:  # one Rows per train function: repeated runs reuse its compilations
    if len(_SEED_ROWS) >= 64:  # keys hold functions (and what they close over)
      _SEED_ROWS.clear()
    fn = _SEED_ROWS[train, len(args)] = vmap_rows(train, len(args), batched=False)
  return run_rows(fn, keys, *args, batched=False, devices=devices, chunk=chunk)


_SEED_ROWS: dict = {}


class Rows(NamedTuple):
  """`vmap_rows(...)`: the jitted row function and what `plan_rows` needs."""
  fn: Callable      # fn(keys, *args, groups=, chunk=), jitted
  train: Callable   # one row: train(key, *args)
  batched: bool

  def __call__(self, keys, *args, groups: int = 1, chunk: int = 0):
    return self.fn(keys, *args, groups=groups, chunk=chunk)

  def lower(self, keys, *args, groups: int = 1, chunk: int = 0):
    return self.fn.lower(keys, *args, groups=groups, chunk=chunk)


def vmap_rows(train: Callable, num_args: int, batched: bool = True) -> Rows:
  """`jit(vmap(train))` over a row axis: one key per row and, if `batched`,
  one slice of every leaf of the `num_args` other arguments. Build it once
  and reuse it, so that chunks of a sweep share one compiled executable.

  Called with `groups` (devices) and `chunk > 0`, the rows of each device run
  as a loop (`lax.map`) over chunks of `chunk` vmapped rows; rows must then
  be a multiple of `groups * chunk` (`run_rows` pads them). `keys` may be a
  pytree whose leaves lead with the row axis (a scan state, to continue
  runs)."""
  axes = (0,) + ((0 if batched else None),) * num_args
  vtrain = jax.vmap(train, in_axes=axes)

  def rows(keys, *args, groups, chunk):
    if not chunk:
      return vtrain(keys, *args)
    r = jax.tree_util.tree_leaves(keys)[0].shape[0]
    split = lambda tree: jax.tree_util.tree_map(
        lambda a: a.reshape((groups, r // (groups * chunk), chunk) + a.shape[1:]), tree)
    if batched:
      body = lambda ka: vtrain(ka[0], *ka[1])
      xs = (split(keys), split(args))
    else:
      body = lambda k: vtrain(k, *args)
      xs = split(keys)
    out = jax.vmap(lambda x: jax.lax.map(body, x))(xs)  # vmap: the device axis
    return jax.tree_util.tree_map(lambda a: a.reshape((r,) + a.shape[3:]), out)

  return Rows(jax.jit(rows, static_argnames=("groups", "chunk"),
                      compiler_options=compiler_options()), train, batched)


def pad_and_shard(keys: jax.Array, *args, batched: bool = True,
                  devices: list | None = None, multiple: int = 1):
  """Pads the row axis to a multiple of `multiple` times the device count
  (copies of the last row) and shards it over `devices` (default
  `jax.devices()`) with a 1-D `Mesh` and `NamedSharding`. Returns
  `(keys, args)`."""
  devices = jax.devices() if devices is None else devices
  pad = -jax.tree_util.tree_leaves(keys)[0].shape[0] % (len(devices) * multiple)
  pad_rows = lambda a: jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)])
  if pad:
    keys = jax.tree_util.tree_map(pad_rows, keys)
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


# Rows of one chunk keep their largest intermediate under this many bytes
# (best of 64 KiB-1 MiB on this 2-core EPYC, docs/performance.md); the
# environment variable DYNAMICS_CHUNK_ROWS=N forces N rows (0: no chunks).
CHUNK_BYTES = 1 << 18
_PLANS: dict = {}


class RowPlan(NamedTuple):
  devices: list  # devices to shard rows over
  chunk: int     # rows per vmapped chunk on a device; 0: all at once


def plan_rows(fn: Callable, keys: jax.Array, *args, devices: list | None = None,
              chunk: int | None = None) -> RowPlan:
  """How `run_rows` executes `fn(keys, *args)`, decided from shapes and the
  device, once per `fn` and argument shapes.

  Devices: `devices` (default `jax.devices()`), no more than there are rows,
  and one CPU device when the program holds a batched LAPACK kernel or an
  FFT: XLA's CPU runtime runs those by fanning a batch out to the intra-op
  thread pool they already run on and waiting for it, and with one device per
  core every pool thread can be a device waiting inside one, a hang (jaxlib
  0.10.2 on two cores: a batched SVD in a vmapped train function under two
  devices).

  Chunk (CPU only; accelerators want the whole batch): the vmapped
  activations of all rows leave the cache, so each device loops over chunks
  of rows whose largest intermediate array fits `CHUNK_BYTES`; a row whose
  largest array alone exceeds it runs one at a time (a loop over seeds).
  Arrays count by what one row adds to them (`_row_profile`), so data the
  rows share does not shrink the chunks; rows that draw large random arrays
  common to all of them every step are not chunked (each chunk would draw
  them again). `chunk` or `DYNAMICS_CHUNK_ROWS` override (0: vmap every row
  at once).
  """
  devices = jax.devices() if devices is None else list(devices)
  cpu = devices[0].platform == "cpu"
  env = os.environ.get("DYNAMICS_CHUNK_ROWS")
  if chunk is None and env is not None:
    if not env.strip().isdigit():
      raise ValueError(f"DYNAMICS_CHUNK_ROWS={env!r} must be an integer >= 0.")
    chunk = int(env)
  spec = jax.tree_util.tree_map(
      lambda a: (a.shape, a.dtype) if hasattr(a, "dtype") else type(a), (keys, args))
  key = (fn, str(spec), len(devices), cpu)
  rows = jax.tree_util.tree_leaves(keys)[0].shape[0]
  if key not in _PLANS:
    safe, largest, shared = True, 0, 0
    if cpu:
      jaxpr = None
      if isinstance(fn, Rows):
        jaxpr, largest, shared = _row_profile(fn, keys, args)
      # the lowered program is the truth; a jaxpr without any decomposition
      # or FFT (most programs) spares lowering it
      if min(len(devices), rows) > 1 and (
          jaxpr is None or _primitives(jaxpr) & LAPACK_OR_FFT):
        lower = fn.lower if hasattr(fn, "lower") else jax.jit(fn).lower
        safe = not any(
            ("custom_call @lapack" in line and 'num_batch_dims = "0"' not in line)
            or "stablehlo.fft" in line
            for line in lower(keys, *args).as_text().splitlines())
    auto = max(1, CHUNK_BYTES // largest) if largest else 0
    if shared > CHUNK_BYTES:
      auto = 0  # every chunk would draw the rows' common numbers again
    if len(_PLANS) >= 256:  # keys hold functions (and what they close over)
      _PLANS.clear()
    _PLANS[key] = (safe, auto)
  safe, auto = _PLANS[key]
  # fewer rows than devices: padding would only duplicate work
  devices = devices[:min(len(devices), rows)] if safe else devices[:1]
  chunk = auto if chunk is None else chunk
  if not isinstance(fn, Rows):
    chunk = 0
  per_device = -(-rows // len(devices))
  if chunk >= per_device:
    chunk = 0
  elif chunk:  # balanced chunks: at most one padded row per chunk
    chunk = -(-per_device // -(-per_device // chunk))
  return RowPlan(devices, chunk)


# primitives of jax.lax.linalg and jax.lax.fft (jax 0.10): on a CPU these may
# lower to LAPACK or FFT kernels
LAPACK_OR_FFT = frozenset((
    "cholesky", "cholesky_update", "eig", "eigh", "geqp3", "geqrf", "hessenberg",
    "householder_product", "lu", "lu_pivots_to_permutation", "ormqr", "qr",
    "schur", "svd", "symmetric_product", "triangular_solve", "tridiagonal",
    "tridiagonal_solve", "fft"))


def _subjaxprs(eqn):
  for p in eqn.params.values():
    for sub in (p if isinstance(p, (tuple, list)) else (p,)):
      sub = getattr(sub, "jaxpr", sub)
      if hasattr(sub, "eqns"):
        yield sub


def _primitives(jaxpr) -> set:
  """Names of the primitives in a jaxpr and those nested in it, except inside
  `jax.custom_batching.sequential_vmap` (`dynamics.linalg`), whose vmap is a
  loop of single calls. (Should its rule change name, the lowered program
  decides: safe either way.)"""
  names = set()
  for eqn in jaxpr.eqns:
    names.add(eqn.primitive.name)
    if "sequential_vmap" in str(eqn.params.get("rule")):  # str names the wrapped rule
      continue
    for sub in _subjaxprs(eqn):
      names |= _primitives(sub)
  return names


# rows of the trace `plan_rows` reads: a prime, so that an array whose size it
# divides grows with the rows (whatever reshapes the batch axis went through)
PROBE_ROWS = 7919


def _row_profile(fn: Rows, keys, args):
  """`(jaxpr, per_row, shared)` for `fn`'s vmapped row function, traced (not
  run) at `PROBE_ROWS` rows: `per_row`, the bytes one row adds to the
  largest array that grows with the rows; `shared`, the largest random draw
  inside a loop (the steps) that does not grow with them: numbers common to
  every row (prompts shared across seeds), which each chunk would draw again."""
  axes = (0,) + ((0 if fn.batched else None),) * len(args)
  rows = lambda a: jax.ShapeDtypeStruct((PROBE_ROWS,) + a.shape[1:], a.dtype)
  jaxpr = jax.make_jaxpr(jax.vmap(fn.train, in_axes=axes))(
      jax.tree_util.tree_map(rows, keys),
      *(jax.tree_util.tree_map(rows, args) if fn.batched else args)).jaxpr
  return (jaxpr,) + _growth(jaxpr, loop=False)


def _growth(jaxpr, loop: bool) -> tuple[int, int]:
  """`(per_row, shared)` of `_row_profile`, over a jaxpr and those nested in it."""
  per_row = shared = 0
  for eqn in jaxpr.eqns:
    for v in eqn.outvars:
      try:
        size = int(np.prod(v.aval.shape))
        nbytes = size * v.aval.dtype.itemsize
      except (AttributeError, TypeError):
        continue
      if size % PROBE_ROWS == 0:
        per_row = max(per_row, nbytes // PROBE_ROWS)
      elif loop and eqn.primitive.name == "random_bits":
        shared = max(shared, nbytes)
    inner = loop or eqn.primitive.name in ("scan", "while")
    for sub in _subjaxprs(eqn):
      p, s = _growth(sub, inner)
      per_row, shared = max(per_row, p), max(shared, s)
  return per_row, shared


def row_devices(fn: Callable, keys: jax.Array, *args,
                devices: list | None = None) -> list:
  """The devices `run_rows` shards `fn(keys, *args)` over (`plan_rows`)."""
  return plan_rows(fn, keys, *args, devices=devices).devices


def run_rows(fn: Callable, keys: jax.Array, *args, batched: bool = True,
             devices: list | None = None, chunk: int | None = None) -> PyTree:
  """Runs `fn = vmap_rows(...)` over rows sharded on `devices`, in chunks
  (`plan_rows`); the padding is dropped from the result, so a row's output
  does not depend on the device count or the chunk size."""
  rows = jax.tree_util.tree_leaves(keys)[0].shape[0]
  plan = plan_rows(fn, keys, *args, devices=devices, chunk=chunk)
  keys, args = pad_and_shard(keys, *args, batched=batched, devices=plan.devices,
                             multiple=max(plan.chunk, 1))
  if isinstance(fn, Rows):
    out = fn(keys, *args, groups=len(plan.devices), chunk=plan.chunk)
  else:
    out = fn(keys, *args)
  return jax.tree_util.tree_map(lambda a: a[:rows], out)
