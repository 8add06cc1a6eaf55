"""Configs: loading with overrides, validation and precision. Errors name the
field, before anything is compiled or written."""

from __future__ import annotations

import ast
import difflib
import importlib.util
import math
import os
from typing import Any, Iterable, Sequence

import jax
import jax.numpy as jnp
import ml_collections

PRECISIONS = ("float32", "float64")


def get(config, field: str) -> Any:
  """`config.a.b` for `field = 'a.b'`; a ValueError naming a missing field."""
  node = config
  for part in field.split("."):
    try:
      node = node[part]
    except (KeyError, AttributeError, TypeError):
      raise ValueError(f"config field `{field}` is missing.") from None
  return node


def fail(field: str, message: str):
  raise ValueError(f"config field `{field}` {message}")


def _number(config, field: str) -> float:
  value = get(config, field)
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    fail(field, f"must be a number, got {value!r}.")
  if not math.isfinite(value):
    fail(field, f"must be finite, got {value!r}.")
  return value


def positive(config, field: str) -> float:
  value = _number(config, field)
  if value <= 0:
    fail(field, f"must be > 0, got {value!r}.")
  return value


def nonnegative(config, field: str) -> float:
  value = _number(config, field)
  if value < 0:
    fail(field, f"must be >= 0, got {value!r}.")
  return value


def integer(config, field: str, minimum: int = 1) -> int:
  value = get(config, field)
  if isinstance(value, bool) or not isinstance(value, int):
    fail(field, f"must be an integer, got {value!r}.")
  if value < minimum:
    fail(field, f"must be >= {minimum}, got {value!r}.")
  return value


def one_of(config, field: str, options: Sequence[str]) -> str:
  value = get(config, field)
  if value not in options:
    fail(field, f"is {value!r}; known values: {', '.join(map(repr, options))}.")
  return value


def numbers(config, field: str, minimum: float | None = None) -> tuple:
  """A non-empty sequence of finite numbers (or one number), each >= minimum."""
  value = get(config, field)
  seq = value if isinstance(value, (list, tuple)) else (value,)
  if not seq:
    fail(field, "must not be empty.")
  for v in seq:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
      fail(field, f"must hold finite numbers, got {value!r}.")
    if minimum is not None and v < minimum:
      fail(field, f"must hold numbers >= {minimum}, got {value!r}.")
  return tuple(float(v) for v in seq)


def representable(config) -> None:
  """Every float field fits the run's precision (`1e300` is not a float32)."""
  if config.get("precision") != "float32":
    return
  big = float(jnp.finfo(jnp.float32).max)
  for field in leaf_fields(config):
    if field.startswith("sweep."):
      continue
    value = get(config, field)
    values = value if isinstance(value, (tuple, list)) else (value,)
    for v in values:
      if isinstance(v, float) and math.isfinite(v) and abs(v) > big:
        fail(field, f"({v!r}) is not representable in float32 (config.precision); "
             "use 'float64' or a smaller value.")


def schedule(config, section: str = "train") -> tuple[float, int, int]:
  """`<section>.lr > 0` and `<section>.num_steps`, a multiple of `<section>.log_every`."""
  lr = positive(config, f"{section}.lr")
  num_steps = integer(config, f"{section}.num_steps")
  log_every = integer(config, f"{section}.log_every")
  if num_steps % log_every:
    fail(f"{section}.num_steps", f"({num_steps}) must be a multiple of "
         f"{section}.log_every ({log_every}).")
  return lr, num_steps, log_every


def set_precision(precision: str) -> None:
  """Turns on `jax_enable_x64` for `'float64'`; call before creating arrays."""
  if precision not in PRECISIONS:
    fail("precision", f"is {precision!r}; known values: {PRECISIONS}.")
  if precision == "float64":
    jax.config.update("jax_enable_x64", True)


def float_dtype(precision: str):
  """The dtype of `precision`, checking that float64 is actually enabled."""
  if precision not in PRECISIONS:
    fail("precision", f"is {precision!r}; known values: {PRECISIONS}.")
  if precision == "float64" and jnp.result_type(float) != jnp.float64:
    fail("precision", "is 'float64' but jax_enable_x64 is off: call "
         "dynamics.config.set_precision('float64') first or run inside "
         "`with jax.enable_x64(True):`.")
  return jnp.dtype(precision)


def load_config(path: str, overrides: Iterable = (), arg: str | None = None
                ) -> ml_collections.ConfigDict:
  """`get_config(arg)` of the config file `path`, with `overrides` applied.

  Args:
    path: a Python file defining `get_config(arg=None)` (e.g.
      `configs/deep_linear.py`); `"file.py:smoke"` passes `"smoke"` as `arg`,
      big_vision's way: every config here takes `"smoke"`, a seconds-long run
      of the same grid shape (tests use it).
    overrides: `"field=value"` strings as on the command line
      (`"train.lr=0.02"`, `"sweep.model.width=(64,256)"`; the value is read
      as a Python literal, else taken as a string), `(field, value)` pairs, or
      a dict. A field must exist, except under `sweep.`, where an override
      adds an axis; `sweep={}` removes every axis.
    arg: the argument of `get_config` (instead of `path:arg`).

  A relative `config.experiment` ending in `.py` is resolved against the
  config file's directory (then the working directory) and stored absolute.

  Raises:
    ValueError: naming the file or the field (with the closest field names
      for a typo) when the file is missing, defines no `get_config`, or an
      override names no field, has the wrong type, or sets a field that a
      `config.sweep` axis would replace at every grid point.
  """
  if arg is None and ":" in os.path.basename(path):
    path, _, arg = path.rpartition(":")
  if not os.path.isfile(path):
    raise ValueError(f"config file {path!r} does not exist.")
  spec = importlib.util.spec_from_file_location(
      "_dynamics_config_" + os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not callable(getattr(module, "get_config", None)):
    raise ValueError(f"config file {path!r} defines no get_config().")
  import inspect
  takes_arg = bool(inspect.signature(module.get_config).parameters)
  if arg is not None and not takes_arg:
    raise ValueError(f"config file {path!r}: get_config() takes no argument, got {arg!r}.")
  try:
    config = module.get_config(arg) if takes_arg else module.get_config()
  except ValueError as e:
    raise ValueError(f"config file {path!r}: {e}") from None
  if isinstance(overrides, dict):
    overrides = overrides.items()
  fields = []
  for item in overrides:
    field, value = _split(item) if isinstance(item, str) else item
    set_field(config, field, value)
    fields.append(field)
  swept = set(leaf_fields(config.get("sweep") or {}))
  for field in fields:
    if field in swept:  # the grid would replace the value at every point
      raise ValueError(
          f"`{field}` is an axis of config.sweep, which sets it at every grid "
          f"point: override the axis (`--config.sweep.{field}=(value,)`) or run "
          "one point (`--config.sweep={}`).")
  name = config.get("experiment")
  if isinstance(name, str) and name.endswith(".py") and not os.path.isabs(name):
    here = os.path.join(os.path.dirname(os.path.abspath(path)), name)
    config.experiment = here if os.path.exists(here) else os.path.abspath(name)
  return config


def smoke(arg, config, **fields) -> ml_collections.ConfigDict:
  """`config` with `fields` (dotted names with `__` for `.`: `train__num_steps=40`)
  set when `arg == "smoke"`: a seconds-long run of the same grid shape;
  ValueError for any other argument but None."""
  if arg is None:
    return config
  if arg != "smoke":
    raise ValueError(f"unknown config argument {arg!r}; known: 'smoke'.")
  for name, value in fields.items():
    set_field(config, name.replace("__", "."), value)
  return config


def _split(item: str) -> tuple[str, Any]:
  field, eq, text = item.partition("=")
  if not eq or not field:
    raise ValueError(f"override {item!r} must read field=value.")
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    value = text
  return field.strip(), value


def leaf_fields(config, prefix: str = "") -> list[str]:
  """Every leaf field of a config, dotted (`train.lr`)."""
  out = []
  for k, v in config.items():
    if isinstance(v, (ml_collections.ConfigDict, dict)):
      out += leaf_fields(v, f"{prefix}{k}.")
    else:
      out.append(f"{prefix}{k}")
  return out


def set_field(config, field: str, value) -> None:
  """`config.<field> = value`, a ValueError naming the field if it does not
  exist (except under `sweep.`, which takes new axes) or takes no such value."""
  parts = field.split(".")
  if field == "sweep" and value in ({}, None, ()):
    config.sweep = ml_collections.ConfigDict()
    return
  node = config
  for i, part in enumerate(parts[:-1]):
    if part not in node:
      if parts[0] != "sweep":
        _unknown(config, field)
      node[part] = ml_collections.ConfigDict()
    node = node[part]
    if not isinstance(node, ml_collections.ConfigDict):
      fail(".".join(parts[:i + 1]), "is not a section of the config.")
  name = parts[-1]
  if name not in node:
    if parts[0] != "sweep":
      _unknown(config, field)
    node[name] = tuple(value) if isinstance(value, list) else value
    return
  old = node[name]
  if isinstance(old, tuple) and not isinstance(value, (tuple, list)):
    value = (value,)
  if isinstance(old, ml_collections.ConfigDict):
    fail(field, "is a section; set one of its fields.")
  if isinstance(value, bool) and isinstance(old, (int, float)) and not isinstance(old, bool):
    fail(field, f"is a number ({old!r}); cannot set it to {value!r}.")
  try:
    node[name] = tuple(value) if isinstance(old, tuple) and isinstance(value, list) else value
  except TypeError:
    fail(field, f"is {type(old).__name__} ({old!r}); cannot set it to {value!r}.")


def suggest(field: str, valid) -> str:
  """' Did you mean `train.lr`?' for a typo, else the fields of its section."""
  valid = sorted(valid)
  close = difflib.get_close_matches(field, valid, n=3, cutoff=0.6)
  if not close:
    section = field.rpartition(".")[0]
    close = [v for v in valid if v.rpartition(".")[0] == section][:12]
    return f" Fields of `{section or 'config'}`: {', '.join(close)}." if close else ""
  return f" Did you mean {', '.join(f'`{c}`' for c in close)}?"


def _unknown(config, field: str):
  raise ValueError(f"config field `{field}` does not exist."
                   + suggest(field, leaf_fields(config)))


def load_json_config(path: str) -> ml_collections.ConfigDict:
  """The config a run directory's `config.json` holds (lists back to tuples)."""
  import json
  try:
    with open(path) as f:
      d = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f"{path} is unreadable ({type(e).__name__}).") from None
  tuples = lambda x: ({k: tuples(v) for k, v in x.items()} if isinstance(x, dict) else
                      tuple(tuples(v) for v in x) if isinstance(x, list) else x)
  return ml_collections.ConfigDict(tuples(d))
