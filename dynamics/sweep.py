"""Sweeps: a grid of configs, one compiled vmapped call per shape group.

A config declares its sweep beside the base config, mirroring its fields:

    config.sweep = ml_collections.ConfigDict()
    config.sweep.train = ml_collections.ConfigDict({"lr": (0.01, 0.02)})
    config.sweep.model = ml_collections.ConfigDict({"width": (16, 64)})

The grid is the Cartesian product of the axes. Grid points that differ only
in shape-preserving fields (the experiment's `HPARAMS`: learning rate, init
scale, noise, teacher spectrum) form one group and run as one
`jit(vmap(train))` over (grid point x seed) rows, sharded over every device
and split into chunks that fit `memory_budget_mb`; every other axis (width,
depth, dimensions) makes separate groups, each compiled once. Seed `i` of a
point uses `fold_in(PRNGKey(seed), i)` as in a single run, so its trajectory
does not depend on its group, chunk or device.

A sweep directory holds `config.json`, `grid.json`, `chunks/` (raw outputs,
one atomically written file per finished chunk: rerunning the same command
skips them), and at the end `results.parquet` (one row per grid point, seed
and logged step), `summary.csv` (one row per grid point) and `arrays.npz`.
`load_sweep(dir)` reads them back. Docs: `docs/sweeps.md`.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pandas as pd
from tqdm.auto import tqdm

from dynamics import config as cfg
from dynamics import experiments, io, metrics
from dynamics import train as engine

DEFAULT_MEMORY_BUDGET_MB = 2048
DEFAULT_CHECKPOINT_EVERY_STEPS = 50_000


class Group(NamedTuple):
  points: list      # indices into the grid
  configs: list     # resolved configs, one per point
  rows: int         # points x seeds


def axes(config) -> list[tuple[str, tuple]]:
  """`[(field, values), ...]` from `config.sweep`, checked against the config.

  Raises ValueError, naming the axis, for a field the config lacks (listing
  the valid ones), an empty axis, or a value of the wrong type.
  """
  sweep = config.get("sweep")
  if not sweep:
    return []
  base = _base(config)
  valid = _leaf_fields(base)
  out = []
  for field, values in _leaves(sweep):
    if field not in valid:
      raise ValueError(f"sweep axis `sweep.{field}` names no config field; "
                       f"valid fields: {', '.join(sorted(valid))}.")
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
      raise ValueError(f"sweep axis `sweep.{field}` must be a list of values,"
                       f" got {values!r}.")
    if len(values) == 0:
      raise ValueError(f"sweep axis `sweep.{field}` is empty.")
    kind = type(cfg.get(base, field))
    for v in values:
      if not _same_type(kind, v):
        raise ValueError(f"sweep axis `sweep.{field}` has value {v!r} of type "
                         f"{type(v).__name__}; `{field}` is {kind.__name__}.")
    out.append((field, tuple(values)))
  return out


def grid(config) -> list[dict]:
  """The grid points, `[{field: value}, ...]`, in row-major order of the axes."""
  ax = axes(config)
  return [dict(zip([f for f, _ in ax], combo))
          for combo in itertools.product(*[v for _, v in ax])]


def point_config(config, point: dict):
  """The base config with one grid point's values set."""
  c = _base(config)
  for field, value in point.items():
    section, _, name = field.rpartition(".")
    node = cfg.get(c, section) if section else c
    node[name] = (float(value) if isinstance(node[name], float) else
                  tuple(value) if isinstance(node[name], (tuple, list)) else value)
  return c


def plan(config) -> tuple[list[dict], list[Group]]:
  """Validates every grid point and groups them by shape."""
  points = grid(config) or [{}]
  configs = [point_config(config, p) for p in points]
  experiment = None
  for p, c in zip(points, configs):
    try:
      experiment = experiments.get(c)
    except ValueError as e:
      raise ValueError(f"grid point {p}: {e}") from None
  hparams = set(experiment.HPARAMS)
  groups: dict = {}
  for i, (p, c) in enumerate(zip(points, configs)):
    key = tuple((f, _hashable(v)) for f, v in p.items() if f not in hparams)
    groups.setdefault(key, []).append(i)
  return points, [Group(idx, [configs[i] for i in idx],
                        len(idx) * configs[idx[0]].num_seeds)
                  for idx in groups.values()]


def run_sweep(config, out_dir: str, *, memory_budget_mb: float =
              DEFAULT_MEMORY_BUDGET_MB, checkpoint_every_steps: int =
              DEFAULT_CHECKPOINT_EVERY_STEPS, devices: list | None = None,
              verbose: bool = True) -> str:
  """Runs (or resumes) the sweep into `out_dir` and writes its results table.

  Args:
    config: base config with a `sweep` section (none: a single point).
    out_dir: sweep directory; an existing one is resumed if it holds the same
      config and refused otherwise.
    memory_budget_mb: device memory for one chunk of rows.
    checkpoint_every_steps: a chunk whose runs are longer than this is run
      in segments of about this many steps, with an orbax checkpoint of the
      scan state after each, so a killed sweep resumes mid-trajectory.
    devices: defaults to `jax.devices()`.

  Returns:
    The absolute path of `out_dir`.
  """
  points, groups = plan(config)  # every ValueError before anything is written
  io.check_writable(out_dir)
  out_dir = os.path.abspath(out_dir)
  config_json = _canonical(config)
  old = os.path.join(out_dir, "config.json")
  if os.path.exists(old):
    with open(old) as f:
      if json.load(f) != json.loads(config_json):
        raise ValueError(
            f"{out_dir} holds a sweep with a different config; refusing to mix "
            "results. Use a new --out directory or delete the old one.")
  os.makedirs(os.path.join(out_dir, "chunks"), exist_ok=True)
  _atomic_text(old, config_json)
  _atomic_text(os.path.join(out_dir, "grid.json"), json.dumps(
      {"points": points, "groups": [g.points for g in groups]}, indent=1,
      default=io.json_default))

  devices = jax.devices() if devices is None else devices
  trains = [experiments.get(g.configs[0]).make_train(g.configs[0]) for g in groups]
  plans = [_chunks(g, t, memory_budget_mb, len(devices)) for g, t in zip(groups, trains)]
  bar = tqdm(total=sum(map(len, plans)), desc="sweep chunks", unit="chunk",
             disable=not verbose, dynamic_ncols=True)
  for gi, (group, chunks) in enumerate(zip(groups, plans)):
    todo = [(ci, sl) for ci, sl in enumerate(chunks)
            if not os.path.exists(_chunk_path(out_dir, gi, ci))]
    bar.update(len(chunks) - len(todo))
    if not todo:
      continue
    start = time.perf_counter()
    c0 = group.configs[0]
    experiment = experiments.get(c0)
    keys, hps = _rows(group, experiment)
    num_logs = c0.train.num_steps // c0.train.log_every
    per_segment = max(1, checkpoint_every_steps // c0.train.log_every)
    if per_segment < num_logs:
      segments = _segmented(experiment, c0, num_logs, per_segment)
    else:  # the train _chunks traced for its memory estimate
      fn = engine.vmap_rows(trains[gi], 1, batched=True)
    for ci, sl in todo:
      rows_hps = jax.tree_util.tree_map(lambda a: a[sl], hps)
      path = _chunk_path(out_dir, gi, ci)
      if per_segment < num_logs:
        out = segments(keys[sl], rows_hps, path + ".ckpt", devices)
      else:
        out = engine.run_rows(fn, keys[sl], rows_hps, devices=devices)
      _atomic_npz(path, {k: np.asarray(v) for k, v in out.items()})
      if os.path.isdir(path + ".ckpt"):
        shutil.rmtree(path + ".ckpt")
      bar.update(1)
    if verbose:
      shape = {f: v for f, v in points[group.points[0]].items()
               if f not in experiment.HPARAMS} or "all shape-preserving"
      bar.write(f"group {gi + 1}/{len(groups)} ({shape}): "
                f"{len(group.points)} points x seeds = {group.rows} rows in "
                f"{len(chunks)} chunk(s), {time.perf_counter() - start:.1f} s")
  bar.close()
  summary = _collect(out_dir, points, groups, plans)
  if verbose:
    print(brief(summary, [f for f, _ in axes(config)]).to_string(index=False))
  return out_dir


def brief(summary: pd.DataFrame, swept: list[str]) -> pd.DataFrame:
  """Per grid point: swept fields, diverged seeds, and the worst value over
  modes/outputs of every error figure (`a.0.x_error`, `a.1.x_error` -> `x_error`)."""
  out = summary[["point", *swept, "diverged_seeds"]].copy()
  errors: dict = {}
  for col in summary.columns:
    name = col.rsplit(".", 1)[-1]
    if "error" in name and pd.api.types.is_numeric_dtype(summary[col]):
      errors.setdefault(f"{col.split('.', 1)[0]}.{name}" if col.startswith("loss")
                        else name, []).append(col)
  for name, cols in errors.items():
    out[name] = summary[cols].max(axis=1)
  return out


def load_sweep(out_dir: str) -> tuple[pd.DataFrame, dict]:
  """The results of a finished sweep.

  Returns:
    `(table, arrays)`: `table` has one row per (grid point, seed, logged
    step) with a column per swept field and per scalar metric (and its
    theory prediction `*_pred` and error `*_rel_error` where the experiment
    has one); `arrays[point][name]` are that point's arrays. The per-point
    summary is `pd.read_csv(out_dir/summary.csv)`.
  """
  path = os.path.join(out_dir, "results.parquet")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{out_dir} has no results.parquet: the sweep has "
                            "not finished; rerun the same command to resume.")
  arrays: dict = {}
  with np.load(os.path.join(out_dir, "arrays.npz"), allow_pickle=False) as z:
    for name in z.files:
      point, _, key = name.partition("/")
      arrays.setdefault(int(point), {})[key] = z[name]
  return pd.read_parquet(path), arrays


# ---------------------------------------------------------------------------


def _rows(group: Group, experiment):
  """Keys and stacked hyperparameters of a group's (point x seed) rows."""
  seeds = {(c.seed, c.num_seeds) for c in group.configs}
  seeds = {s: np.asarray(engine.seed_keys(*s)) for s in seeds}  # usually one
  keys = np.concatenate([seeds[c.seed, c.num_seeds] for c in group.configs])
  per_row = [jax.tree_util.tree_map(
      lambda x, n=c.num_seeds: np.broadcast_to(np.asarray(x), (n,) + np.shape(x)),
      experiment.hparams(c)) for c in group.configs]
  hps = jax.tree_util.tree_map(lambda *a: jnp.asarray(np.concatenate(a)), *per_row)
  return jnp.asarray(keys), hps


def _segmented(experiment, config, num_logs: int, per_segment: int):
  """`run(keys, hps, ckpt_dir, devices)`: a chunk of rows in segments of
  `per_segment` logged intervals. After each segment its logged metrics are
  written (`seg_<start>.npz`), then an orbax checkpoint of the scan state
  (`state_<done>`); a rerun restores the newest complete checkpoint and the
  segments before it, and continues."""
  start, advance = experiment.make_segments(config)
  vstart = engine.vmap_rows(start, 1)
  vadvance: dict = {}  # per segment length: one row function, one compilation

  def advance_rows(n: int) -> engine.Rows:
    if n not in vadvance:
      vadvance[n] = engine.vmap_rows(lambda state, hps: advance(state, hps, n), 1)
    return vadvance[n]

  checkpointer = ocp.StandardCheckpointer()

  def run(keys, hps, ckpt_dir, devices):
    rows = keys.shape[0]
    # the engine's plan (devices, cache-sized chunks), from both programs
    devices = engine.plan_rows(vstart, keys, hps, devices=devices).devices
    state0 = jax.eval_shape(jax.vmap(start), keys, hps)[0]
    plan = engine.plan_rows(advance_rows(per_segment), state0, hps, devices=devices)
    groups, chunk = len(plan.devices), plan.chunk
    keys, (hps,) = engine.pad_and_shard(keys, hps, devices=plan.devices,
                                        multiple=max(chunk, 1))
    state, extras, first = vstart(keys, hps, groups=groups, chunk=chunk)
    os.makedirs(ckpt_dir, exist_ok=True)
    saved = sorted(int(d.split("_")[1]) for d in os.listdir(ckpt_dir)
                   if d.startswith("state_") and d[6:].isdigit())
    done = saved[-1] if saved else 0
    if done:
      target = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state)
      state = checkpointer.restore(os.path.join(ckpt_dir, f"state_{done:08d}"),
                                   target)
    logged = []
    for a in range(0, done, per_segment):
      with np.load(os.path.join(ckpt_dir, f"seg_{a:08d}.npz")) as z:
        logged.append({k: z[k] for k in z.files})
    while done < num_logs:
      n = min(per_segment, num_logs - done)
      state, seg = advance_rows(n)(state, hps, groups=groups, chunk=chunk)
      seg = {k: np.asarray(v) for k, v in seg.items()}  # [rows, n, ...]
      _atomic_npz(os.path.join(ckpt_dir, f"seg_{done:08d}.npz"), seg)
      logged.append(seg)
      done += n
      checkpointer.save(os.path.join(ckpt_dir, f"state_{done:08d}"), state)
      checkpointer.wait_until_finished()
      for old in saved:
        shutil.rmtree(os.path.join(ckpt_dir, f"state_{old:08d}"),
                      ignore_errors=True)
      saved = [done]
    first = {k: np.asarray(v)[:, None] for k, v in first.items()}
    out = {k: np.concatenate([first[k]] + [g[k] for g in logged], axis=1)
           for k in first}
    out.update({k: np.asarray(v) for k, v in extras.items()})
    out["diverged_at"] = np.asarray(state.diverged_at)
    return {k: v[:rows] for k, v in out.items()}

  return run


def _chunks(group: Group, train, budget_mb: float, num_devices: int) -> list[slice]:
  """Splits a group's rows into chunks that fit the memory budget.

  The memory of a row is estimated from the shapes of `train`'s outputs (the
  logged trajectories, `steps / log_every x metrics`), times 3 for the scan's
  stacked buffers and the copy out; chunk sizes are a multiple of the device
  count so every device gets the same share.
  """
  c0 = group.configs[0]
  experiment = experiments.get(c0)
  shapes = jax.eval_shape(train, jax.random.PRNGKey(0), experiment.hparams(c0))
  row_bytes = 3 * sum(int(np.prod(s.shape)) * s.dtype.itemsize
                      for s in jax.tree_util.tree_leaves(shapes))
  per_chunk = int(budget_mb * 2**20 // max(row_bytes, 1))
  per_chunk = max(num_devices, per_chunk - per_chunk % num_devices)
  per_chunk = min(per_chunk, group.rows + (-group.rows % num_devices))
  return [slice(a, min(a + per_chunk, group.rows))
          for a in range(0, group.rows, per_chunk)]


def _collect(out_dir, points, groups, plans) -> pd.DataFrame:
  """Assembles chunks into per-point results, the table and the summary."""
  frames, summaries, arrays = [], [], {}
  for gi, (group, chunks) in enumerate(zip(groups, plans)):
    parts = []
    for ci in range(len(chunks)):
      with np.load(_chunk_path(out_dir, gi, ci), allow_pickle=False) as z:
        parts.append({k: z[k] for k in z.files})
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    offset = 0
    for p, c in zip(group.points, group.configs):
      n = c.num_seeds
      seeds = {k: v[offset:offset + n] for k, v in out.items()}
      offset += n
      frame, summary, point_arrays = _analyze_point(c, seeds, points[p])
      frames.append(frame.assign(point=p))
      summaries.append({"point": p, **_flat(points[p]), **summary})
      arrays.update({f"{p}/{k}": v for k, v in point_arrays.items()})
  table = pd.concat(frames, ignore_index=True)
  cols = ["point"] + [c for c in table.columns if c != "point"]
  table = table[cols].sort_values(["point", "seed", "step"], kind="stable")
  summary = pd.DataFrame(summaries).sort_values("point", kind="stable")
  _atomic_npz(os.path.join(out_dir, "arrays.npz"), arrays)
  io.atomic_write(os.path.join(out_dir, "summary.csv"),
                  lambda f: summary.to_csv(f, index=False))
  io.atomic_write(os.path.join(out_dir, "results.parquet"),
                  lambda f: table.to_parquet(f, index=False))
  return summary


def _analyze_point(config, out: dict, point: dict):
  """Masks diverged seeds, runs the experiment's analysis, tidies the result."""
  steps = np.arange(0, config.train.num_steps + 1, config.train.log_every)
  diverged_at = out.pop("diverged_at", None)
  if diverged_at is None:
    diverged_at = np.where(np.isfinite(out["loss"]).all(-1), -1,
                           steps[np.argmin(np.isfinite(out["loss"]), -1)])
  diverged = diverged_at >= 0
  # Values logged after the divergence step are masked; before it they stand.
  after = diverged[:, None] & (steps[None, :] > diverged_at[:, None])
  constant = getattr(experiments.get(config), "CONSTANT_OUTPUTS", ())
  for name, a in out.items():
    if a.ndim >= 2 and a.shape[1] == len(steps) and name not in constant:
      out[name] = np.where(after.reshape(after.shape + (1,) * (a.ndim - 2)),
                           np.nan, a.astype(np.float64))
  result = experiments.get(config).analyze(config, out)
  arrays = result["arrays"]
  frame = io.tidy(arrays, config.num_seeds, len(steps))
  for name in list(frame.columns):
    if f"{name}_pred" in frame.columns:
      err = metrics.pointwise_relative_error(
          frame[name].to_numpy().reshape(config.num_seeds, -1),
          frame[f"{name}_pred"].to_numpy().reshape(config.num_seeds, -1))
      frame[f"{name}_rel_error"] = err.reshape(-1)
  for field, value in _flat(point).items():
    frame[field] = value
  frame["diverged"] = np.repeat(diverged, len(steps))
  frame["diverged_step"] = np.repeat(diverged_at, len(steps))
  summary = {"diverged_seeds": int(diverged.sum()),
             **_flat(result["summary"], skip=("theory", "note"))}
  return frame, summary, arrays


def _base(config):
  c = ml_collections.ConfigDict(config.to_dict())
  if "sweep" in c:
    del c["sweep"]
  return c


def _leaves(node, prefix=""):
  for k, v in node.items():
    if isinstance(v, (ml_collections.ConfigDict, dict)):
      yield from _leaves(v, f"{prefix}{k}.")
    else:
      yield f"{prefix}{k}", v


def _leaf_fields(config) -> set:
  return {f for f, _ in _leaves(config)}


def _same_type(kind, v) -> bool:
  if kind is float:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
  if kind in (tuple, list):
    return isinstance(v, (tuple, list))
  return isinstance(v, kind) and not (kind is int and isinstance(v, bool))


def _hashable(v):
  return tuple(v) if isinstance(v, list) else v


def _flat(d, prefix="", skip=()) -> dict:
  out = {}
  for k, v in (d.items() if isinstance(d, dict) else enumerate(d)):
    if k in skip:
      continue
    if isinstance(v, (dict, list)) and not (isinstance(v, list) and v and
                                            not isinstance(v[0], dict)):
      out.update(_flat(v, f"{prefix}{k}.", skip))
    else:
      out[f"{prefix}{k}"] = str(v) if isinstance(v, (list, tuple)) else v
  return out


def _canonical(config) -> str:
  d = config.to_dict()
  d.pop("output_dir", None)
  return json.dumps(d, indent=2, sort_keys=True, default=io.json_default)


def _chunk_path(out_dir, group, chunk) -> str:
  return os.path.join(out_dir, "chunks", f"g{group:04d}_c{chunk:05d}.npz")


def _atomic_npz(path, arrays) -> None:
  io.atomic_write(path, lambda f: np.savez(f, **arrays))


def _atomic_text(path, text) -> None:
  io.atomic_write(path, lambda f: f.write(text.encode()))
