"""The row runner behind `run_seeds` and sweeps: how rows (seeds, or grid
point x seed) of a pure `train(key, *args)` are batched, chunked, sharded
and run. Private: experiments call `dynamics.train.run_seeds` or run through
`dynamics.sweep`; only the engine and the benchmark script come here.

`run_rows(vmap_rows(train, ...), keys, *args)` is the one entry: it plans the
call once per function and shapes (`plan_rows`: devices, cache-sized chunks,
the batched-LAPACK guard, the steps a row takes), pads and shards the rows,
runs them under the engine's progress bar and drops the padding.
"""

from __future__ import annotations

import os
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dynamics import progress
from dynamics.devices import compiler_options

PyTree = object


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
    if jax.process_count() > 1:
      # every process holds the same rows: each places its devices' share
      put = lambda tree: jax.tree_util.tree_map(
          lambda a: jax.make_array_from_callback(
              a.shape, sharding, lambda index, a=np.asarray(a): a[index]), tree)
    else:
      put = lambda tree: jax.device_put(tree, sharding)
    keys = put(keys)
    if batched:
      args = put(args)
  return keys, args


# Rows of one chunk keep their largest intermediate under this many bytes
# (best of 64 KiB-1 MiB on this 2-core EPYC, docs/performance.md); the
# environment variable DYNAMICS_CHUNK_ROWS=N forces N rows (0: no chunks).
CHUNK_BYTES = 1 << 18
_PLANS: dict = {}


def env_chunk() -> int | None:
  """`DYNAMICS_CHUNK_ROWS` (None when unset); a ValueError naming it when bad."""
  env = os.environ.get("DYNAMICS_CHUNK_ROWS")
  if env is None:
    return None
  if not env.strip().isdigit():
    raise ValueError(f"DYNAMICS_CHUNK_ROWS={env!r} must be an integer >= 0.")
  return int(env)


class RowPlan(NamedTuple):
  devices: list  # devices to shard rows over
  chunk: int     # rows per vmapped chunk on a device; 0: all at once
  steps: int     # optimizer steps one row takes (counted while tracing)


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

  Steps: what `make_advance` counted while the row was traced, for the
  progress bar (0 for a function that trains nothing).

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
  env = env_chunk()
  if chunk is None and env is not None:
    chunk = env
  spec = jax.tree_util.tree_map(
      lambda a: (a.shape, a.dtype) if hasattr(a, "dtype") else type(a), (keys, args))
  key = (fn, str(spec), len(devices), cpu)
  rows = jax.tree_util.tree_leaves(keys)[0].shape[0]
  if key not in _PLANS:
    safe, largest, shared, steps, jaxpr = True, 0, 0, 0, None
    if isinstance(fn, Rows):
      jaxpr, largest, shared, steps = _row_profile(fn, keys, args)
    if cpu:
      # the lowered program is the truth; a jaxpr without any decomposition
      # or FFT (most programs) spares lowering it
      if min(len(devices), rows) > 1 and (
          jaxpr is None or _primitives(jaxpr) & LAPACK_OR_FFT):
        lower = fn.lower if hasattr(fn, "lower") else jax.jit(fn).lower
        safe = not any(
            ("custom_call @lapack" in line and 'num_batch_dims = "0"' not in line)
            or "stablehlo.fft" in line
            for line in lower(keys, *args).as_text().splitlines())
    auto = max(1, CHUNK_BYTES // largest) if largest and cpu else 0
    if shared > CHUNK_BYTES:
      auto = 0  # every chunk would draw the rows' common numbers again
    if len(_PLANS) >= 256:  # keys hold functions (and what they close over)
      _PLANS.clear()
    _PLANS[key] = (safe, auto, steps)
  safe, auto, steps = _PLANS[key]
  if jax.process_count() > 1:
    # every process takes part in every call: all devices, or one a process
    first = {}
    for d in devices:
      first.setdefault(d.process_index, d)
    devices = devices if safe else list(first.values())
  else:  # fewer rows than devices: padding would only duplicate work
    devices = devices[:min(len(devices), rows)] if safe else devices[:1]
  chunk = auto if chunk is None else chunk
  if not isinstance(fn, Rows):
    chunk = 0
  per_device = -(-rows // len(devices))
  if chunk >= per_device:
    chunk = 0
  elif chunk:  # balanced chunks: at most one padded row per chunk
    chunk = -(-per_device // -(-per_device // chunk))
  return RowPlan(devices, chunk, steps)


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
  """`(jaxpr, per_row, shared, steps)` for `fn`'s vmapped row function, traced (not
  run) at `PROBE_ROWS` rows: `per_row`, the bytes one row adds to the
  largest array that grows with the rows; `shared`, the largest random draw
  inside a loop (the steps) that does not grow with them: numbers common to
  every row (prompts shared across seeds), which each chunk would draw again;
  `steps`, the optimizer steps of one row (`progress.count`)."""
  axes = (0,) + ((0 if fn.batched else None),) * len(args)
  rows = lambda a: jax.ShapeDtypeStruct((PROBE_ROWS,) + a.shape[1:], a.dtype)
  with progress.counting() as steps:
    jaxpr = jax.make_jaxpr(jax.vmap(fn.train, in_axes=axes))(
        jax.tree_util.tree_map(rows, keys),
        *(jax.tree_util.tree_map(rows, args) if fn.batched else args)).jaxpr
  return (jaxpr,) + _growth(jaxpr, loop=False) + (sum(steps),)


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
  (`plan_rows`), under the engine's progress bar (its own, shown after 2 s,
  unless a sweep has one open); the padding is dropped from the result, so a
  row's output does not depend on the device count or the chunk size."""
  rows = jax.tree_util.tree_leaves(keys)[0].shape[0]
  plan = plan_rows(fn, keys, *args, devices=devices, chunk=chunk)
  keys, args = pad_and_shard(keys, *args, batched=batched, devices=plan.devices,
                             multiple=max(plan.chunk, 1))
  padded = jax.tree_util.tree_leaves(keys)[0].shape[0]
  # a tick comes once per chunk for every device's rows (the callback runs
  # on one device of the sharded program)
  per_tick = (plan.chunk or padded // len(plan.devices)) * len(plan.devices)
  with progress.bar(rows * plan.steps) as bar, bar.expect(per_tick, rows * plan.steps):
    if isinstance(fn, Rows):
      out = fn(keys, *args, groups=len(plan.devices), chunk=plan.chunk)
    else:
      out = fn(keys, *args)
    out = jax.block_until_ready(out)
  if jax.process_count() > 1:  # every process gets every row
    from jax.experimental import multihost_utils
    out = multihost_utils.process_allgather(out, tiled=True)
  return jax.tree_util.tree_map(lambda a: a[:rows], out)
