"""Run directories, written atomically: a killed run leaves nothing half-written.

A run directory holds `config.json` (the resolved config), `trajectories.npz`
(arrays, loadable with `allow_pickle=False`), `trajectories.parquet` (one row
per seed and logged step, for pandas), `summary.json` (the comparison
figures) and `figure.png`. Everything is written into a temporary sibling
directory that is renamed into place only when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import numpy as np
import pandas as pd


def check_writable(out_dir: str) -> None:
  """Raises ValueError naming `output_dir` if the run cannot be written."""
  parent = os.path.dirname(os.path.abspath(out_dir))
  probe = parent
  while not os.path.exists(probe):
    probe = os.path.dirname(probe)
  if not os.path.isdir(probe) or not os.access(probe, os.W_OK):
    raise ValueError(f"config field `output_dir` ({out_dir!r}) cannot be "
                     f"written: {probe!r} is not a writable directory.")
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise ValueError(f"config field `output_dir` ({out_dir!r}) exists and is "
                     "not a directory.")


def tidy(arrays: dict, num_seeds: int, num_logs: int) -> pd.DataFrame:
  """One row per (seed, logged step): every `[S, L, ...]` array becomes columns.

  `[S, L]` arrays give a column of their name, `[S, L, K]` arrays give columns
  `name_0 ... name_{K-1}` (predictions `x_pred` give `x_0_pred ...`, so
  every metric's prediction is its name + `_pred`); `step` and `t` (`[L]`)
  are repeated per seed.
  """
  cols = {"seed": np.repeat(np.arange(num_seeds), num_logs)}
  for name in ("step", "t"):
    if name in arrays:
      cols[name] = np.tile(np.asarray(arrays[name]), num_seeds)
  for name, a in arrays.items():  # `row_x: [S]` -> column `x`, per seed row
    if name.startswith("row_"):
      cols[name[4:]] = np.repeat(np.asarray(a), num_logs)
  for name, a in arrays.items():
    a = np.asarray(a)
    if a.shape[:2] != (num_seeds, num_logs):
      continue
    flat = a.reshape(num_seeds * num_logs, -1)
    if a.ndim == 2:
      cols[name] = flat[:, 0]
    elif name.endswith("_pred"):  # u_pred -> u_0_pred, beside u_0
      base = name[:-len("_pred")]
      cols.update({f"{base}_{i}_pred": flat[:, i] for i in range(flat.shape[1])})
    else:
      cols.update({f"{name}_{i}": flat[:, i] for i in range(flat.shape[1])})
  return pd.DataFrame(cols)


def json_default(x):
  """`json.dump(..., default=json_default)` for numpy scalars, arrays, tuples."""
  if isinstance(x, np.generic):
    return x.item()
  if isinstance(x, (np.ndarray, tuple)):
    return np.asarray(x).tolist() if isinstance(x, np.ndarray) else list(x)
  raise TypeError(f"not JSON serialisable: {type(x)}")


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
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_run(out_dir: str, config, result: dict) -> str:
  """Writes a run directory atomically, replacing an older one; returns its path."""
  out_dir = os.path.abspath(out_dir)
  parent = os.path.dirname(out_dir)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.", dir=parent)
  try:
    with open(os.path.join(tmp, "config.json"), "w") as f:
      f.write(config.to_json(indent=2))
    arrays = {k: np.asarray(v) for k, v in result["arrays"].items()}
    np.savez(os.path.join(tmp, "trajectories.npz"), **arrays)
    frame = result.get("frame")  # experiments with several parts give their own
    if frame is None:
      frame = tidy(arrays, *arrays["loss"].shape[:2])
    frame.to_parquet(os.path.join(tmp, "trajectories.parquet"), index=False)
    with open(os.path.join(tmp, "summary.json"), "w") as f:
      json.dump(result["summary"], f, indent=2, default=json_default)
    result["plot"](os.path.join(tmp, "figure.png"))
    if os.path.exists(out_dir):
      old = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.old.",
                             dir=parent)
      os.replace(out_dir, os.path.join(old, "run"))
      os.replace(tmp, out_dir)
      shutil.rmtree(old)
    else:
      os.replace(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return out_dir
