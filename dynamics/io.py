"""Writing results: atomically, readable by the group, in strict JSON.

Every file is written to a temporary sibling and renamed into place, so a
killed run leaves either the old file, the complete new one, or nothing.
Files and directories get the permissions a plain `open` or `mkdir` would
(`0666` / `0777` less the umask): under the usual umask colleagues can read a
run. JSON is strict (`NaN` and infinities become `null`). One process at a time
writes a run directory (`lock`).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import math
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile

import numpy as np
import pandas as pd


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


UMASK = _umask()


def check_writable(out_dir: str, name: str = "--out") -> None:
  """Raises ValueError naming `name` (the flag or field the user set) if
  `out_dir` cannot be created or written."""
  probe = os.path.dirname(os.path.abspath(out_dir))
  while not os.path.exists(probe):
    probe = os.path.dirname(probe)
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise ValueError(f"{name} ({out_dir!r}) exists and is not a directory.")
  if not os.path.isdir(probe) or not os.access(probe, os.W_OK):
    raise ValueError(f"{name} ({out_dir!r}) cannot be written: {probe!r} is not "
                     "a writable directory.")
  if os.path.isdir(out_dir) and not os.access(out_dir, os.W_OK):
    raise ValueError(f"{name} ({out_dir!r}) is not writable.")


LOCK = ".lock"  # in the run directory; never removed, so never raced


@contextlib.contextmanager
def lock(out_dir: str, name: str = "--out"):
  """Holds the run directory `out_dir` (which must exist) for this process.

  An exclusive `flock` on `out_dir/.lock`: the kernel releases it when the
  holder exits, however it exits, so a killed run leaves no stale lock and
  the next run simply takes it. The file records the holder, which a second
  writer's `ValueError` names.
  """
  path = os.path.join(out_dir, LOCK)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~UMASK)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "another process"
      raise ValueError(f"{name} ({out_dir!r}) is being written by {holder}; wait for "
                       "it to finish or choose another directory.") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()} (since "
                  f"{datetime.datetime.now().isoformat(timespec='seconds')})\n".encode(), 0)
    yield
  finally:
    os.close(fd)  # releases the lock


def makedirs(path: str) -> None:
  os.makedirs(path, mode=0o777, exist_ok=True)  # less the umask, as mkdir


def atomic_write(path: str, write) -> None:
  """`write(binary_file)` into a temporary sibling, then rename over `path`:
  `path` is either absent, the old file, or the complete new one."""
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path),
                             prefix=f".{os.path.basename(path)}.")
  try:
    with os.fdopen(fd, "wb") as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes 0600
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def strict(x):
  """`x` made JSON-safe: numpy to Python, tuples to lists, NaN and inf to None."""
  if isinstance(x, dict):
    return {str(k): strict(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [strict(v) for v in x]
  if isinstance(x, np.ndarray):
    return strict(x.tolist())
  if isinstance(x, np.generic):
    x = x.item()
  if isinstance(x, float) and not math.isfinite(x):
    return None
  return x


def write_json(path: str, obj) -> None:
  text = json.dumps(strict(obj), indent=2, allow_nan=False)
  atomic_write(path, lambda f: f.write(text.encode()))


def write_npz(path: str, arrays: dict) -> None:
  atomic_write(path, lambda f: np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()}))


def write_frame(path: str, frame: pd.DataFrame) -> None:
  if path.endswith(".csv"):
    atomic_write(path, lambda f: frame.to_csv(f, index=False))
  else:
    atomic_write(path, lambda f: frame.to_parquet(f, index=False))


def concat_parquet(path: str, parts: list) -> None:
  """The parquet files `parts`, one after another, as one file at `path`,
  streamed a part at a time, with page checksums (`load_sweep` verifies them). Columns are the union of the parts' (a column a
  part lacks is null there; differing types are promoted, e.g. int to float)."""
  import pyarrow as pa
  import pyarrow.parquet as pq
  schema = pa.unify_schemas([pq.read_schema(f) for f in parts],
                            promote_options="permissive").remove_metadata()

  def write(f):
    with pq.ParquetWriter(f, schema, write_page_checksum=True) as w:
      for part in parts:
        t = pq.read_table(part)
        w.write_table(pa.table([t.column(c.name).cast(c.type) if c.name in t.column_names
                                else pa.nulls(len(t), c.type) for c in schema],
                               schema=schema))

  atomic_write(path, write)


def write_figure(path: str, draw) -> None:
  """`draw(file_path)` saves a figure; written atomically like every file."""
  tmp = tempfile.mkdtemp(dir=os.path.dirname(path), prefix=".fig.")
  try:
    draw(os.path.join(tmp, os.path.basename(path)))
    os.chmod(os.path.join(tmp, os.path.basename(path)), 0o666 & ~UMASK)
    os.replace(os.path.join(tmp, os.path.basename(path)), path)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def tidy(arrays: dict, names, num_seeds: int, num_logs: int) -> pd.DataFrame:
  """One row per (seed, logged step): the named `[S, L]` arrays give a column
  of their name, `[S, L, K]` arrays columns `name_0 ... name_{K-1}`
  (predictions `x_pred` give `x_0_pred ...` and errors `x_rel_error`
  `x_0_rel_error ...`, so every metric's theory is its name + `_pred`)."""
  cols = {"seed": np.repeat(np.arange(num_seeds), num_logs)}
  for name in names:
    a = np.asarray(arrays[name])
    flat = a.reshape(num_seeds * num_logs, -1)
    if a.ndim == 2:
      cols[name] = flat[:, 0]
      continue
    base, suffix = name, ""
    for end in ("_pred", "_rel_error"):  # u_pred -> u_0_pred, beside u_0
      if name.endswith(end) and name[:-len(end)] in names:
        base, suffix = name[:-len(end)], end
    cols.update({f"{base}_{i}{suffix}": flat[:, i] for i in range(flat.shape[1])})
  return pd.DataFrame(cols)


CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni",
             "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve")


def machine() -> dict:
  """What a timing depends on: the CPU (model, the SIMD and matrix flags of
  `CPU_FLAGS` it reports, logical cores, cache sizes), the accelerator (JAX's
  device kind), jax and jaxlib, the XLA flags in force and the engine's CPU
  compiler options. Read from /proc/cpuinfo and /sys on Linux (`platform`
  elsewhere); a field the system does not report is None."""
  import jax
  import jaxlib
  from dynamics.devices import compiler_options
  model, flags = platform.processor() or None, set()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model", "CPU part") and model in (None, "", "x86_64"):
          model = value.strip()
        elif key in ("flags", "Features") and not flags:
          flags = set(value.split())
  except OSError:
    pass
  caches = {}
  base = "/sys/devices/system/cpu/cpu0/cache"
  try:
    for index in sorted(os.listdir(base)):
      read = lambda name: open(os.path.join(base, index, name)).read().strip()
      try:
        level, kind, size = read("level"), read("type"), read("size")
      except OSError:
        continue
      if kind != "Instruction":
        caches[f"L{level}"] = size
  except OSError:
    pass
  devices = jax.devices()
  return {"cpu_model": model, "cpu_flags": [f for f in CPU_FLAGS if f in flags],
          "cpu_cores": os.cpu_count(), "cpu_caches": caches or None,
          "backend": jax.default_backend(), "device_kind": devices[0].device_kind,
          "device_count": len(devices), "jax": jax.__version__, "jaxlib": jaxlib.__version__,
          "xla_flags": os.environ.get("XLA_FLAGS"),
          "compiler_options": compiler_options()}


def provenance() -> dict:
  """What produced a run: the command, versions, git commit, devices, date."""
  import jax
  import jaxlib
  from importlib import metadata
  try:
    version = metadata.version("dynamics")
  except metadata.PackageNotFoundError:
    version = None
  here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  commit = dirty = None
  try:
    git = lambda *a: subprocess.run(["git", "-C", here, *a], capture_output=True,
                                    text=True, timeout=10)
    head = git("rev-parse", "HEAD")
    if head.returncode == 0:
      commit = head.stdout.strip()
      dirty = bool(git("status", "--porcelain", "--untracked-files=no").stdout.strip())
  except (OSError, subprocess.SubprocessError):
    pass
  return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "command": [sys.executable] + sys.argv, "cwd": os.getcwd(),
          "dynamics": version, "git_commit": commit, "git_dirty": dirty,
          "python": platform.python_version(), "jax": jax.__version__,
          "jaxlib": jaxlib.__version__, "backend": jax.default_backend(),
          "devices": [str(d) for d in jax.devices()], "host": platform.node(),
          "machine": machine(),
          "env": {k: v for k, v in os.environ.items()
                  if k.startswith("DYNAMICS_") or k in ("XLA_FLAGS", "JAX_PLATFORMS")}}
