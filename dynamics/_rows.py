"""How rows (seeds, or grid point x seed) of a pure function run: batched,
chunked and sharded over devices. Private: the engine (`dynamics.train`) and
the benchmark script come here; experiments never do.

A row function `fn(row, shared)` takes one row's inputs (a pytree) and inputs
every row shares. `vmap_rows(fn)` is its `jit(vmap(...))` over a leading row
axis of `row`; `plan_rows` decides, once per function and shapes, which
devices run it and in what chunks; `shard_rows` pads and places the rows;
`run_rows` does all three and drops the padding. The engine keeps a run's
rows padded and placed between the calls of one trajectory
(`dynamics.train.Runner`), so nothing is copied between segments.
"""

from __future__ import annotations

import os
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dynamics.devices import compiler_options

PyTree = object


class Rows(NamedTuple):
  """`vmap_rows(fn)`: the jitted row function and the row function itself."""
  jitted: Callable  # jitted(rows, shared, groups=, chunk=)
  fn: Callable      # one row: fn(row, shared)

  def __call__(self, rows, shared, *, groups: int = 1, chunk: int = 0):
    return self.jitted(rows, shared, groups=groups, chunk=chunk)


def vmap_rows(fn: Callable) -> Rows:
  """`jit(vmap(fn, in_axes=(0, None)))`: one slice of every leaf of `rows` per
  row, `shared` as is. Build it once and reuse it, so that the chunks and
  segments of a run share one compiled executable.

  Called with `groups` (devices) and `chunk > 0`, the rows of each device run
  as a loop (`lax.map`) over chunks of `chunk` vmapped rows; the row count must
  then be a multiple of `groups * chunk` (`shard_rows` pads it)."""
  vfn = jax.vmap(fn, in_axes=(0, None))

  def rows_fn(rows, shared, groups, chunk):
    if not chunk:
      return vfn(rows, shared)
    r = jax.tree_util.tree_leaves(rows)[0].shape[0]
    split = lambda tree: jax.tree_util.tree_map(
        lambda a: a.reshape((groups, r // (groups * chunk), chunk) + a.shape[1:]), tree)
    body = lambda x: vfn(x, shared)
    out = jax.vmap(lambda x: jax.lax.map(body, x))(split(rows))  # vmap: the device axis
    return jax.tree_util.tree_map(lambda a: a.reshape((r,) + a.shape[3:]), out)

  return Rows(jax.jit(rows_fn, static_argnames=("groups", "chunk"),
                      compiler_options=compiler_options()), fn)


# Rows of one chunk keep their largest intermediate under this many bytes
# (best of 64 KiB-1 MiB on a 2-core EPYC, docs/performance.md); the
# environment variable DYNAMICS_CHUNK_ROWS=N forces N rows (0: no chunks).
CHUNK_BYTES = 1 << 18


def env_chunk() -> int | None:
  """`DYNAMICS_CHUNK_ROWS` (None when unset); a ValueError naming it when bad."""
  env = os.environ.get("DYNAMICS_CHUNK_ROWS")
  if env is None:
    return None
  if not env.strip().isdigit():
    raise ValueError(f"DYNAMICS_CHUNK_ROWS={env!r} must be an integer >= 0.")
  return int(env)


class RowPlan(NamedTuple):
  devices: list  # devices the rows are sharded over
  chunk: int     # rows per vmapped chunk on a device; 0: all at once


class Profile(NamedTuple):
  """What planning reads off one trace of a row function."""
  per_row: int      # bytes one row adds to the largest array that grows with the rows
  lapack: bool      # holds a decomposition or FFT that a vmap would batch
  out: PyTree       # one row's outputs as ShapeDtypeStructs


def profile(fn: Rows, rows, shared) -> Profile:
  """Traces (does not run) `fn`'s vmapped row function at `PROBE_ROWS` rows,
  once: the per-row bytes of its largest growing array, and whether it holds a
  batched LAPACK kernel or FFT (`LAPACK_OR_FFT`)."""
  probe = lambda a: jax.ShapeDtypeStruct((PROBE_ROWS,) + a.shape[1:], a.dtype)
  closed, out = jax.make_jaxpr(jax.vmap(fn.fn, in_axes=(0, None)), return_shape=True)(
      jax.tree_util.tree_map(probe, rows), shared)
  one = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct((1,) + a.shape[1:], a.dtype), out)
  return Profile(_growth(closed.jaxpr), bool(_primitives(closed.jaxpr) & LAPACK_OR_FFT), one)


def plan_rows(prof: Profile, num_rows: int, *, devices: list | None = None,
              chunk: int | None = None, chunkable: bool = True) -> RowPlan:
  """How `num_rows` rows of a function with profile `prof` run.

  Devices: `devices` (default `jax.devices()`), no more than there are rows,
  and one CPU device when the program holds a batched LAPACK kernel or an FFT:
  XLA's CPU runtime runs those by fanning a batch out to the intra-op thread
  pool they already run on and waiting for it, and with one device per core
  every pool thread can be a device waiting inside one, a hang (jaxlib 0.10.2
  on two cores: a batched SVD in a vmapped train function under two devices).
  `dynamics.linalg`'s decompositions vmap as loops and do not count.

  Chunk (CPU only; accelerators want the whole batch): the vmapped
  activations of all rows leave the cache, so each device loops over chunks of
  rows whose largest intermediate array fits `CHUNK_BYTES`; a row whose
  largest array alone exceeds it runs one at a time. `chunkable=False` (rows
  that draw large random arrays common to all of them: each chunk would draw
  them again) runs every row at once. `chunk` or `DYNAMICS_CHUNK_ROWS` override
  (0: every row at once).
  """
  devices = jax.devices() if devices is None else list(devices)
  cpu = devices[0].platform == "cpu"
  env = env_chunk()
  if chunk is None and env is not None:
    chunk = env
  if cpu and prof.lapack and len(devices) > 1:
    if jax.process_count() > 1:  # every process takes part: one device a process
      first = {}
      for d in devices:
        first.setdefault(d.process_index, d)
      devices = list(first.values())
    else:
      devices = devices[:1]
  elif jax.process_count() == 1:  # fewer rows than devices: padding would only duplicate work
    devices = devices[:max(1, min(len(devices), num_rows))]
  if chunk is None:
    chunk = max(1, CHUNK_BYTES // prof.per_row) if (prof.per_row and cpu and chunkable) else 0
  per_device = -(-num_rows // len(devices))
  if chunk >= per_device:
    chunk = 0
  elif chunk:  # balanced chunks: at most one padded row per chunk
    chunk = -(-per_device // -(-per_device // chunk))
  return RowPlan(devices, chunk)


def padded(num_rows: int, plan: RowPlan) -> int:
  """Rows after padding to a multiple of `devices x chunk`."""
  m = len(plan.devices) * max(plan.chunk, 1)
  return -(-num_rows // m) * m


def shard_rows(rows, plan: RowPlan, num_padded: int | None = None):
  """`rows` padded to `num_padded` (default `padded(...)`; copies of the last
  row) and sharded over the plan's devices with a 1-D `Mesh`."""
  n = jax.tree_util.tree_leaves(rows)[0].shape[0]
  pad = (padded(n, plan) if num_padded is None else num_padded) - n
  if pad:
    rows = jax.tree_util.tree_map(
        lambda a: jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)]), rows)
  devices = plan.devices
  if len(devices) == 1 and jax.process_count() == 1:
    return jax.device_put(rows, devices[0])
  sharding = jax.sharding.NamedSharding(jax.sharding.Mesh(np.array(devices), ("rows",)),
                                        jax.sharding.PartitionSpec("rows"))
  if jax.process_count() > 1:
    # every process holds the same rows: each places its devices' share
    return jax.tree_util.tree_map(
        lambda a: jax.make_array_from_callback(
            a.shape, sharding, lambda index, a=np.asarray(a): a[index]), rows)
  return jax.device_put(rows, sharding)


def place(tree, plan: RowPlan):
  """Rows already padded for `plan`, placed as `shard_rows` places them (a
  program's outputs may come back replicated; the next call would compile
  again for another input sharding)."""
  if len(plan.devices) == 1 and jax.process_count() == 1:
    return jax.device_put(tree, plan.devices[0])
  sharding = jax.sharding.NamedSharding(jax.sharding.Mesh(np.array(plan.devices), ("rows",)),
                                        jax.sharding.PartitionSpec("rows"))
  return jax.device_put(tree, sharding)


def replicate(tree, plan: RowPlan):
  """Inputs every row shares, placed once on every device of `plan` (a
  host array or one on another device would be copied again at each call)."""
  if jax.process_count() > 1:
    return tree  # each process holds its own copy; jit places it
  if len(plan.devices) == 1:
    return jax.device_put(tree, plan.devices[0])
  sharding = jax.sharding.NamedSharding(jax.sharding.Mesh(np.array(plan.devices), ("rows",)),
                                        jax.sharding.PartitionSpec())
  return jax.device_put(tree, sharding)


def call(fn: Rows, rows, shared, plan: RowPlan):
  """`fn` on rows already padded and sharded by `shard_rows`."""
  return fn(rows, shared, groups=len(plan.devices), chunk=plan.chunk)


def to_host(tree, num_rows: int):
  """Numpy copies of the first `num_rows` rows (every process gets every row)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    tree = multihost_utils.process_allgather(tree, tiled=True)
  return jax.tree_util.tree_map(lambda a: np.asarray(a)[:num_rows], tree)


def run_rows(fn: Rows, rows, shared=None, *, devices: list | None = None,
             chunk: int | None = None):
  """`fn` over every row of `rows` (leading axis), planned, padded, sharded,
  and the padding dropped: a row's output does not depend on the device
  count or the chunk size beyond floating-point rounding."""
  n = jax.tree_util.tree_leaves(rows)[0].shape[0]
  plan = plan_rows(profile(fn, rows, shared), n, devices=devices, chunk=chunk)
  out = call(fn, shard_rows(rows, plan), shared, plan)
  return to_host(jax.block_until_ready(out), n)


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
  loop of single calls."""
  names = set()
  for eqn in jaxpr.eqns:
    names.add(eqn.primitive.name)
    if "sequential_vmap" in str(eqn.params.get("rule")):  # str names the wrapped rule
      continue
    for sub in _subjaxprs(eqn):
      names |= _primitives(sub)
  return names


# rows of the trace `profile` reads: a prime, so that an array whose size it
# divides grows with the rows (whatever reshapes the batch axis went through)
PROBE_ROWS = 7919


def _row_bytes(v) -> int:
  """Bytes per row of a jaxpr variable that grows with the rows, else 0."""
  try:
    size = int(np.prod(v.aval.shape))
    nbytes = size * v.aval.dtype.itemsize
  except (AttributeError, TypeError):
    return 0
  return nbytes // PROBE_ROWS if size % PROBE_ROWS == 0 else 0


def _growth(jaxpr) -> int:
  """The bytes one row adds to the largest array that grows with the rows,
  over a jaxpr and those nested in it, or to a loop's carry (every step of a
  `scan` or `while` reads and rewrites all of it: parameters and optimizer
  state), whichever is larger."""
  per_row = 0
  for eqn in jaxpr.eqns:
    for v in eqn.outvars:
      per_row = max(per_row, _row_bytes(v))
    if eqn.primitive.name in ("scan", "while"):
      carry = eqn.outvars[:eqn.params["num_carry"]] if "num_carry" in eqn.params \
          else eqn.outvars
      per_row = max(per_row, sum(_row_bytes(v) for v in carry))
    for sub in _subjaxprs(eqn):
      per_row = max(per_row, _growth(sub))
  return per_row
