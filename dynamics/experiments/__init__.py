"""The experiment protocol: up to six pure functions; the runner owns the rest.

A config names its experiment: `config.experiment = "dynamics.experiments.deep_linear"`
(any importable module) or a file path (`"experiment.py"`, resolved against the
config file's directory by `dynamics.load_config`). The module defines:

    setup(config) -> dict              optional
        Checks the config (`ValueError` naming the field; `dynamics.config`
        has the checks) and returns the arrays every seed of a grid point
        shares: a dataset, a teacher, an evaluation set. Called once per grid
        point, before anything is compiled or written, in the run's precision.
        These very arrays reach `init`, `loss`, `observe` and `theory`.
    init(config, key, data) -> dict    required
        One seed's start: `{"params": ..., **constants}`. `params` is what
        training differentiates; every other entry is a per-seed constant
        (a seed's own dataset, a pruning mask, the kernel at init), carried
        unchanged, seen by `loss` and `observe` in `state` and handed to
        `theory`. `"lr_scale"` (a scalar) makes this seed's step `train.lr x
        lr_scale` (units of a critical learning rate, a curvature).
    loss(config, state, data, key) -> scalar    required
        The objective one step differentiates in `state["params"]`. `key` is
        the step's key (minibatches, fresh samples); `None` asks for the full
        objective (the default `observe`).
    observe(config, state, data) -> dict        optional
        What to log at steps `0, log_every, ..., num_steps` (default
        `{"loss": loss(config, state, data, None)}`).
    theory(config, data, start, t) -> dict      optional
        One seed's prediction, from `data`, `start` (the seed's constants and
        its step-0 observations) and `t` (`[L]`, its logged times). An entry
        named like an observation predicts it at those times (`[L, ...]`);
        other entries are predicted constants (an interpolator, an optimum).
        Evaluated in float64 on the very arrays training used, `vmap`ped over
        seeds (seed by seed if it is not traceable).
    report(config, results) -> dict             optional
        Across the grid, from every point's `Result`: `"points"` (one dict per
        point: its numbers, added to its row of `summary.csv`), `"figure"` (a
        matplotlib figure: the run's `figure.png`), `"figures"` (more, by name:
        `figures/<name>.png`), and any other entries (the grid's numbers:
        `summary.json`, the console).

In `init`, `loss` and `observe` the config is the grid point's, with every
swept float field traced (one compiled call runs every value); a swept field
of another type must be read only in `setup` for its points to share a call
(the runner checks by tracing). `setup`, `theory` and `report` see plain
values. The runner reads `seed`, `num_seeds`, `precision` and `train` (`lr`,
`num_steps`, `log_every`, and optionally `optimizer`, `momentum`, `decay`,
`batches`) itself, and owns the step loop, logging, time `t`, divergence,
checkpoints, progress and the files (docs/experiments.md).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import sys
from typing import Callable

import flax
import jax
import numpy as np

from dynamics import config as cfg
from dynamics import metrics
from dynamics import train as engine

PROTOCOL = ("setup", "init", "loss", "observe", "theory", "report")
REQUIRED = ("init", "loss")


@flax.struct.dataclass
class Trajectory:
  """A grid point's seeds as trained: what the runner logged and kept."""
  step: np.ndarray        # [L] int: the logged steps 0, log_every, ..., num_steps
  t: np.ndarray           # [S, L]: time at those steps, the sum of the step sizes applied
  logged: dict            # name -> [S, L, ...]: observe(); NaN after a seed diverged
  start: dict             # name -> [S, ...]: init's constants (every entry but params)
  diverged_at: np.ndarray  # [S] int: first step whose loss was not finite; -1: none

  @property
  def kept(self) -> np.ndarray:
    """`[S]` bool: the seeds that did not diverge."""
    return np.asarray(self.diverged_at) < 0


class Result:
  """One grid point: its config, the arrays `setup` drew, the trajectory, the
  theory beside it and its summary. From a run directory (a `report` at the
  end of `run_sweep`, `dynamics.load_results`) the arrays are read from the
  point's file at every access of `.data`, `.traj` or `.pred`, so that a report
  over a large grid holds one point at a time: read `r.traj` once into a name."""

  def __init__(self, index: int, fields: dict, config, summary: dict | None = None, *,
               data=None, traj: Trajectory | None = None, pred=None,
               load: Callable | None = None):
    self.index, self.fields, self.config = index, fields, config
    self.summary = {} if summary is None else summary
    self._arrays = None if load is not None else (data, traj, pred)
    self._load = load

  def _get(self, i):
    if self._arrays is not None:
      return self._arrays[i]
    return self._load()[i]  # not cached: a report over a large grid holds one point

  data = property(lambda self: self._get(0), doc="setup's arrays (numpy)")
  traj = property(lambda self: self._get(1), doc="the `Trajectory`")
  pred = property(lambda self: self._get(2), doc="theory, name -> [S, ...] (float64)")

  def __repr__(self):
    return f"Result(point {self.index}, {self.fields or 'base config'})"


def load(config):
  """The experiment module `config.experiment` names (dotted module or .py file)."""
  name = cfg.get(config, "experiment")
  if not isinstance(name, str) or not name:
    cfg.fail("experiment", f"must name a module or a .py file, got {name!r}.")
  if name.endswith(".py"):
    path = os.path.abspath(name)
    if not os.path.isfile(path):
      cfg.fail("experiment", f"({name!r}) is not a file.")
    module_name = "_dynamics_experiment_" + hashlib.sha1(path.encode()).hexdigest()[:12]
    module = sys.modules.get(module_name)
    if module is None or getattr(module, "__file__", None) != path or \
        _mtime(path) != getattr(module, "_dynamics_mtime", None):
      spec = importlib.util.spec_from_file_location(module_name, path)
      module = importlib.util.module_from_spec(spec)
      module._dynamics_mtime = _mtime(path)
      sys.modules[module_name] = module  # dataclasses, pickling
      try:
        spec.loader.exec_module(module)
      except BaseException:
        del sys.modules[module_name]
        raise
  else:
    try:
      module = importlib.import_module(name)
    except ModuleNotFoundError as e:
      cfg.fail("experiment", f"({name!r}) cannot be imported: {e}.")
  missing = [f for f in REQUIRED if not callable(getattr(module, f, None))]
  if missing:
    cfg.fail("experiment", f"({name!r}) does not define {', '.join(missing)} "
             "(docs/experiments.md).")
  return module


def _mtime(path):
  try:
    return os.stat(path).st_mtime_ns
  except OSError:
    return None


def source_files(experiment) -> list[str]:
  """The files a run's results depend on: the experiment module and every
  module of `dynamics` and `theory`, and any module imported from the
  experiment's own folder (docs/sweeps.md: a run's identity)."""
  import theory
  roots = [os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
           os.path.dirname(os.path.abspath(theory.__file__))]
  files = set()
  for root in roots:
    for dirpath, _, names in os.walk(root):
      files.update(os.path.join(dirpath, n) for n in names if n.endswith(".py"))
  mine = getattr(experiment, "__file__", None)
  if mine:
    files.add(os.path.abspath(mine))
    folder = os.path.dirname(os.path.abspath(mine))
    for m in list(sys.modules.values()):
      f = getattr(m, "__file__", None)
      if f and f.endswith(".py") and os.path.dirname(os.path.abspath(f)) == folder:
        files.add(os.path.abspath(f))
  return sorted(files)


def check(config) -> None:
  """The fields the runner reads, for every experiment: ValueError naming the field."""
  cfg.integer(config, "seed", minimum=0)
  cfg.integer(config, "num_seeds")
  cfg.one_of(config, "precision", cfg.PRECISIONS)
  cfg.representable(config)
  cfg.schedule(config)
  train = cfg.get(config, "train")
  for field, options in (("optimizer", engine.OPTIMIZERS), ("decay", engine.DECAYS),
                         ("batches", engine.BATCHES)):
    if field in train:
      cfg.one_of(config, f"train.{field}", options)
  if "momentum" in train:
    m = cfg.nonnegative(config, "train.momentum")
    if m >= 1:
      cfg.fail("train.momentum", f"must lie in [0, 1), got {m!r}.")


def setup(experiment, config) -> dict:
  """The runner's checks, then the experiment's `setup` (default: no data)."""
  check(config)
  fn = getattr(experiment, "setup", None)
  data = {} if fn is None else fn(config)
  if data is None:
    data = {}
  if not isinstance(data, dict):
    raise ValueError(f"setup() must return a dict of arrays, got {type(data).__name__}.")
  return data


def per_seed(theory_fn: Callable, config, data, start: dict, t: np.ndarray) -> dict:
  """`theory(config, data, start, t)` for every seed (`start`, `t` lead with
  the seed axis), in float64: one vmapped call, or seed by seed when the
  theory is not traceable (numpy inside)."""
  f64 = lambda tree: jax.tree_util.tree_map(
      lambda a: np.asarray(a, np.float64) if np.issubdtype(np.asarray(a).dtype, np.floating)
      else np.asarray(a), tree)
  data, start, t = f64(data), f64(start), np.asarray(t, np.float64)
  with jax.enable_x64(True):
    try:
      from dynamics.devices import compiler_options
      out = jax.jit(lambda d, s, tt: jax.vmap(lambda s_, t_: theory_fn(config, d, s_, t_))(
          s, tt), compiler_options=compiler_options())(data, start, t)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError,
            jax.errors.TracerBoolConversionError, jax.errors.TracerIntegerConversionError):
      seeds = [theory_fn(config, data, jax.tree_util.tree_map(lambda a, i=i: a[i], start), t[i])
               for i in range(len(t))]
      out = {k: np.stack([np.asarray(s[k]) for s in seeds]) for k in (seeds[0] if seeds else {})}
    return {k: np.asarray(v, np.float64) for k, v in (out or {}).items()}


def check_theory(pred: dict, traj: Trajectory) -> None:
  for name, p in pred.items():
    if name in traj.logged and p.shape != traj.logged[name].shape:
      raise ValueError(f"theory()[{name!r}] has shape {p.shape[1:]} per seed; the "
                       f"observation {name!r} has {traj.logged[name].shape[1:]} ([L, ...]).")


def summarize(result: Result) -> dict:
  """A point's summary before `report`: seeds, divergence, and for every
  observation with a theory, over the kept seeds: `<name>.rel_error_max` and
  `<name>.rel_error_mean`, the worst and the mean over seeds of
  `max_t ||sim(t) - theory(t)|| / max_t ||theory(t)||` (the norm over the
  observation's entries: a vector's distance relative to its own scale), and
  `<name>.r2_min`, the worst seed's `1 - sum (sim - theory)^2 / sum (sim -
  mean_t sim)^2` over times and entries."""
  traj, pred = result.traj, result.pred
  kept = traj.kept
  summary = {"num_seeds": int(len(kept)), "diverged_seeds": int((~kept).sum())}
  for name, p in pred.items():
    if name not in traj.logged or not kept.any():
      continue
    sim = np.asarray(traj.logged[name], np.float64)[kept]
    ref = np.asarray(p, np.float64)[kept]
    sim, ref = (a.reshape(a.shape[0], a.shape[1], -1) for a in (sim, ref))  # [S, L, C]
    scale = np.max(np.linalg.norm(ref, axis=-1), axis=1)
    rel = np.max(np.linalg.norm(sim - ref, axis=-1), axis=1) / np.where(scale > 0, scale, 1.0)
    tot = np.sum((sim - sim.mean(1, keepdims=True)) ** 2, axis=(1, 2))
    r2 = 1.0 - np.sum((sim - ref) ** 2, axis=(1, 2)) / np.where(tot > 0, tot, np.inf)
    summary[f"{name}.rel_error_max"] = _finite(np.nanmax, rel)
    summary[f"{name}.rel_error_mean"] = _finite(np.nanmean, rel)
    summary[f"{name}.r2_min"] = _finite(np.nanmin, r2)
  return summary


def _finite(reduce, x):
  x = np.asarray(x, np.float64)
  return float(reduce(x)) if np.isfinite(x).any() else None


def flat(d, prefix: str = "") -> dict:
  """`{"a": {"b": 1}}` -> `{"a.b": 1}`; lists of dicts by index; other lists
  as JSON text (one table cell)."""
  out = {}
  items = d.items() if isinstance(d, dict) else enumerate(d)
  for k, v in items:
    if isinstance(v, dict) or (isinstance(v, list) and v and isinstance(v[0], dict)):
      out.update(flat(v, f"{prefix}{k}."))
    elif isinstance(v, (list, tuple, np.ndarray)):
      out[f"{prefix}{k}"] = json.dumps(np.asarray(v).tolist())
    else:
      out[f"{prefix}{k}"] = v
  return out
