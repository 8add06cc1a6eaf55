"""Every run is a grid: one compiled, vmapped call per group of grid points.

A config declares its grid beside the base config, mirroring its fields:

    config.sweep = ml_collections.ConfigDict()
    config.sweep.train = ml_collections.ConfigDict({"lr": (0.01, 0.02)})
    config.sweep.model = ml_collections.ConfigDict({"width": (16, 64)})

The grid is the Cartesian product of the axes (no axes: one point, the base
config). Grid points form one group, trained by one compiled
`jit(vmap(...))` over their (point x seed) rows, when their `setup` arrays
have the same shapes and they differ only in float fields (traced) and in
fields that `init`, `loss` and `observe` do not read (the runner traces them
with such fields unreadable and splits the group by any field they read).
Seed `i` of a point uses `fold_in(PRNGKey(seed), i)`, as in a single run.

`simulate(config)` runs a grid in memory; `run_sweep(config, out_dir)` runs it
into a directory (`dynamics.store`) that a killed or interrupted run resumes
from, and writes the results table, the summaries and the figures;
`load_sweep`, `load_summary`, `load_arrays` and `load_results` read them
back. The experiment protocol: `dynamics.experiments`. Docs: docs/sweeps.md,
docs/experiments.md.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import json
import os
import shutil
import sys
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from dynamics import config as cfg
from dynamics import experiments as protocol
from dynamics import io, store
from dynamics import train as engine
from dynamics.experiments import Result, Trajectory

DEFAULT_MEMORY_BUDGET_MB = 2048
FIGURES = ("auto", "all", "none")
AUTO_FIGURES = 24  # per-point figures drawn by default up to this many points
TABLE_WIDTH = 16   # a logged vector of at most this many entries gets a column each


# --- the grid -----------------------------------------------------------------

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


def zipped(config, ax=None) -> list[tuple[str, ...]]:
  """`config.sweep_zip`: groups of axes that move together (`zip`) instead of
  forming their product, e.g. `(("task.n", "train.num_steps"),)` runs each
  width for its own number of steps. Checked against the axes: ValueError
  naming the field for a name that is not an axis, a name in two groups, or
  axes of unequal lengths in one group. Without axes (`--config.sweep={}`)
  there is nothing to zip and it is ignored."""
  groups = config.get("sweep_zip")
  ax = axes(config) if ax is None else ax
  if not groups or not ax:
    return []
  if isinstance(groups, (tuple, list)) and groups and all(isinstance(g, str) for g in groups):
    groups = (groups,)  # one group written flat
  lengths = dict((f, len(v)) for f, v in ax)
  seen, out = set(), []
  for g in groups:
    if isinstance(g, str) or not isinstance(g, (tuple, list)) or len(g) < 2 or \
        not all(isinstance(f, str) for f in g):
      raise ValueError(f"`sweep_zip` must be groups of two or more axis names, "
                       f"e.g. ((\"task.n\", \"train.num_steps\"),); got {g!r}.")
    for f in g:
      if f not in lengths:
        raise ValueError(f"`sweep_zip` names `{f}`, which is not an axis of config.sweep."
                         + cfg.suggest(f, set(lengths)))
      if f in seen:
        raise ValueError(f"`sweep_zip` names `{f}` in two groups.")
      seen.add(f)
    if len({lengths[f] for f in g}) > 1:
      raise ValueError("`sweep_zip` zips axes of unequal lengths: " + ", ".join(
          f"sweep.{f} ({lengths[f]} values)" for f in g) + ".")
    out.append(tuple(g))
  return out


def grid(config) -> list[dict]:
  """The grid points, `[{field: value}, ...]`: the product of the axes, in
  row-major order, axes zipped by `config.sweep_zip` moving together (at the
  place of the first of them)."""
  ax = axes(config)
  groups = zipped(config, ax)
  lead = {g[0]: g for g in groups}
  inner = {f for g in groups for f in g[1:]}
  values = dict(ax)
  factors = []  # [(fields, [values per step])]
  for f, v in ax:
    if f in inner:
      continue
    fields = lead.get(f, (f,))
    factors.append((fields, list(zip(*[values[x] for x in fields]))))
  order = [f for f, _ in ax]
  points = []
  for combo in itertools.product(*[v for _, v in factors]):
    point = {}
    for (fields, _), vals in zip(factors, combo):
      point.update(zip(fields, vals))
    points.append({f: point[f] for f in order})
  return points


def point_config(config, point: dict):
  """The base config (no `sweep`) with one grid point's values set."""
  c = _base(config)
  for field, value in point.items():
    section, _, name = field.rpartition(".")
    node = cfg.get(c, section) if section else c
    node[name] = (float(value) if isinstance(node[name], float) else
                  tuple(value) if isinstance(node[name], (tuple, list)) else value)
  return c


# --- planning -----------------------------------------------------------------

class Group(NamedTuple):
  points: list      # indices into the grid
  rows: int         # points x seeds
  runner: engine.Runner
  batched: tuple    # swept fields traced in the group's program
  offsets: list     # first row of each point
  theory: dict      # the group's compiled theory, once built (`_theory`)


class Plan(NamedTuple):
  experiment: object  # the experiment module
  points: list        # [{field: value}] per grid point
  configs: list       # resolved config per grid point
  data: list          # setup's arrays per grid point (numpy)
  groups: list        # [Group]


class _Read(Exception):
  """A traced program read a swept field that varies within its group."""

  def __init__(self, field: str):
    super().__init__(field)
    self.field = field


class Unread:
  """A swept field in a group's program: reading it raises `_Read`, and the
  planner then splits the group by that field."""
  __slots__ = ("field",)

  def __init__(self, field: str):
    object.__setattr__(self, "field", field)

  def _read(self, *args, **kwargs):
    raise _Read(object.__getattribute__(self, "field"))

  for _name in ("__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "__hash__",
                "__bool__", "__str__", "__format__", "__float__", "__int__", "__index__",
                "__len__", "__iter__", "__getitem__", "__contains__", "__add__", "__radd__",
                "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__", "__rtruediv__",
                "__pow__", "__rpow__", "__neg__", "__array__", "__jax_array__", "__getattr__"):
    locals()[_name] = _read
  del _name

  def __repr__(self):
    return f"<swept field {object.__getattribute__(self, 'field')}>"


RUNNER_FIELDS = ("seed", "num_seeds")  # read per point by the runner, never in a program


def plan(config, *, devices=None) -> Plan:
  """Loads the experiment; checks and sets up every grid point; groups them
  (see the module docstring) and traces each group's programs once.

  Raises ValueError naming the grid point and the field for a bad config,
  before anything is compiled or written."""
  experiment = protocol.load(config)
  points = grid(config) or [{}]
  configs = [point_config(config, p) for p in points]
  if len({c.get("precision") for c in configs}) > 1:
    raise ValueError("sweep axis `sweep.precision` cannot vary within one sweep.")
  data = []
  with precision(configs[0].get("precision")):
    for p, c in zip(points, configs):
      try:
        data.append(_arrays(protocol.setup(experiment, c)))
      except ValueError as e:
        raise ValueError(f"grid point {p}: {e}" if p else str(e)) from None
    groups = _plan_groups(experiment, points, configs, data, devices)
  return Plan(experiment, points, configs, data, groups)


def _arrays(data: dict) -> dict:
  def leaf(path, x):
    a = np.asarray(x)
    if a.dtype.kind not in "biuf":
      raise ValueError(f"setup(){jax.tree_util.keystr(path)} is {a.dtype} ({x!r:.40}); "
                       "setup returns numeric arrays (read other fields in the config).")
    return a
  return jax.tree_util.tree_map_with_path(leaf, data)


def _signature(c, d) -> tuple:
  leaves, treedef = jax.tree_util.tree_flatten(d)
  return (engine.Schedule.of(c), str(treedef),
          tuple((a.shape, a.dtype.str) for a in leaves))


def _plan_groups(experiment, points, configs, data, devices) -> list:
  swept = list(points[0])
  floats = {f for f in swept if isinstance(cfg.get(configs[0], f), float)}
  candidates: dict = {}
  for i, (c, d) in enumerate(zip(configs, data)):
    candidates.setdefault(_signature(c, d), []).append(i)
  groups = []
  for idx in candidates.values():
    groups += _split(experiment, idx, points, configs, data, swept, floats, set(), devices)
  groups.sort(key=lambda g: g.points[0])
  return groups


def _split(experiment, idx, points, configs, data, swept, floats, static, devices,
           strict=False):
  """Groups of the points `idx`, equal in every field of `static`."""
  by: dict = {}
  for i in idx:
    by.setdefault(tuple(_hashable(points[i][f]) for f in sorted(static)), []).append(i)
  out = []
  for sub in by.values():
    varying = [f for f in swept if f not in RUNNER_FIELDS and
               len({_hashable(points[i][f]) for i in sub}) > 1]
    batched = tuple(f for f in varying if f in floats)
    unread = tuple(f for f in varying if f not in floats)
    args = (experiment, sub, points, configs, data, swept, floats)
    try:
      out.append(_group(experiment, sub, configs, data, batched, unread, devices))
    except _Read as e:
      out += _split(*args, static | {e.field}, devices, strict)
    except Exception:  # noqa: BLE001 - a swept value used where it cannot be traced
      if not varying or strict:
        raise
      # a swept value used as a Python value (a float in control flow, a width
      # checked for being an int): find the field, one at a time; else all
      for f in unread + batched:
        try:
          out += _split(*args, static | {f}, devices, strict=True)
          break
        except Exception:  # noqa: BLE001
          continue
      else:
        out += _split(*args, static | set(varying), devices)
  return out


def _group(experiment, idx, configs, data, batched, unread, devices) -> Group:
  c0 = configs[idx[0]]
  dtype = cfg.float_dtype(c0.precision)
  template = c0.to_dict()
  for f in unread:
    _set(template, f, Unread(f))

  def bind(row):
    d = _copy_sections(template)
    for f in batched:
      _set(d, f, row["hp"][f])
    return ml_collections.ConfigDict(d)

  leaves = [jax.tree_util.tree_flatten(data[i])[0] for i in idx]
  treedef = jax.tree_util.tree_structure(data[idx[0]])
  same = [all(np.array_equal(leaves[0][j], lv[j]) for lv in leaves[1:])
          for j in range(len(leaves[0]))]
  shared = {"data": [jnp.asarray(leaves[0][j]) if same[j] else None
                     for j in range(len(same))],
            "stacked": [None if same[j] else jnp.asarray(np.stack([lv[j] for lv in leaves]))
                        for j in range(len(same))]}

  def data_of(row, sh):
    got = [sh["data"][j] if same[j] else sh["stacked"][j][row["point"]]
           for j in range(len(same))]
    return jax.tree_util.tree_unflatten(treedef, got)

  schedule = engine.Schedule.of(c0)
  if schedule.batches == "shared":
    shared["batch_key"] = engine.shared_batch_key(c0.seed)
  keys, point, hp, offsets, n = [], [], {f: [] for f in batched}, [], 0
  for j, i in enumerate(idx):
    c = configs[i]
    offsets.append(n)
    keys.append(np.asarray(engine.seed_keys(c.seed, c.num_seeds)))
    point += [j] * c.num_seeds
    for f in batched:
      hp[f] += [cfg.get(c, f)] * c.num_seeds
    n += c.num_seeds
  rows = {"key": jnp.asarray(np.concatenate(keys)), "point": jnp.asarray(point, jnp.int32),
          "hp": {f: jnp.asarray(v, dtype) for f, v in hp.items()}}
  runner = engine.Runner(experiment, bind, data_of, schedule, rows, shared, devices=devices)
  names = set(runner.first_shape)
  consts = set(runner.state_shape.consts)
  if names & consts:
    raise ValueError(f"observe() and init() both name {sorted(names & consts)}: theory "
                     "sees both in `start`; rename one.")
  return Group(list(idx), n, runner, batched, offsets, {"bind": bind})


def _copy_sections(d):
  return {k: _copy_sections(v) if isinstance(v, dict) else v for k, v in d.items()}


def _set(d: dict, field: str, value) -> None:
  *path, name = field.split(".")
  for part in path:
    d = d[part]
  d[name] = value


def precision(name):
  """x64 on for a float64 run and off for a float32 one (whatever the global
  setting), so the same key draws the same numbers in every part of a run."""
  return jax.enable_x64(name == "float64")


# --- running ------------------------------------------------------------------

def simulate(config, *, devices=None) -> tuple[list[Result], dict]:
  """Trains and analyzes every grid point in memory; nothing is written.

  Returns:
    `(results, report)`: a `Result` per grid point (`.traj`, `.pred`,
    `.data`, `.summary`), and what the experiment's `report` returned
    (without its figure).
  """
  p = plan(config, devices=devices)
  with precision(p.configs[0].precision):
    results = [None] * len(p.points)
    for group in p.groups:
      first, logged, t, state = group.runner.run(0, group.rows)
      rows = {"first": first, "logged": logged, "t": t, "state": state}
      for i, r in _split_rows(p, group, rows):
        results[i] = _analyze(p, i, r)
    rep = _report(p, results)
  rep.pop("figure", None)
  for fig in (rep.pop("figures", None) or {}).values():
    import matplotlib.pyplot as plt
    plt.close(fig)
  return results, rep


def _split_rows(p: Plan, group: Group, rows: dict):
  for j, i in enumerate(group.points):
    a = group.offsets[j]
    b = a + p.configs[i].num_seeds
    yield i, jax.tree_util.tree_map(lambda x: x[a:b], rows)


def _trajectory(p: Plan, i: int, rows: dict) -> Trajectory:
  """A point's rows as a `Trajectory`, values logged after a seed diverged NaN."""
  c = p.configs[i]
  s = engine.Schedule.of(c)
  step = np.arange(0, s.num_steps + 1, s.log_every)
  state = rows["state"]
  diverged_at = np.asarray(state.diverged_at)
  logged = {k: np.concatenate([np.asarray(v)[:, None], np.asarray(rows["logged"][k])], 1)
            for k, v in rows["first"].items()}
  after = (diverged_at[:, None] >= 0) & (step[None, :] > diverged_at[:, None])
  for k, v in logged.items():
    if np.issubdtype(v.dtype, np.floating):
      v = v.copy()
      v[after] = np.nan
      logged[k] = v
  t = np.concatenate([np.zeros((len(diverged_at), 1)), np.asarray(rows["t"], np.float64)], 1)
  start = jax.tree_util.tree_map(np.asarray, dict(state.consts))
  return Trajectory(step=step, t=t, logged=logged, start=start, diverged_at=diverged_at)


def _analyze(p: Plan, i: int, rows: dict) -> Result:
  traj = _trajectory(p, i, rows)
  c, exp = p.configs[i], p.experiment
  pred = {}
  if hasattr(exp, "theory"):
    start = {**traj.start, **{k: v[:, 0] for k, v in traj.logged.items()}}
    try:
      pred = _theory(p, i, start, traj.t)
    except KeyError as e:
      if e.args != ("params",):
        raise
      start["params"] = initial_params(p, i)  # asked for: init again, in the run's precision
      pred = _theory(p, i, start, traj.t)
    protocol.check_theory(pred, traj)
  result = Result(i, p.points[i], c, data=p.data[i], traj=traj, pred=pred)
  result.summary = protocol.summarize(result)
  return result


def _theory(p: Plan, i: int, start: dict, t) -> dict:
  """The point's theory: through its group's compiled call (the grid's float
  fields traced, so one compilation serves every point of the group), or, if
  the theory cannot trace them (a float used as a Python number, numpy
  inside), on the point's own config (`experiments.per_seed`)."""
  g = next(g for g in p.groups if i in g.points)
  exp, c = p.experiment, p.configs[i]
  if g.theory.get("fn", True) is not None and g.batched:
    if "fn" not in g.theory:
      from dynamics.devices import compiler_options
      bind = g.theory["bind"]
      g.theory["fn"] = jax.jit(lambda hp, d, s, tt: jax.vmap(
          lambda s_, t_: exp.theory(bind({"hp": hp}), d, s_, t_))(s, tt),
          compiler_options=compiler_options())
    try:
      hp = {f: np.float64(cfg.get(c, f)) for f in g.batched}
      f64 = lambda tree: jax.tree_util.tree_map(
          lambda a: np.asarray(a, np.float64) if np.issubdtype(np.asarray(a).dtype, np.floating)
          else np.asarray(a), tree)
      with jax.enable_x64(True):
        out = g.theory["fn"](hp, f64(p.data[i]), f64(start), np.asarray(t, np.float64))
      return {k: np.asarray(v, np.float64) for k, v in (out or {}).items()}
    except KeyError:
      raise
    except Exception:  # noqa: BLE001 - not traceable over the group's floats: per point
      g.theory["fn"] = None
  return protocol.per_seed(exp.theory, c, p.data[i], start, t)


def initial_params(p: Plan, i: int):
  """Every seed's `params` at init for grid point `i`: `init` again on the
  seed's key, in the group's compiled program and the run's precision (the
  arrays training started from: the models here draw them elementwise, so bit
  for bit)."""
  g = next(g for g in p.groups if i in g.points)
  a = g.offsets[g.points.index(i)]
  return g.runner.params0(a, a + p.configs[i].num_seeds)


def _report(p: Plan, results: list) -> dict:
  """The experiment's `report` (default: none), its per-point entries merged
  into each point's summary."""
  fn = getattr(p.experiment, "report", None)
  rep = dict(fn(p.configs[0], results) or {}) if fn else {}
  per_point = rep.pop("points", None)
  if per_point is not None:
    if len(per_point) != len(results):
      raise ValueError(f"report()['points'] has {len(per_point)} entries for "
                       f"{len(results)} grid points.")
    for r, extra in zip(results, per_point):
      r.summary.update(extra or {})
  return rep


def run_sweep(config, out_dir: str, *, memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
              figures: str = "auto", out_name: str = "--out", verbose: bool = True,
              restart: bool = False, checkpoint_every_s: float = 60.0,
              stall_timeout_s: float | None = None, devices=None) -> str:
  """Runs (or resumes) the grid into `out_dir`; writes the table, summaries, figures.

  Args:
    config: base config, its grid in `config.sweep` (none: a single point).
    out_dir: the run directory. An existing one is resumed if it holds this
      config run by this code, and refused (nothing touched) otherwise.
    memory_budget_mb: memory for one chunk of (point x seed) rows; every
      finished chunk is a file, so a killed run loses at most one chunk.
    figures: `'auto'` (the grid's figure, and each point's up to 24 points),
      `'all'`, or `'none'`.
    out_name: what to call `out_dir` in errors (the flag the user set).
    verbose: progress bar and the console report.
    restart: discard what `out_dir` holds (a run directory) and start afresh.
    checkpoint_every_s: inside a chunk, the scan state is saved at every
      tenth of its steps and at least this often (seconds), each time a save
      costs under a tenth of the time since the last one; 0 saves after every
      segment. A rerun resumes from the last save.
    stall_timeout_s: if no segment finishes for this long (a hang), print
      where the run is and every thread's stack and end the process (exit
      status 3); None (the default here; `scripts/run.py` sets 1800) never.

  Returns:
    The absolute path of `out_dir`. Files: docs/sweeps.md.
  """
  if not (isinstance(memory_budget_mb, (int, float)) and not isinstance(memory_budget_mb, bool)
          and memory_budget_mb > 0):
    raise ValueError(f"--memory_budget_mb must be > 0, got {memory_budget_mb!r}.")
  if not (isinstance(checkpoint_every_s, (int, float)) and checkpoint_every_s >= 0):
    raise ValueError(f"--checkpoint_every_s must be >= 0, got {checkpoint_every_s!r}.")
  if stall_timeout_s is not None and not (isinstance(stall_timeout_s, (int, float))
                                          and stall_timeout_s > 0):
    raise ValueError(f"--stall_timeout_s must be > 0, got {stall_timeout_s!r}.")
  if figures not in FIGURES:
    raise ValueError(f"--figures must be one of {FIGURES}, got {figures!r}.")
  from dynamics import _rows
  from dynamics.devices import compiler_options
  _rows.env_chunk(), compiler_options()  # the engine's settings, checked before writing
  out_dir = os.path.abspath(out_dir)
  io.check_writable(out_dir, out_name)
  p = plan(config, devices=devices)  # every ValueError before anything is written
  with precision(p.configs[0].precision):
    run = _Run(p, config, out_dir, out_name, memory_budget_mb, figures, verbose,
               checkpoint_every_s, stall_timeout_s)
    return run.go(restart)


class Interrupted(KeyboardInterrupt):
  """A run stopped by SIGINT or SIGTERM (`cause`), with `where` it stopped.
  Every file is whole (atomic writes); rerunning resumes."""

  def __init__(self, where: str, cause: BaseException):
    super().__init__(where)
    self.where, self.cause = where, cause


class _Run:
  """One `run_sweep` call on a run directory."""

  def __init__(self, p, config, out_dir, out_name, budget_mb, figures, verbose, every_s,
               stall_s=None):
    self.p, self.out, self.name, self.stall_s = p, out_dir, out_name, stall_s
    self.budget, self.figures, self.verbose, self.every_s = budget_mb, figures, verbose, every_s
    self.config_json = _canonical(config)
    self.code = store.code_digest(protocol.source_files(p.experiment))
    self.identity = store.sha256((self.config_json + self.code["sha256"]).encode())
    self.execution = {"backend": jax.default_backend(),
                      "devices": jax.device_count() if p.groups[0].runner.devices is None
                      else len(p.groups[0].runner.devices),
                      "processes": jax.process_count(),
                      "chunk_rows": os.environ.get("DYNAMICS_CHUNK_ROWS")}
    self.writer = jax.process_index() == 0

  def path(self, *parts) -> str:
    return os.path.join(self.out, *parts)

  def say(self, text: str) -> None:
    if self.verbose and self.writer:
      tqdm.write(text, file=sys.stderr)

  # -- the directory ---------------------------------------------------------

  def go(self, restart: bool) -> str:
    self.where = f"planning {self.out} (nothing was written)"
    try:
      return self._go(restart)
    except Interrupted:
      raise
    except KeyboardInterrupt as e:
      raise Interrupted(self.where, e) from None

  def _go(self, restart: bool) -> str:
    if jax.process_count() > 1:
      return self._go_distributed(restart)
    old = self._existing(restart)
    self._makedirs()
    with io.lock(self.out, self.name):
      old = self._existing(restart)  # again, under the lock
      return self._locked(old)

  def _makedirs(self) -> None:
    try:
      io.makedirs(self.out)
      probe = os.path.join(self.out, ".probe")
      open(probe, "w").close()
      os.remove(probe)
    except OSError as e:
      raise ValueError(f"{self.name} ({self.out!r}) cannot be written: "
                       f"{e.strerror or e}.") from None

  def _go_distributed(self, restart):
    """Process 0 decides (refusal, finished, the layout) and tells the others."""
    from dynamics import _dist
    if not self.writer:
      got = _dist.share(None)
      if "error" in got:
        raise ValueError(got["error"])
      return self.out if got.get("finished") else self._locked(None, got["layout"])
    sent = False
    try:
      old = self._existing(restart)
      self._makedirs()
      with io.lock(self.out, self.name):
        old = self._existing(restart)
        if old is not None and old.get("finished") and self._finished_intact(old):
          _dist.share({"finished": True})
          sent = True
          return self._locked(old)
        layout = self._layout(old)
        _dist.share({"layout": layout})
        sent = True
        return self._locked(old, layout)
    except ValueError as e:
      if not sent:  # refused before the run began: the others stop too
        _dist.share({"error": f"the writing process (0) refused: {e}"})
      raise

  def _existing(self, restart: bool):
    """The stored run to resume (`run.json`), None for a new run; refuses,
    naming the file or what differs, a directory that holds anything else."""
    if not os.path.isdir(self.out) or not set(os.listdir(self.out)) - {io.LOCK}:
      return None
    run_json = self.path("run.json")
    if not os.path.exists(run_json):
      if os.path.exists(self.path("config.json")):
        raise ValueError(f"{self.name} ({self.out!r}) holds a run without run.json (an "
                         "older format, or run.json was deleted): rerun with --restart to "
                         "replace it, or choose another directory.")
      raise ValueError(f"{self.name} ({self.out!r}) exists and holds no run (no run.json); "
                       "refusing to write into it. Choose another directory.")
    if restart:
      self._clear()
      return None
    try:
      old = store.read_json(run_json)
    except store.Damaged as e:
      raise ValueError(f"{e.path} is damaged ({e.why}); nothing was changed. Rerun with "
                       "--restart to start this run afresh, or choose another directory."
                       ) from None
    if old.get("format") != store.FORMAT:
      raise ValueError(f"{run_json} is format {old.get('format')}, not {store.FORMAT}: rerun "
                       "with --restart or choose another directory.")
    try:
      have = store.file_sha256(self.path("config.json"))
    except OSError:
      have = None
    if have != old.get("config_sha256"):
      raise ValueError(f"{self.path('config.json')} is damaged or missing (it no longer "
                       "matches run.json); nothing was changed. Rerun with --restart, or "
                       "choose another directory.")
    if old.get("config") != json.loads(self.config_json):
      a, b = protocol.flat(old.get("config", {})), protocol.flat(json.loads(self.config_json))
      diff = [f"{k}: {a.get(k, '(absent)')} -> {b.get(k, '(absent)')}"
              for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
      raise ValueError(f"{self.name} ({self.out!r}) holds a run of a different config "
                       f"({'; '.join(diff[:5])}{'; ...' if len(diff) > 5 else ''}); refusing "
                       "to replace or mix it. Choose another directory, or --restart.")
    if old.get("code", {}).get("sha256") != self.code["sha256"]:
      was, now = old.get("code", {}).get("files", {}), self.code["files"]
      changed = sorted(f for f in set(was) | set(now) if was.get(f) != now.get(f))
      raise ValueError(f"{self.name} ({self.out!r}) was run by other code: "
                       f"{', '.join(changed[:4])}{' ...' if len(changed) > 4 else ''} changed "
                       "since. Its results would not be this code's: rerun with --restart to "
                       "recompute, or choose another directory.")
    if {**old.get("execution", {})} != self.execution and not old.get("finished"):
      raise ValueError(
          f"{self.name} ({self.out!r}) was started with {old.get('execution')}; now "
          f"{self.execution}. Resume it with the same devices, processes and "
          "DYNAMICS_CHUNK_ROWS, so that the rows computed before and after agree bit for bit.")
    return old

  def _clear(self) -> None:
    for name in os.listdir(self.out):
      if name == io.LOCK:
        continue
      path = self.path(name)
      shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)

  def _layout(self, old) -> dict:
    if old is not None:
      return old["layout"]
    groups = []
    for g in self.p.groups:
      per_row = 3 * (_nbytes(g.runner.first_shape) * (g.runner.schedule.num_logs + 1)
                     + _nbytes(g.runner.state_shape))
      per_chunk = int(self.budget * 2**20 // max(per_row, 1))
      n_dev = jax.device_count()
      per_chunk = max(n_dev, per_chunk - per_chunk % n_dev)
      groups.append({"points": g.points, "rows": g.rows, "seg_logs": g.runner.seg_logs,
                     "chunks": [[a, min(a + per_chunk, g.rows)]
                                for a in range(0, g.rows, per_chunk)]})
    return {"groups": groups}

  def _locked(self, old, layout=None) -> str:
    p = self.p
    layout = layout or self._layout(old)
    if self.writer:
      _remove_temporaries(self.out)
      io.makedirs(self.path("chunks"))
      prov = _read_list(self.path("provenance.json"))
      io.write_json(self.path("provenance.json"), prov + [io.provenance()])
      if old is None:
        io.atomic_write(self.path("config.json"), lambda f: f.write(self.config_json.encode()))
        self.run_json = {"format": store.FORMAT, "identity": self.identity,
                         "config": json.loads(self.config_json),
                         "config_sha256": store.file_sha256(self.path("config.json")),
                         "code": self.code, "execution": self.execution, "layout": layout}
        store.write_json(self.path("run.json"), self.run_json)
      else:
        self.run_json = old
    if old is not None and old.get("finished") and self._finished_intact(old):
      self.say(f"{self.out}: finished earlier by this code and config; nothing to compute.")
      summaries = json.loads(open(self.path("summary.json")).read())
      if self.verbose:
        print(console(p, [s for s in summaries["points"]], summaries["grid"]))
      return self.out
    for g, lay in zip(p.groups, layout["groups"]):
      if lay["points"] != g.points or lay["rows"] != g.rows or lay["seg_logs"] != g.runner.seg_logs:
        raise ValueError(f"run.json's layout of the grid does not match this plan (group of "
                         f"points {lay['points']}); rerun with --restart.")
    self._compute(layout)
    if not self.writer:
      return self.out
    self._collect(layout)
    return self.out

  def _finished_intact(self, old) -> bool:
    for rel, sha in old["finished"].items():
      path = self.path(rel)
      try:
        ok = store.file_sha256(path) == sha
      except OSError:
        ok = False
      if not ok:
        self.say(f"{path} is damaged or missing: recomputing what it held.")
        return False
    return True

  # -- training --------------------------------------------------------------

  def _chunk_path(self, gi: int, ci: int) -> str:
    return self.path("chunks", f"g{gi:04d}_c{ci:05d}.npz")

  def _expect(self, gi, ci, a, b) -> dict:
    return {"identity": self.identity, "group": gi, "chunk": ci, "rows": [a, b]}

  def _have_chunk(self, gi, ci, a, b) -> bool:
    path = self._chunk_path(gi, ci)
    if not os.path.exists(path):
      return False
    try:
      store.read_arrays(path, self._expect(gi, ci, a, b))
      return True
    except store.Damaged as e:
      self.say(f"{e.path} is damaged or foreign ({e.why}): set aside as "
               f"{os.path.basename(store.set_aside(path))}, recomputing it.")
      return False

  def _compute(self, layout) -> None:
    p = self.p
    todo = []
    for gi, (g, lay) in enumerate(zip(p.groups, layout["groups"])):
      if self.writer and self._group_done(gi, g):
        continue
      for ci, (a, b) in enumerate(lay["chunks"]):
        if not (self.writer and self._have_chunk(gi, ci, a, b)):
          todo.append((gi, ci, a, b))
    if jax.process_count() > 1:
      from dynamics import _dist
      todo = _dist.share({"todo": todo} if self.writer else None)["todo"]
    total = sum(g.rows * g.runner.schedule.num_steps for g in p.groups)
    left = sum((b - a) * p.groups[gi].runner.schedule.num_steps for gi, _, a, b in todo)
    bar = tqdm(total=total, initial=total - left, desc="sweep" if len(p.points) > 1 else "train",
               unit="seed-step", unit_scale=True, delay=2, dynamic_ncols=True,
               disable=not (self.verbose and self.writer),
               mininterval=0.1 if sys.stderr.isatty() else 10)
    with bar, self._watchdog():
      for gi, ci, a, b in todo:
        self.where = f"group {gi + 1}/{len(p.groups)}, chunk {ci + 1}"
        self.beat = time.monotonic()
        self._chunk(gi, ci, a, b, bar)
    self.where = "the analysis (every chunk is saved)"

  @contextlib.contextmanager
  def _watchdog(self):
    """With `stall_timeout_s`: a thread that, when no segment has finished for
    that long, prints where the run is and every thread's stack, and ends the
    process (exit status 3). What is on disk is whole; the same command resumes."""
    if not self.stall_s:
      yield
      return
    import faulthandler
    import threading
    done = threading.Event()
    self.beat = time.monotonic()

    def watch():
      while not done.wait(min(1.0, self.stall_s / 4)):
        quiet = time.monotonic() - self.beat
        if quiet > self.stall_s:
          sys.stderr.write(f"\nerror: no progress for {quiet:.0f} s (--stall_timeout_s="
                           f"{self.stall_s:g}) in {self.where}; every thread's stack follows. "
                           "What is on disk is whole: rerun the same command to resume.\n")
          sys.stderr.flush()
          faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
          sys.stderr.flush()
          os._exit(3)

    thread = threading.Thread(target=watch, name="dynamics-watchdog", daemon=True)
    thread.start()
    try:
      yield
    finally:
      done.set()

  def _group_done(self, gi, g) -> bool:
    """Every point of the group has a valid points file (the chunks were
    removed after a finished analysis)."""
    run_json = getattr(self, "run_json", {})
    return bool(run_json.get("analysed")) and all(self._point_ok(i) for i in g.points)

  def _chunk(self, gi, ci, a, b, bar) -> None:
    g = self.p.groups[gi]
    runner = g.runner
    path = self._chunk_path(gi, ci)
    ckpt = path[:-4] + ".ckpt.npz"
    steps = runner.schedule.log_every
    resume = self._resume(gi, ci, a, b, ckpt) if self.writer and \
        jax.process_count() == 1 else None
    done0 = resume[0] if resume else 0
    bar.update((b - a) * done0 * steps)
    clock = {"last": time.perf_counter(), "save": 0.0, "done": done0,
             "mark": done0 // max(1, runner.schedule.num_logs // 10) + 1}
    every = max(1, runner.schedule.num_logs // 10)  # a save at every tenth of the steps

    def on_segment(done, state, first, logged):
      self.beat = time.monotonic()
      if done == 0:  # the start, before any step
        return
      bar.update((b - a) * (done - clock["done"]) * steps)
      clock["done"] = done
      self.where = (f"group {gi + 1}/{len(self.p.groups)}, chunk {ci + 1}, step "
                    f"{done * steps} of {runner.schedule.num_steps}"
                    + (f" (checkpointed at step {clock['at'] * steps})" if clock.get("at")
                       else ""))
      if not self.writer or jax.process_count() > 1 or done >= runner.schedule.num_logs:
        return
      now = time.perf_counter()
      since = now - clock["last"]
      due = done >= clock["mark"] * every or since >= self.every_s
      if self.every_s == 0 or (due and since >= 10 * clock["save"]):
        jax.block_until_ready(state)  # the segments in flight are not the save's cost
        now = time.perf_counter()
        self._checkpoint(ckpt, gi, ci, a, b, done, state, first, logged)
        clock.update(at=done, save=time.perf_counter() - now, last=time.perf_counter(),
                     mark=done // every + 1)

    first, logged, t, state = runner.run(a, b, resume=resume, on_segment=on_segment)
    if self.writer:
      arrays = {**{f"first/{k}": v for k, v in first.items()},
                **{f"logged/{k}": v for k, v in logged.items()}, "t": t,
                **store.flatten(state.consts, "consts"), "diverged_at": state.diverged_at}
      store.write_arrays(path, arrays, self._expect(gi, ci, a, b))
      if os.path.exists(ckpt):
        os.remove(ckpt)

  def _checkpoint(self, ckpt, gi, ci, a, b, done, state, first, logged) -> None:
    n = b - a
    from dynamics import _rows
    host = _rows.to_host(state, n)
    obs = {k: np.concatenate([o[k] for o, _ in logged], 1) for k in first}
    t = np.concatenate([tt for _, tt in logged], 1)
    arrays = {**store.flatten(host, "state"), **{f"first/{k}": v for k, v in first.items()},
              **{f"logged/{k}": v for k, v in obs.items()}, "t": t}
    store.write_arrays(ckpt, arrays, {**self._expect(gi, ci, a, b), "done_logs": done})

  def _resume(self, gi, ci, a, b, ckpt):
    if not os.path.exists(ckpt):
      return None
    runner = self.p.groups[gi].runner
    try:
      arrays, meta = store.read_arrays(ckpt, self._expect(gi, ci, a, b))
      like = jax.tree_util.tree_map(lambda s: np.zeros((b - a,) + s.shape[1:], s.dtype),
                                    runner.state_shape)
      state = store.unflatten(arrays, "state", like)
    except (store.Damaged, KeyError, ValueError) as e:
      why = e.why if isinstance(e, store.Damaged) else f"does not fit ({e})"
      self.say(f"{ckpt} is damaged or foreign ({why}): set aside as "
               f"{os.path.basename(store.set_aside(ckpt))}; group {gi + 1}, chunk {ci + 1} "
               "starts over.")
      return None
    done = int(meta["done_logs"])
    first = {k[6:]: v for k, v in arrays.items() if k.startswith("first/")}
    logged = {k[7:]: v for k, v in arrays.items() if k.startswith("logged/")}
    steps = done * runner.schedule.log_every
    self.say(f"resuming group {gi + 1}/{len(self.p.groups)}, chunk {ci + 1} from its "
             f"checkpoint at step {steps} of {runner.schedule.num_steps} "
             f"({steps / runner.schedule.num_steps:.0%})")
    return done, state, first, [(logged, arrays["t"])]

  # -- analysis --------------------------------------------------------------

  def _point_path(self, i: int) -> str:
    return self.path("points", f"p{i:05d}.npz")

  def _point_ok(self, i) -> bool:
    try:
      store.read_arrays(self._point_path(i), {"identity": self.identity, "point": i})
      return True
    except store.Damaged:
      return False

  def _group_rows(self, gi, layout):
    """`(point, its rows)` for each point of group `gi`, from the chunk files
    in order, holding no more than a chunk and a point."""
    g = self.p.groups[gi]
    sizes = [self.p.configs[i].num_seeds for i in g.points]
    want = iter(zip(g.points, sizes))
    cur = next(want, None)
    buf, have = [], 0
    like = jax.tree_util.tree_map(lambda s: np.zeros((0,) + s.shape[1:], s.dtype),
                                  g.runner.state_shape.consts)
    for ci, (a, b) in enumerate(layout["groups"][gi]["chunks"]):
      arrays, _ = store.read_arrays(self._chunk_path(gi, ci), self._expect(gi, ci, a, b))
      buf.append(arrays)
      have += b - a
      while cur is not None and have >= cur[1]:
        rows = buf[0] if len(buf) == 1 else {k: np.concatenate([x[k] for x in buf])
                                               for k in buf[0]}
        i, n = cur
        yield i, self._rows(jax.tree_util.tree_map(lambda x: x[:n], rows), like)
        buf, have, cur = [{k: v[n:] for k, v in rows.items()}], have - n, next(want, None)

  def _rows(self, arrays, like) -> dict:
    first = {k[6:]: v for k, v in arrays.items() if k.startswith("first/")}
    logged = {k[7:]: v for k, v in arrays.items() if k.startswith("logged/")}
    consts = store.unflatten(arrays, "consts", like)
    state = _HostState(consts=consts, diverged_at=arrays["diverged_at"])
    return {"first": first, "logged": logged, "t": arrays["t"], "state": state}

  def _collect(self, layout) -> None:
    p = self.p
    io.makedirs(self.path("points"))
    draw = self.figures == "all" or (self.figures == "auto" and len(p.points) <= AUTO_FIGURES)
    parts = self.path(".table")
    shutil.rmtree(parts, ignore_errors=True)
    io.makedirs(parts)
    results = [None] * len(p.points)
    bar = tqdm(total=len(p.points), desc="analysis", unit="point", delay=2,
               disable=not self.verbose, dynamic_ncols=True,
               mininterval=0.1 if sys.stderr.isatty() else 10)
    for gi, g in enumerate(p.groups):
      if self._group_done(gi, g) and not any(
          os.path.exists(self._chunk_path(gi, ci))
          for ci in range(len(layout["groups"][gi]["chunks"]))):
        source = ((i, None) for i in g.points)
      else:
        source = self._group_rows(gi, layout)
      for i, rows in source:
        r = self._load_point(i) if rows is None else _analyze(p, i, rows)
        if rows is not None:
          self._write_point(r)
        io.write_frame(os.path.join(parts, f"p{i:05d}.parquet"), table(r))
        if self.figures != "none" and (draw or len(p.points) == 1) and r.traj.kept.any():
          io.write_figure(self.path("points", f"p{i:05d}.png"),
                          lambda path, r=r: _plot_point(r, path))
        results[i] = Result(i, r.fields, r.config, r.summary, load=self._loader(i))
        bar.update(1)
    bar.close()
    rep = _report(p, results)
    figure = rep.pop("figure", None)
    extra = rep.pop("figures", None) or {}
    if extra and self.figures != "none":
      io.makedirs(self.path("figures"))
      for name, fig in extra.items():
        io.write_figure(self.path("figures", f"{name}.png"), lambda path, f=fig: _save(f, path))
    summary = summary_frame(p, [r.summary for r in results])
    io.concat_parquet(self.path("results.parquet"),
                      [os.path.join(parts, f"p{i:05d}.parquet") for i in range(len(p.points))])
    shutil.rmtree(parts)
    io.write_frame(self.path("summary.csv"), summary)
    io.write_json(self.path("summary.json"), {
        "points": [{"point": i, "fields": p.points[i], **r.summary}
                   for i, r in enumerate(results)], "grid": rep})
    wrote_figure = False
    if self.figures != "none":
      if figure is not None:
        io.write_figure(self.path("figure.png"), lambda path: _save(figure, path))
        wrote_figure = True
      elif len(results) == 1 and os.path.exists(self.path("points", "p00000.png")):
        shutil.copyfile(self.path("points", "p00000.png"), self.path("figure.png"))
        wrote_figure = True
      elif len(results) > 1 and any(r.summary["diverged_seeds"] < r.summary["num_seeds"]
                                    for r in results):
        from dynamics import plots
        io.write_figure(self.path("figure.png"), lambda path: plots.grid(results, path))
        wrote_figure = True
    else:
      import matplotlib.pyplot as plt
      for fig in [figure, *extra.values()]:
        if fig is not None:
          plt.close(fig)
    finished = {rel: store.file_sha256(self.path(rel)) for rel in
                ["results.parquet", "summary.csv", "summary.json"] +
                [os.path.join("points", f"p{i:05d}.npz") for i in range(len(p.points))]}
    self.run_json = {**self.run_json, "analysed": True, "finished": finished,
                     "figure": wrote_figure}
    store.write_json(self.path("run.json"), self.run_json)
    shutil.rmtree(self.path("chunks"), ignore_errors=True)  # the points files hold it all
    _remove_temporaries(self.out)
    self.wrote_figure = wrote_figure
    if self.verbose:
      print(console(p, [r.summary | {"fields": r.fields} for r in results], rep))

  def _write_point(self, r: Result) -> None:
    arrays = {"step": r.traj.step, "t": r.traj.t, "diverged_at": r.traj.diverged_at,
              **{f"logged/{k}": v for k, v in r.traj.logged.items()},
              **store.flatten(r.traj.start, "start"),
              **{f"pred/{k}": v for k, v in r.pred.items()},
              **store.flatten(r.data, "data")}
    store.write_arrays(self._point_path(r.index), arrays,
                       {"identity": self.identity, "point": r.index,
                        "summary": r.summary})

  def _loader(self, i):
    return lambda: self._load_point(i, arrays_only=True)

  def _load_point(self, i, arrays_only=False):
    p = self.p
    arrays, meta = store.read_arrays(self._point_path(i), {"identity": self.identity,
                                                           "point": i})
    g = next(g for g in p.groups if i in g.points)
    like = jax.tree_util.tree_map(lambda s: np.zeros((0,) + s.shape[1:], s.dtype),
                                  g.runner.state_shape.consts)
    traj = Trajectory(step=arrays["step"], t=arrays["t"], diverged_at=arrays["diverged_at"],
                      logged={k[7:]: v for k, v in arrays.items() if k.startswith("logged/")},
                      start=store.unflatten(arrays, "start", like))
    pred = {k[5:]: v for k, v in arrays.items() if k.startswith("pred/")}
    data = store.unflatten(arrays, "data", p.data[i])
    if arrays_only:
      return data, traj, pred
    return Result(i, p.points[i], p.configs[i], meta.get("summary", {}), data=data,
                  traj=traj, pred=pred)


class _HostState(NamedTuple):
  consts: dict
  diverged_at: np.ndarray


def _nbytes(tree) -> int:
  return sum(int(np.prod(s.shape[1:])) * s.dtype.itemsize
             for s in jax.tree_util.tree_leaves(tree))


# --- outputs ------------------------------------------------------------------

def table(r: Result) -> pd.DataFrame:
  """A point's rows of the results table: one per (seed, logged step), with
  the swept fields, `seed`, `step`, `t`, `diverged`, `diverged_step`, every
  logged scalar (a vector of at most `TABLE_WIDTH` entries: a column each,
  `u_0 ...`), and beside each its theory `_pred` and `_rel_error`."""
  traj, pred = r.traj, r.pred
  s, n = traj.t.shape
  cols = {"point": np.full(s * n, r.index), **{f: [_cell(v)] * (s * n)
                                                  for f, v in r.fields.items()},
          "seed": np.repeat(np.arange(s), n), "step": np.tile(traj.step, s),
          "t": traj.t.reshape(-1),
          "diverged": np.repeat(traj.diverged_at >= 0, n),
          "diverged_step": np.repeat(traj.diverged_at, n)}
  for name, v in traj.logged.items():
    v = np.asarray(v)
    width = int(np.prod(v.shape[2:]))
    if width > TABLE_WIDTH or not np.issubdtype(v.dtype, np.number):
      continue
    flat = v.reshape(s * n, width)
    ref = None if name not in pred else pred[name].reshape(s * n, width)
    scale = None if ref is None else np.nanmax(np.abs(pred[name].reshape(s, n, width)), 1)
    for j in range(width):
      col = name if v.ndim == 2 else f"{name}_{j}"
      cols[col] = flat[:, j]
      if ref is not None:
        cols[f"{col}_pred"] = ref[:, j]
        sc = np.repeat(scale[:, j], n)
        cols[f"{col}_rel_error"] = np.abs(flat[:, j] - ref[:, j]) / np.where(sc > 0, sc, 1.0)
  return pd.DataFrame(cols)


def _cell(v):
  return str(v) if isinstance(v, (tuple, list)) else v


def summary_frame(p: Plan, summaries: list) -> pd.DataFrame:
  """One row per grid point: `point`, the swept fields, and its summary flattened."""
  return pd.DataFrame([{"point": i, **{f: _cell(v) for f, v in p.points[i].items()},
                        **protocol.flat(io.strict(s))} for i, s in enumerate(summaries)])


def _plot_point(r: Result, path: str) -> None:
  from dynamics import plots
  plots.point(r, path)


def _save(fig, path):
  from dynamics import plots
  plots.save(fig, path)


def console(p: Plan, summaries: list, grid_summary: dict, width: int = 12) -> str:
  """The console report: a single point's summary as `name: value` lines (its
  lists of records as tables); a grid's as a table, one row per point (the
  first `width` numbers; all of them in summary.csv); then the grid's
  numbers from `report`."""
  lines = []
  if len(summaries) == 1:
    s = {k: v for k, v in summaries[0].items() if k not in ("fields", "point")}
    lines.append(f"result ({_seeds_text(s)}):")
    lines += _block({k: v for k, v in s.items() if k not in ("num_seeds", "diverged_seeds")},
                    "  ")
  else:
    rows = []
    for i, s in enumerate(summaries):
      s = dict(s)
      fields = s.pop("fields", p.points[i])
      row = {"point": i, **{f: _cell(v) for f, v in fields.items()},
             "seeds": _seeds_text(s, short=True)}
      numbers = {k: v for k, v in protocol.flat(s).items()
                 if k not in ("num_seeds", "diverged_seeds", "point")
                 and isinstance(v, (int, float)) and not isinstance(v, bool)
                 and not re.search(r"\.\d+\.", k)}  # lists of records: summary.csv
      rows.append({**row, **numbers})
    frame = pd.DataFrame(rows)
    keep = ["point", *p.points[0], "seeds"]
    extra = [c for c in frame.columns if c not in keep]
    shown = frame[keep + extra[:width]]
    lines += shown.to_string(index=False, float_format=lambda x: f"{x:.4g}",
                             na_rep="-").splitlines()
    if len(extra) > width:
      lines.append(f"({len(extra) - width} more columns in summary.csv)")
  if grid_summary:
    lines.append("across the grid:")
    lines += _block(grid_summary, "  ")
  return "\n".join(lines)


def _seeds_text(s: dict, short: bool = False) -> str:
  n, bad = s.get("num_seeds", 0), s.get("diverged_seeds", 0)
  if short:
    return f"{n - bad}/{n}" if bad else str(n)
  if not bad:
    return f"{n} seeds"
  if bad == n:
    return f"{n} seeds, every one diverged: no aggregates"
  return f"{n} seeds, {bad} diverged and left out"


def _block(d: dict, indent: str) -> list:
  out = []
  for k, v in d.items():
    if isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
      out.append(f"{indent}{k}:")
      frame = pd.DataFrame([{k: _fmt(x) if isinstance(x, list) else x
                             for k, x in protocol.flat(io.strict(r)).items()} for r in v])
      out += [indent + "  " + line for line in frame.to_string(
          index=False, float_format=lambda x: f"{x:.4g}").splitlines()]
    elif isinstance(v, dict):
      out.append(f"{indent}{k}:")
      out += _block(v, indent + "  ")
    else:
      out.append(f"{indent}{k}: {_fmt(v)}")
  return out


def _fmt(v) -> str:
  if isinstance(v, float):
    return f"{v:.4g}"
  if isinstance(v, (list, tuple)):
    return "[" + ", ".join(_fmt(x) for x in v) + "]"
  return str(v)


# --- reading a run back -------------------------------------------------------

def _finished(out_dir, name) -> str:
  path = os.path.join(out_dir, name)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{out_dir} has no {name}: the run has not finished "
                            "(rerun the same command to resume) or it is not a run "
                            "directory.")
  return path


def _verified(out_dir, rel) -> str:
  """`out_dir/rel`, checked against the checksum run.json recorded when the run finished."""
  path = _finished(out_dir, rel)
  try:
    run = store.read_json(os.path.join(out_dir, "run.json"))
  except store.Damaged as e:
    raise ValueError(f"{e.path} is damaged ({e.why}); the run's files cannot be verified."
                     ) from None
  want = run.get("finished", {}).get(rel)
  if want is None:
    raise FileNotFoundError(f"{out_dir}: the run has not finished (rerun the same command "
                            "to resume).")
  if store.file_sha256(path) != want:
    raise ValueError(f"{path} is damaged: it does not match the checksum recorded when the "
                     "run finished. Rerun the same command to rebuild it.")
  return path


def load_sweep(out_dir: str) -> pd.DataFrame:
  """The results table of a finished run, verified: one row per (grid point,
  seed, logged step), with `point`, every swept field, `seed`, `step`, `t`,
  every logged scalar, its theory `*_pred` and error `*_rel_error`,
  `diverged`, `diverged_step`. Per point: `load_summary`; arrays:
  `load_arrays`."""
  import pyarrow.parquet as pq
  path = _verified(out_dir, "results.parquet")
  return pq.read_table(path, page_checksum_verification=True).to_pandas()


def load_summary(out_dir: str) -> pd.DataFrame:
  """One row per grid point: swept fields, `diverged_seeds`, and the summary
  flattened (`loss.rel_error_max`, the report's per-point numbers); a list
  (a confidence interval) comes back as a list."""
  frame = pd.read_csv(_verified(out_dir, "summary.csv"))
  for col in frame.columns:
    cells = frame[col].dropna()
    if frame[col].dtype == object and len(cells) and all(
        isinstance(v, str) and v.startswith("[") for v in cells):
      try:
        frame[col] = [json.loads(v) if isinstance(v, str) else v for v in frame[col]]
      except ValueError:
        pass
  return frame


def load_arrays(out_dir: str, point: int = 0) -> dict:
  """Every array of one grid point, verified: `step`, `t`, `diverged_at`,
  `logged/<name>` (`[S, L, ...]`), `pred/<name>`, `start/<i>`, `data/<i>`."""
  arrays, _ = store.read_arrays(_verified(out_dir, os.path.join("points", f"p{point:05d}.npz")))
  return arrays


def load_results(out_dir: str) -> list[Result]:
  """Every grid point of a finished run as a `Result` (arrays read on demand)."""
  config = cfg.load_json_config(_finished(out_dir, "config.json"))
  p = plan(config)
  run = _Run(p, config, out_dir, "out_dir", DEFAULT_MEMORY_BUDGET_MB, "none", False, 10.0)
  run.run_json = store.read_json(os.path.join(out_dir, "run.json"))
  for i in range(len(p.points)):
    _verified(out_dir, os.path.join("points", f"p{i:05d}.npz"))
  return [run._load_point(i) for i in range(len(p.points))]


def replay(out_dir: str, point: int = 0, seed: int = 0, step: int | None = None) -> dict:
  """Seed `seed` of grid point `point` of a run, trained again: its trajectory
  and its whole training state at logged step `step` (default: the last).

  The run's chunk that holds the row is trained again, in a program of the same
  shape as the original (the same rows, devices and chunks; segments of one
  logged step, which change no bit: tests/dynamics/test_train.py), so the
  trajectory is the table's, bit for bit. It costs that chunk's training:
  `rows` rows for `seconds` seconds. Needs the code that ran it (refused
  otherwise, as a rerun would be).

  Returns:
    `{"traj": Trajectory` of the one seed (`[1, ...]`), `"state":
    dynamics.train.TrainState` at `step` (numpy: `params`, `opt_state`,
    `consts`, `t`, `diverged_at`), `"rows"`, `"seconds"}`.
  """
  config = cfg.load_json_config(_finished(out_dir, "config.json"))
  p = plan(config)
  with precision(p.configs[0].precision):
    run = _Run(p, config, os.path.abspath(out_dir), "out_dir", DEFAULT_MEMORY_BUDGET_MB,
               "none", False, 60.0)
    old = run._existing(False)
    if old is None:
      raise ValueError(f"{out_dir} holds no run to replay.")
    if not 0 <= point < len(p.points):
      raise ValueError(f"`point` must be in [0, {len(p.points)}), got {point!r}.")
    if not 0 <= seed < p.configs[point].num_seeds:
      raise ValueError(f"`seed` must be in [0, {p.configs[point].num_seeds}), got {seed!r}.")
    gi = next(i for i, g in enumerate(p.groups) if point in g.points)
    g = p.groups[gi]
    row = g.offsets[g.points.index(point)] + seed
    a, b = next((a, b) for a, b in old["layout"]["groups"][gi]["chunks"] if a <= row < b)
    sched = g.runner.schedule
    want = sched.num_logs if step is None else step // sched.log_every
    if step is not None and (step % sched.log_every or not 0 <= want <= sched.num_logs):
      raise ValueError(f"`step` must be a logged step (0, {sched.log_every}, ..., "
                       f"{sched.num_steps}), got {step!r}.")
    runner = engine.Runner(p.experiment, g.runner._bind, g.runner._data_of, sched,
                           g.runner.rows, g.runner.shared, devices=g.runner.devices,
                           seg_logs=1, adaptive=False)
    kept = {}

    def grab(done, state, first, logged):
      if done == want:
        from dynamics import _rows
        kept["state"] = _rows.to_host(state, b - a)

    start = time.perf_counter()
    first, logged, t, state = runner.run(a, b, on_segment=grab)
    seconds = time.perf_counter() - start
    i = row - a
    pick = lambda tree: jax.tree_util.tree_map(lambda x: np.asarray(x)[i:i + 1], tree)
    rows = pick({"first": first, "logged": logged, "t": t, "state": state})
    traj = _trajectory(p, point, {**rows, "state": _HostState(rows["state"].consts,
                                                              rows["state"].diverged_at)})
    at = kept.get("state")
    at = None if at is None else jax.tree_util.tree_map(lambda x: np.asarray(x)[i], at)
    return {"traj": traj, "state": at, "rows": b - a, "seconds": seconds}


# ---------------------------------------------------------------------------


def _remove_temporaries(out_dir) -> None:
  """The temporaries (`.name.XXXX`, `.table/`) of writes a kill interrupted;
  not the lock."""
  for sub in ("", "chunks", "points"):
    if not os.path.isdir(os.path.join(out_dir, sub)):
      continue
    for name in os.listdir(os.path.join(out_dir, sub)):
      path = os.path.join(out_dir, sub, name)
      if name.startswith(".") and name != io.LOCK:
        shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)


def _read_list(path) -> list:
  try:
    with open(path) as f:
      out = json.load(f)
    return out if isinstance(out, list) else []
  except (OSError, ValueError):
    return []


def _base(config):
  c = ml_collections.ConfigDict(config.to_dict())
  for name in ("sweep", "sweep_zip"):
    if name in c:
      del c[name]
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


def _canonical(config) -> str:
  d = config.to_dict()
  d.pop("output_dir", None)
  return json.dumps(io.strict(d), indent=2, sort_keys=True)
