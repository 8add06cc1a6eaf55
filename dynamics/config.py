"""Config validation and precision: errors name the field, before compiling."""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp

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
