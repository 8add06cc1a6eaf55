"""Every run is a sweep: a grid of configs, one compiled vmapped call per shape group.

A config declares its grid beside the base config, mirroring its fields:

    config.sweep = ml_collections.ConfigDict()
    config.sweep.train = ml_collections.ConfigDict({"lr": (0.01, 0.02)})
    config.sweep.model = ml_collections.ConfigDict({"width": (16, 64)})

The grid is the Cartesian product of the axes (no axes: one point, the base
config). Grid points that differ only in shape-preserving fields (the
experiment's `HPARAMS`: learning rate, init scale, ...) form one group and
run as one `jit(vmap(train))` over (grid point x seed) rows; every other
field (width, depth, dimensions) makes separate groups, each compiled once.
Seed `i` of a point uses `fold_in(PRNGKey(seed), i)` as in a single run, so
its trajectory does not depend on its group, chunk or device.

`simulate(config)` runs a grid in memory; `run_sweep(config, out_dir)` runs
it into a directory it can resume after a kill, and writes the results table,
the summaries and the figures; `load_sweep(out_dir)` reads the table back.
The experiment (`config.experiment`) follows the protocol of
`dynamics.experiments`. Docs: `docs/sweeps.md`, `docs/experiments.md`.
"""

from __future__ import annotations

import contextlib
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

from dynamics import _rows, io, metrics, progress
from dynamics import config as cfg
from dynamics import experiments as protocol
from dynamics.devices import compiler_options
from dynamics import train as engine

DEFAULT_MEMORY_BUDGET_MB = 2048
DEFAULT_CHECKPOINT_EVERY_STEPS = 50_000
FIGURES = ("auto", "all", "none")
AUTO_FIGURES = 24  # per-point figures drawn by default up to this many points


class Group(NamedTuple):
  points: list      # indices into the grid
  configs: list     # resolved configs, one per point
  rows: int         # points x seeds


class Plan(NamedTuple):
  experiment: object  # the experiment module
  points: list        # [{field: value}] per grid point
  configs: list       # resolved config per grid point
  groups: list        # [Group]


class Point(NamedTuple):
  """One grid point's results (in memory: `simulate`)."""
  index: int
  fields: dict    # the swept values
  config: object  # resolved config
  step: np.ndarray  # [L] logged steps
  t: np.ndarray     # [L] their time, lr x step
  out: dict       # train's outputs, [S, ...]; logged values after divergence NaN
  pred: dict      # theory beside `out`
  summary: dict   # experiment summary, `num_seeds`, `diverged_seeds`
  frame: pd.DataFrame  # this point's rows of the results table


def axes(config) -> list[tuple[str, tuple]]:
  """`[(field, values), ...]` from `config.sweep`, checked against the config.

  Raises ValueError, naming the axis, for a field the config lacks (with the
  closest names), an empty axis, or a value of the wrong type. A single value
  is an axis of one.
  """
  sweep = config.get("sweep")
  if not sweep:
    return []
  base = _base(config)
  valid = set(cfg.leaf_fields(base))
  out = []
  for field in cfg.leaf_fields(sweep):
    values = cfg.get(sweep, field)
    if field not in valid:
      raise ValueError(f"sweep axis `sweep.{field}` names no config field."
                       + cfg.suggest(field, valid))
    kind = type(cfg.get(base, field))
    if isinstance(values, (str, bytes)) or not isinstance(values, (tuple, list)) \
        or (kind in (tuple, list) and values and not isinstance(values[0], (tuple, list))):
      values = (values,)
    if len(values) == 0:
      raise ValueError(f"sweep axis `sweep.{field}` is empty.")
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
  """The base config (no `sweep`) with one grid point's values set."""
  c = _base(config)
  for field, value in point.items():
    section, _, name = field.rpartition(".")
    node = cfg.get(c, section) if section else c
    node[name] = (float(value) if isinstance(node[name], float) else
                  tuple(value) if isinstance(node[name], (tuple, list)) else value)
  return c


def plan(config) -> Plan:
  """Loads the experiment, validates every grid point, groups them by shape."""
  experiment = protocol.load(config)
  points = grid(config) or [{}]
  configs = [point_config(config, p) for p in points]
  for p, c in zip(points, configs):
    try:
      protocol.validate(experiment, c)
    except ValueError as e:
      raise ValueError(f"grid point {p}: {e}" if p else str(e)) from None
  if len({c.precision for c in configs}) > 1:
    raise ValueError("sweep axis `sweep.precision` cannot vary within one sweep.")
  hparams = set(getattr(experiment, "HPARAMS", {}))
  groups: dict = {}
  for i, p in enumerate(points):
    key = tuple((f, _hashable(v)) for f, v in p.items() if f not in hparams)
    groups.setdefault(key, []).append(i)
  return Plan(experiment, points, configs,
              [Group(idx, [configs[i] for i in idx],
                     sum(configs[i].num_seeds for i in idx)) for idx in groups.values()])


def simulate(config) -> tuple[list[Point], dict]:
  """Trains and analyzes every grid point in memory; nothing is written.

  Returns:
    `(points, sweep_summary)`: a `Point` per grid point, and the
    experiment's `sweep_summary` ({} without one or with one point).
  """
  p = plan(config)
  with _precision(p):
    return _simulate(p)


def _simulate(p: Plan):
  trains = [_train(p.experiment, g) for g in p.groups]
  results = [None] * len(p.points)
  with progress.bar(sum(g.rows * t.steps for g, t in zip(p.groups, trains)), "train"):
    for group, (train, _, _) in zip(p.groups, trains):
      keys, hps = _group_rows(p.experiment, group)
      out = _rows.run_rows(_rows.vmap_rows(train, 1), keys, hps)
      for i, o in _split(group, jax.tree_util.tree_map(np.asarray, out)):
        results[i] = analyze(p.experiment, p.configs[i], o, p.points[i], i)
  return results, _sweep_summary(p, results)


def run_sweep(config, out_dir: str, *, memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
              checkpoint_every_steps: int = DEFAULT_CHECKPOINT_EVERY_STEPS,
              figures: str = "auto", out_name: str = "--out",
              verbose: bool = True) -> str:
  """Runs (or resumes) the grid into `out_dir`; writes the table, summaries, figures.

  Args:
    config: base config, its grid in `config.sweep` (none: a single point).
    out_dir: the run directory. An existing one is resumed if it holds the
      same config, and refused (nothing touched) otherwise.
    memory_budget_mb: memory for one chunk of (point x seed) rows; every
      finished chunk is a file, so a killed run loses at most one chunk.
    checkpoint_every_steps: runs longer than this are run in segments with an
      orbax checkpoint of the scan state after each, for experiments that
      define `make_segments`.
    figures: `'auto'` (the grid's figure, and each point's up to 24 points),
      `'all'`, or `'none'`.
    out_name: what to call `out_dir` in errors (the flag the user set).
    verbose: progress bar and the console report.

  Returns:
    The absolute path of `out_dir`. Files: `docs/sweeps.md`.
  """
  if not (isinstance(memory_budget_mb, (int, float)) and memory_budget_mb > 0):
    raise ValueError(f"--memory_budget_mb must be > 0, got {memory_budget_mb!r}.")
  if not (isinstance(checkpoint_every_steps, int) and checkpoint_every_steps > 0):
    raise ValueError(f"--checkpoint_every_steps must be a positive integer, "
                     f"got {checkpoint_every_steps!r}.")
  if figures not in FIGURES:
    raise ValueError(f"--figures must be one of {FIGURES}, got {figures!r}.")
  _rows.env_chunk(), compiler_options()  # the engine's settings, checked before writing
  p = plan(config)  # every ValueError before anything is written
  with _precision(p):
    return _run_sweep(p, config, out_dir, memory_budget_mb, checkpoint_every_steps,
                      figures, out_name, verbose)


def _run_sweep(p, config, out_dir, memory_budget_mb, checkpoint_every_steps, figures,
               out_name, verbose):
  out_dir = os.path.abspath(out_dir)
  config_json = _canonical(config)
  execution = {"backend": jax.default_backend(), "devices": jax.device_count(),
               "processes": jax.process_count(),
               "chunk_rows": os.environ.get("DYNAMICS_CHUNK_ROWS")}
  if jax.process_index() > 0:  # under jax.distributed: process 0 writes
    state = _shared(None)
    if "error" in state:
      raise ValueError(state["error"])
    return _run_locked(p, out_dir, memory_budget_mb, checkpoint_every_steps, figures,
                       False, state["grid"], config_json, execution, state["todo"])
  sent = []  # whether the other processes have their state

  def share(state):
    if jax.process_count() > 1:
      _shared(state)
    sent.append(True)

  try:
    io.check_writable(out_dir, out_name)
    _check_resumable(out_dir, config_json, execution, out_name)  # before writing anything
    io.makedirs(out_dir)
    with io.lock(out_dir, out_name):
      # again under the lock: a writer that held it may have changed the directory
      old_grid = _check_resumable(out_dir, config_json, execution, out_name)
      return _run_locked(p, out_dir, memory_budget_mb, checkpoint_every_steps, figures,
                         verbose, old_grid, config_json, execution, share=share)
  except ValueError as e:
    if not sent:  # refused before the run began: the others stop too
      share({"error": f"the writing process (0) refused: {e}"})
    raise


def _shared(obj):
  """Process 0's JSON-able `obj`, on every process (`jax.distributed`)."""
  from jax.experimental import multihost_utils
  data = np.frombuffer(json.dumps(obj).encode(), np.uint8) if obj is not None else \
      np.zeros(0, np.uint8)
  n = int(multihost_utils.broadcast_one_to_all(np.int32(data.size)))
  buf = np.zeros(n, np.uint8)
  buf[:data.size] = data[:n]
  return json.loads(np.asarray(multihost_utils.broadcast_one_to_all(buf)).tobytes())


def _run_locked(p, out_dir, memory_budget_mb, checkpoint_every_steps, figures, verbose,
                old_grid, config_json, execution, todo=None, share=None):
  """Runs what is left of the grid. On process 0 (the only one, or the writer
  under `jax.distributed`) `old_grid` is the stored grid or None; the other
  processes get process 0's grid and `todo` chunks, run the same calls (rows
  sharded over every process's devices) and write nothing."""
  writer = jax.process_index() == 0
  trains = [_train(p.experiment, g) for g in p.groups]
  if not writer:
    grid_json = old_grid
    chunks = [g["chunks"] for g in grid_json["groups"]]
  elif old_grid is None:
    chunks = [_chunk_slices(g, t, memory_budget_mb, jax.device_count())
              for g, t in zip(p.groups, trains)]
    grid_json = {"points": p.points, "execution": execution,
                 "checkpoint_every_steps": checkpoint_every_steps,
                 "groups": [{"points": g.points, "chunks": c} for g, c in zip(p.groups, chunks)]}
  else:  # resume with the layout the run began with: the same rows in each chunk
    grid_json = old_grid
    chunks = [g["chunks"] for g in grid_json["groups"]]
    checkpoint_every_steps = grid_json["checkpoint_every_steps"]
  if writer:
    _remove_temporaries(out_dir)  # of writes a kill interrupted (we hold the lock)
    io.makedirs(os.path.join(out_dir, "chunks"))
    prov = _read_json(os.path.join(out_dir, "provenance.json"), [])
    io.write_json(os.path.join(out_dir, "provenance.json"), prov + [io.provenance()])
    if old_grid is None:
      io.atomic_write(os.path.join(out_dir, "config.json"),
                      lambda f: f.write(config_json.encode()))
      io.write_json(os.path.join(out_dir, "grid.json"), grid_json)
    todo = [[ci for ci in range(len(chunks[gi]))
             if not os.path.exists(_chunk_path(out_dir, gi, ci))] for gi in range(len(chunks))]
    share({"grid": grid_json, "todo": todo})

  total = sum(g.rows * t.steps for g, t in zip(p.groups, trains))
  with progress.bar(total, "sweep" if len(p.points) > 1 else "train",
                    disable=not verbose) as bar:
    for gi, (group, (train, steps, _)) in enumerate(zip(p.groups, trains)):
      pending = set(todo[gi])
      todo_gi = [(ci, sl) for ci, sl in enumerate(chunks[gi]) if ci in pending]
      bar.skip(steps * sum(b - a for ci, (a, b) in enumerate(chunks[gi])
                           if ci not in pending))
      if not todo_gi:
        continue
      start = time.perf_counter()
      keys, hps = _group_rows(p.experiment, group)
      # under jax.distributed the chunk files are the only checkpoints
      segments = None if jax.process_count() > 1 else _segments(
          p.experiment, group.configs[0], checkpoint_every_steps)
      fn = _rows.vmap_rows(train, 1) if segments is None else None
      for ci, (a, b) in todo_gi:
        path = _chunk_path(out_dir, gi, ci)
        rows_hps = jax.tree_util.tree_map(lambda x: x[a:b], hps)
        if segments is None:
          out = _rows.run_rows(fn, keys[a:b], rows_hps)
        else:
          out = segments(keys[a:b], rows_hps, path + ".ckpt")
        if writer:
          io.write_npz(path, jax.tree_util.tree_map(np.asarray, out))
          shutil.rmtree(path + ".ckpt", ignore_errors=True)
      if verbose and len(p.groups) > 1:
        shape = {f: v for f, v in p.points[group.points[0]].items()
                 if f not in getattr(p.experiment, "HPARAMS", {})}
        bar.write(f"group {gi + 1}/{len(p.groups)} ({_fields_text(shape)}): "
                  f"{len(group.points)} point(s), {group.rows} rows, "
                  f"{len(chunks[gi])} chunk(s), {time.perf_counter() - start:.1f} s")
  if not writer:
    return out_dir
  summaries, sweep = _collect(out_dir, p, chunks, figures, verbose)
  _remove_temporaries(out_dir)
  if verbose:
    print(report(p, summaries, sweep))
  return out_dir


def analyze(experiment, config, out: dict, fields: dict, index: int = 0) -> Point:
  """One grid point: masks values logged after a seed diverged, runs the
  experiment's theory and summary (over the seeds that did not diverge), and
  builds the point's rows of the results table."""
  out = dict(out)
  step, t = protocol.log_times(experiment, config)
  num_seeds, num_logs = config.num_seeds, len(step)
  constants = set(getattr(experiment, "CONSTANTS", ()))
  logged = [k for k, a in out.items() if k != "diverged_at" and a.ndim >= 2
            and a.shape[1] == num_logs and k not in constants]
  diverged_at = out.pop("diverged_at", None)
  if diverged_at is None and "loss" in out:  # no train state: the first non-finite loss
    finite = np.isfinite(out["loss"])
    diverged_at = np.where(finite.all(-1), -1, step[np.argmin(finite, -1)])
  elif diverged_at is None:
    diverged_at = np.full(num_seeds, -1)
  diverged_at = np.asarray(diverged_at)
  diverged = diverged_at >= 0
  after = diverged[:, None] & (step[None, :] > diverged_at[:, None])
  for k in logged:
    out[k] = np.where(after.reshape(after.shape + (1,) * (out[k].ndim - 2)), np.nan,
                      out[k].astype(np.float64))
  with jax.enable_x64(True):  # theory in float64 whatever the run's precision
    pred = protocol.theory(experiment, config, out)
  kept = ~diverged
  summary = {"num_seeds": int(num_seeds), "diverged_seeds": int(diverged.sum())}
  if kept.any():
    seeds = lambda d, ref: {k: (v[kept] if v.ndim == ref[k].ndim else v)
                            for k, v in d.items()}
    summary.update(protocol.summarize(experiment, config,
                                      {k: v[kept] for k, v in out.items()},
                                      seeds(pred, out)))
  # the table: chosen metrics, their theory and its error, per seed and step
  names = list(getattr(experiment, "TABLE", None) or
               [k for k in logged if out[k].ndim <= 3])
  arrays = {k: out[k] for k in names}
  for k in names:
    if k in pred:
      p = np.broadcast_to(pred[k], out[k].shape)
      arrays[f"{k}_pred"] = p
      arrays[f"{k}_rel_error"] = metrics.pointwise_relative_error(out[k], p, axis=1)
  frame = io.tidy(arrays, list(arrays), num_seeds, num_logs)
  frame.insert(1, "step", np.tile(step, num_seeds))
  frame.insert(2, "t", np.tile(t, num_seeds))
  frame["diverged"] = np.repeat(diverged, num_logs)
  frame["diverged_step"] = np.repeat(diverged_at, num_logs)
  for f, v in fields.items():
    frame[f] = str(v) if isinstance(v, (tuple, list)) else v
  frame.insert(0, "point", index)
  out["diverged_at"] = diverged_at
  return Point(index, fields, config, step, t, out, pred, summary, frame)


def report(p: Plan, summaries: list[dict], sweep: dict) -> str:
  """The console report: each point's lines (up to 12 points) or one row per
  point, divergence always, then the sweep summary."""
  lines = []
  if len(p.points) <= 12:
    for i, (c, s) in enumerate(zip(p.configs, summaries)):
      if len(p.points) > 1:
        lines.append(f"point {i}: {_fields_text(p.points[i])}")
      lines.append(_diverged_text(s))
      if s["diverged_seeds"] < s["num_seeds"]:
        lines.append(protocol.text(p.experiment, c, s))
  else:
    if len(p.points) <= 40:
      frame = pd.DataFrame([{"point": i, **{f: str(v) for f, v in pt.items()},
                             **protocol.flat(s)} for i, (pt, s) in
                            enumerate(zip(p.points, summaries))])
      lines.append(brief(frame, list(p.points[0])).to_string(index=False))
    else:
      lines.append(f"{len(p.points)} grid points: one row each in summary.csv.")
    bad = sum(s["diverged_seeds"] for s in summaries)
    if bad:
      lines.append(f"{bad} seed(s) diverged in all (column diverged_seeds); "
                   "aggregates leave them out.")
  lines = [line for line in lines if line]
  if sweep:
    text = getattr(p.experiment, "sweep_text", None)
    lines += ["", text(p.configs[0], sweep) if text else
              "\n".join(f"{k}: {v}" for k, v in protocol.flat(sweep).items())]
  return "\n".join(lines)


def brief(summary: pd.DataFrame, swept: list[str]) -> pd.DataFrame:
  """Per grid point: swept fields, diverged seeds, and the worst value over
  modes/outputs of every error figure (`modes.0.x_error` -> `x_error`)."""
  out = summary[["point", *swept, "diverged_seeds"]].copy()
  errors: dict = {}
  for col in summary.columns:
    name = col.rsplit(".", 1)[-1]
    if "error" in name and pd.api.types.is_numeric_dtype(summary[col]):
      errors.setdefault(name, []).append(col)
  for name, cols in list(errors.items())[:6]:
    out[name] = summary[cols].max(axis=1)
  return out


def load_sweep(out_dir: str) -> pd.DataFrame:
  """The results table of a finished run: one row per (grid point, seed,
  logged step), with `point`, every swept field, `seed`, `step`, `t`, every
  table metric, its theory `*_pred` and error `*_rel_error`, `diverged`,
  `diverged_step`. Per point: `load_summary`; arrays: `load_arrays`."""
  return pd.read_parquet(_finished(out_dir, "results.parquet"))


def load_summary(out_dir: str) -> pd.DataFrame:
  """One row per grid point: swept fields, `diverged_seeds`, and the
  experiment's summary flattened (`modes.0.learning_time_measured`)."""
  return pd.read_csv(_finished(out_dir, "summary.csv"))


def load_arrays(out_dir: str, point: int = 0) -> dict:
  """Every array of one grid point: train's outputs (`[S, ...]`), their
  theory (`*_pred`), `step`, `t`, `diverged_at`."""
  with np.load(_finished(out_dir, os.path.join("points", f"p{point:05d}.npz")),
               allow_pickle=False) as z:
    return {k: z[k] for k in z.files}


# ---------------------------------------------------------------------------


def _precision(p: Plan):
  """x64 on for the run of a float64 config (and off again after)."""
  if p.configs[0].precision == "float64":
    return jax.enable_x64(True)
  return contextlib.nullcontext()


def _finished(out_dir, name) -> str:
  path = os.path.join(out_dir, name)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{out_dir} has no {name}: the run has not finished "
                            "(rerun the same command to resume) or it is not a run "
                            "directory.")
  return path


class Train(NamedTuple):
  fn: object        # the group's train(key, hp)
  steps: int        # optimizer steps of one row
  row_bytes: int    # bytes of one row's outputs


def _train(experiment, group: Group) -> Train:
  """The group's train function, built once, and one trace of it (shapes)."""
  c0 = group.configs[0]
  train = experiment.make_train(c0)
  with progress.counting() as steps:
    shapes = jax.eval_shape(train, jax.random.PRNGKey(0), protocol.hparams(experiment, c0))
  return Train(train, sum(steps), sum(int(np.prod(s.shape)) * s.dtype.itemsize
                                      for s in jax.tree_util.tree_leaves(shapes)))


def _group_rows(experiment, group: Group):
  """Keys and stacked hyperparameters of a group's (point x seed) rows."""
  seeds = {(c.seed, c.num_seeds) for c in group.configs}
  seeds = {s: np.asarray(engine.seed_keys(*s)) for s in seeds}  # usually one
  keys = np.concatenate([seeds[c.seed, c.num_seeds] for c in group.configs])
  per_row = [jax.tree_util.tree_map(
      lambda x, n=c.num_seeds: np.broadcast_to(np.asarray(x), (n,) + np.shape(x)),
      protocol.hparams(experiment, c)) for c in group.configs]
  hps = jax.tree_util.tree_map(lambda *a: jnp.asarray(np.concatenate(a)), *per_row)
  return jnp.asarray(keys), hps


def _split(group: Group, out: dict):
  """`(point index, its rows of out)` for each point of a group."""
  offset = 0
  for i, c in zip(group.points, group.configs):
    yield i, {k: v[offset:offset + c.num_seeds] for k, v in out.items()}
    offset += c.num_seeds


def _remove_temporaries(out_dir) -> None:
  """The temporaries (`.name.XXXX`, `.table/`) of writes a kill interrupted;
  not the lock, not the `.ckpt/` checkpoints of unfinished chunks."""
  for sub in ("", "chunks", "points"):
    if not os.path.isdir(os.path.join(out_dir, sub)):
      continue
    for name in os.listdir(os.path.join(out_dir, sub)):
      path = os.path.join(out_dir, sub, name)
      if name.startswith(".") and name != io.LOCK:
        shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)


def _point_rows(out_dir, gi: int, group: Group, num_chunks: int):
  """`(point index, its rows)` for each point of group `gi`, reading its chunk
  files in order and holding no more than a chunk and a point's rows (the
  rows are point-major, so each point's seeds are contiguous)."""
  sizes = iter(zip(group.points, [c.num_seeds for c in group.configs]))
  want = next(sizes, None)
  buf = []
  for ci in range(num_chunks):
    with np.load(_chunk_path(out_dir, gi, ci), allow_pickle=False) as z:
      buf.append({k: z[k] for k in z.files})
    have = sum(len(next(iter(b.values()))) for b in buf)
    while want is not None and have >= want[1]:
      rows = buf[0] if len(buf) == 1 else {
          k: np.concatenate([b[k] for b in buf]) for k in buf[0]}
      i, n = want
      yield i, {k: v[:n] for k, v in rows.items()}
      buf, have, want = [{k: v[n:] for k, v in rows.items()}], have - n, next(sizes, None)


def _segments(experiment, config, every: int):
  """`run(keys, hps, ckpt_dir)` running rows in segments of about `every`
  steps, or None (no `make_segments`, or runs no longer than `every`). After
  each segment its logged metrics are written (`seg_<start>.npz`), then an
  orbax checkpoint of the scan state (`state_<done>`); a rerun restores the
  newest complete checkpoint and the segments before it, and continues."""
  if not hasattr(experiment, "make_segments"):
    return None
  step, _ = protocol.log_times(experiment, config)
  num_logs, log_every = len(step) - 1, int(step[1] - step[0])
  per_segment = max(1, every // log_every)
  if per_segment >= num_logs:
    return None
  start, advance = experiment.make_segments(config)
  vstart = _rows.vmap_rows(start, 1)
  vadvance = {n: _rows.vmap_rows(lambda s, hp, n=n: advance(s, hp, n), 1)
              for n in {per_segment, num_logs % per_segment} if n}
  checkpointer = ocp.StandardCheckpointer()

  def run(keys, hps, ckpt_dir):
    state, extras, first = _rows.run_rows(vstart, keys, hps)
    io.makedirs(ckpt_dir)
    saved = sorted(int(d.split("_")[1]) for d in os.listdir(ckpt_dir)
                   if d.startswith("state_") and d[6:].isdigit())
    done = saved[-1] if saved else 0
    if done:
      target = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state)
      state = checkpointer.restore(os.path.join(ckpt_dir, f"state_{done:08d}"), target)
    logged = []
    for a in range(0, done, per_segment):
      with np.load(os.path.join(ckpt_dir, f"seg_{a:08d}.npz")) as z:
        logged.append({k: z[k] for k in z.files})
    while done < num_logs:
      n = min(per_segment, num_logs - done)
      state, seg = _rows.run_rows(vadvance[n], state, hps)
      seg = {k: np.asarray(v) for k, v in seg.items()}  # [rows, n, ...]
      io.write_npz(os.path.join(ckpt_dir, f"seg_{done:08d}.npz"), seg)
      logged.append(seg)
      done += n
      checkpointer.save(os.path.join(ckpt_dir, f"state_{done:08d}"), state)
      checkpointer.wait_until_finished()
      for old in saved:
        shutil.rmtree(os.path.join(ckpt_dir, f"state_{old:08d}"), ignore_errors=True)
      saved = [done]
    out = {k: np.concatenate([np.asarray(v)[:, None]] + [g[k] for g in logged], axis=1)
           for k, v in first.items()}
    out.update({k: np.asarray(v) for k, v in extras.items()})
    out["diverged_at"] = np.asarray(state.diverged_at)
    return out

  return run


def _chunk_slices(group: Group, train: Train, budget_mb: float, num_devices: int) -> list:
  """A group's rows as `[start, stop]` chunks that fit the memory budget.

  A row's memory is estimated from the shapes of `train`'s outputs (the
  logged trajectories) times 3 for the scan's stacked buffers and the copy
  out; chunk sizes are a multiple of the device count."""
  per_chunk = int(budget_mb * 2**20 // max(3 * train.row_bytes, 1))
  per_chunk = max(num_devices, per_chunk - per_chunk % num_devices)
  return [[a, min(a + per_chunk, group.rows)] for a in range(0, group.rows, per_chunk)]


def _collect(out_dir, p: Plan, chunks, figures: str, verbose: bool):
  """Analyzes every point from the chunk files; writes the table, the
  summaries, the per-point arrays and figures, and the sweep figure."""
  io.makedirs(os.path.join(out_dir, "points"))
  draw = figures == "all" or (figures == "auto" and len(p.points) <= AUTO_FIGURES)
  summaries = [None] * len(p.points)
  # each point's rows of the table go to a file of their own, then are
  # streamed into results.parquet: memory holds one chunk and one point
  parts = os.path.join(out_dir, ".table")
  shutil.rmtree(parts, ignore_errors=True)
  io.makedirs(parts)
  bar = tqdm(total=len(p.points), desc="analysis", unit="point", delay=2,
             disable=not verbose, dynamic_ncols=True)
  for gi, group in enumerate(p.groups):
    for i, o in _point_rows(out_dir, gi, group, len(chunks[gi])):
      pt = analyze(p.experiment, p.configs[i], o, p.points[i], i)
      io.write_frame(os.path.join(parts, f"p{i:05d}.parquet"), pt.frame)
      summaries[i] = pt.summary
      arrays = {**pt.out, **{f"{k}_pred": v for k, v in pt.pred.items()},
                "step": pt.step, "t": pt.t}
      io.write_npz(os.path.join(out_dir, "points", f"p{i:05d}.npz"), arrays)
      if figures != "none" and (draw or len(p.points) == 1) and \
          pt.summary["diverged_seeds"] < pt.summary["num_seeds"]:
        io.write_figure(os.path.join(out_dir, "points", f"p{i:05d}.png"),
                        lambda path, pt=pt: _plot_point(p.experiment, pt, path))
      bar.update(1)
  bar.close()
  summary = pd.DataFrame([{"point": i, **{f: (str(v) if isinstance(v, (tuple, list)) else v)
                                          for f, v in pt.items()}, **protocol.flat(io.strict(s))}
                          for i, (pt, s) in enumerate(zip(p.points, summaries))])
  sweep = _sweep_summary(p, [protocol.PointSummary(i, p.points[i], p.configs[i], s)
                             for i, s in enumerate(summaries)])
  io.concat_parquet(os.path.join(out_dir, "results.parquet"),  # rows by point, seed, step
                    [os.path.join(parts, f"p{i:05d}.parquet") for i in range(len(p.points))])
  shutil.rmtree(parts)
  io.write_frame(os.path.join(out_dir, "summary.csv"), summary)
  io.write_json(os.path.join(out_dir, "summary.json"), {
      "points": [{"point": i, "fields": p.points[i], **s} for i, s in enumerate(summaries)],
      "sweep": sweep})
  figure = os.path.join(out_dir, "figure.png")
  if figures == "none":
    pass
  elif len(p.points) > 1 and hasattr(p.experiment, "sweep_plot"):
    points = [protocol.PointSummary(i, p.points[i], p.configs[i], s)
              for i, s in enumerate(summaries)]
    io.write_figure(figure, lambda path: p.experiment.sweep_plot(p.configs[0], points,
                                                                  sweep, path))
  elif os.path.exists(os.path.join(out_dir, "points", "p00000.png")):
    shutil.copyfile(os.path.join(out_dir, "points", "p00000.png"), figure)
  return summaries, sweep


def _plot_point(experiment, pt: Point, path: str) -> None:
  if hasattr(experiment, "plot"):
    experiment.plot(pt.config, pt.out, pt.pred, pt.summary, path)
  else:
    from dynamics import plots
    names = [k for k in pt.pred if pt.out[k].ndim <= 3] or \
        [k for k in pt.frame.columns if k == "loss"]
    plots.default(pt.t, pt.out, pt.pred, names, path, _fields_text(pt.fields))


def _sweep_summary(p: Plan, points) -> dict:
  if len(p.points) < 2 or not hasattr(p.experiment, "sweep_summary"):
    return {}
  points = [pt if isinstance(pt, protocol.PointSummary) else
            protocol.PointSummary(pt.index, pt.fields, pt.config, pt.summary) for pt in points]
  return p.experiment.sweep_summary(p.configs[0], points)


def _check_resumable(out_dir, config_json: str, execution: dict, name: str):
  """The stored grid of a run to resume, None for a new run; refuses a
  directory that holds something else."""
  if not os.path.isdir(out_dir) or not set(os.listdir(out_dir)) - {io.LOCK}:
    return None
  stored = os.path.join(out_dir, "config.json")
  if not os.path.exists(stored):
    raise ValueError(f"{name} ({out_dir!r}) exists and holds no run (no config.json); "
                     "refusing to write into it. Choose another directory.")
  old = json.loads(open(stored).read())
  new = json.loads(config_json)
  if old != new:
    a, b = protocol.flat(old), protocol.flat(new)
    diff = [f"{k}: {a.get(k, '(absent)')} -> {b.get(k, '(absent)')}"
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    raise ValueError(f"{name} ({out_dir!r}) holds a run of a different config "
                     f"({'; '.join(diff[:5])}{'; ...' if len(diff) > 5 else ''}); "
                     "refusing to replace or mix it. Choose another directory.")
  grid_json = _read_json(os.path.join(out_dir, "grid.json"), None)
  if grid_json is None:
    return None
  if {"processes": 1, **grid_json.get("execution", {})} != execution:
    raise ValueError(
        f"{name} ({out_dir!r}) was started with {grid_json.get('execution')}; now "
        f"{execution}. Resume it with the same devices, processes and "
        "DYNAMICS_CHUNK_ROWS, so that the rows computed before and after agree bit for bit.")
  return grid_json


def _read_json(path, default):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return default


def _base(config):
  c = ml_collections.ConfigDict(config.to_dict())
  if "sweep" in c:
    del c["sweep"]
  return c


def _same_type(kind, v) -> bool:
  if kind is float:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
  if kind in (tuple, list):
    return isinstance(v, (tuple, list))
  if kind is type(None):
    return True
  return isinstance(v, kind) and not (kind is int and isinstance(v, bool))


def _hashable(v):
  return tuple(v) if isinstance(v, list) else v


def _fields_text(fields: dict) -> str:
  return ", ".join(f"{k}={v}" for k, v in fields.items()) or "base config"


def _diverged_text(s: dict) -> str:
  n, total = s["diverged_seeds"], s["num_seeds"]
  if not n:
    return ""
  if n == total:
    return f"every seed ({total}) diverged: no aggregates."
  return f"{n} of {total} seeds diverged and are left out of the figures below."


def _canonical(config) -> str:
  d = config.to_dict()
  d.pop("output_dir", None)
  return json.dumps(io.strict(d), indent=2, sort_keys=True)


def _chunk_path(out_dir, group, chunk) -> str:
  return os.path.join(out_dir, "chunks", f"g{group:04d}_c{chunk:05d}.npz")
