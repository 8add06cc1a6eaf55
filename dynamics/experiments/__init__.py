"""The experiment protocol, and the loader that finds an experiment anywhere.

A config names its experiment: `config.experiment = "dynamics.experiments.deep_linear"`
(any importable module) or a file path (`"experiment.py"`, resolved against
the config file's directory by `dynamics.load_config`). The experiment is a
module of functions; `scripts/run.py` and `dynamics.run_sweep` run any grid of
it. Required:

    validate(config) -> None
        ValueError naming the first bad field; runs on every grid point
        before anything is traced or written. (`seed`, `num_seeds` and
        `precision` are checked for every experiment.)
    make_train(config) -> train(key, hp) -> dict
        One pure, jit- and vmap-safe run of one seed. Its outputs: the logged
        metrics, leading axis over the logged steps `0, log_every, ...,
        num_steps` (`dynamics.train.trajectory` gives them), per-run
        constants (a kernel at init, final weights), and `diverged_at` (the
        train state's). `hp` holds the shape-preserving hyperparameters.

Optional (defaults in this module):

    HPARAMS = {"train.lr": "lr", ...}
        Config fields that change no array shape, and their key in `hp`.
        Grid points differing only in these run as one vmapped call.
    hparams(config) -> dict          the `hp` of one point (default: every
                                     HPARAMS field as an array of the run's
                                     float dtype)
    log_times(config) -> (step, t)   the logged steps and their time `t = lr x
                                     step` (default `logged_times(config)`:
                                     from `train.num_steps`, `train.log_every`,
                                     `train.lr`; experiments call it rather
                                     than rebuild the steps)
    theory(config, out) -> dict      for a metric `name`, its prediction,
                                     shaped like `out[name]` (per seed) or like
                                     one seed's (shared); table column
                                     `name_pred` beside `name`
    summarize(config, out, pred) -> dict
                                     the point's figures, from dynamics.metrics,
                                     over the seeds that did not diverge
                                     (default: `metrics.compare` of every metric
                                     with a theory)
    plot(config, out, pred, summary, path)
                                     the point's figure (default: every metric
                                     with a theory, `dynamics.plots.trajectories`)
    text(config, summary) -> str     the point's console lines
    sweep_summary(config, points) -> dict
    sweep_plot(config, points, summary, path)
    sweep_text(config, summary) -> str
                                     across grid points (`points`: `PointSummary`
                                     of every point), e.g. a slope against width
    TABLE = ("loss", ...)            logged metrics that become table columns
                                     (default: those with at most one axis
                                     besides seed and step)
    CONSTANTS = ("u0_eff", ...)      outputs that are not logged metrics though
                                     an axis has the length of the logged steps

`out` is numpy, one grid point, leading axis over seeds; logged values after
a seed diverged are NaN. docs/experiments.md walks through one experiment.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import sys
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from dynamics import config as cfg
from dynamics import metrics

REQUIRED = ("validate", "make_train")


class PointSummary(NamedTuple):
  """One grid point, as the sweep-level functions see it."""
  index: int       # position in the grid
  fields: dict     # the swept fields' values, {"model.width": 256}
  config: object   # the point's resolved config
  summary: dict    # what `summarize` returned, with `diverged_seeds`, `num_seeds`


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
    if module is None:
      spec = importlib.util.spec_from_file_location(module_name, path)
      module = importlib.util.module_from_spec(spec)
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


def validate(experiment, config) -> None:
  """The checks every experiment shares, then the experiment's own."""
  cfg.integer(config, "seed", minimum=0)
  cfg.integer(config, "num_seeds")
  cfg.one_of(config, "precision", cfg.PRECISIONS)
  experiment.validate(config)


def hparams(experiment, config) -> dict:
  if hasattr(experiment, "hparams"):
    return experiment.hparams(config)
  dtype = cfg.float_dtype(config.precision)
  return {key: jnp.asarray(cfg.get(config, field), dtype)
          for field, key in getattr(experiment, "HPARAMS", {}).items()}


def logged_times(config) -> tuple[np.ndarray, np.ndarray]:
  """The steps a run logs, `0, log_every, ..., num_steps` (`config.train`),
  and their time `t = lr x step` (docs/conventions.md): `(step, t)`."""
  step = np.arange(0, config.train.num_steps + 1, config.train.log_every)
  return step, config.train.lr * step


def log_times(experiment, config) -> tuple[np.ndarray, np.ndarray]:
  if hasattr(experiment, "log_times"):
    step, t = experiment.log_times(config)
    return np.asarray(step), np.asarray(t, np.float64)
  return logged_times(config)


def theory(experiment, config, out: dict) -> dict:
  pred = experiment.theory(config, out) if hasattr(experiment, "theory") else {}
  pred = {k: np.asarray(v) for k, v in (pred or {}).items()}
  for name, p in pred.items():
    if name not in out:
      raise ValueError(f"theory() predicts {name!r}, which train() does not output "
                       f"(outputs: {', '.join(sorted(out))}).")
    if p.ndim not in (out[name].ndim, out[name].ndim - 1):
      raise ValueError(f"theory()[{name!r}] has shape {p.shape}; it must be shaped "
                       f"like out[{name!r}] {out[name].shape} or one seed's.")
  return pred


def summarize(experiment, config, out: dict, pred: dict) -> dict:
  if hasattr(experiment, "summarize"):
    return experiment.summarize(config, out, pred)
  summary = {}
  for name, p in pred.items():
    sim = np.moveaxis(out[name], 1, -1)  # [S, ..., L]: time last
    ref = np.moveaxis(p, 1 if p.ndim == out[name].ndim else 0, -1)
    cmp = metrics.compare(sim, ref)
    summary[name] = {"max_rel_error_worst": _finite(np.nanmax, cmp["max_rel_error"]),
                     "r2_min": _finite(np.nanmin, cmp["r2"])}
  return summary


def text(experiment, config, summary: dict) -> str:
  if hasattr(experiment, "text"):
    return experiment.text(config, summary)
  return "\n".join(f"  {k}: {v:.4g}" if isinstance(v, float) else f"  {k}: {v}"
                   for k, v in flat(summary).items())


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
