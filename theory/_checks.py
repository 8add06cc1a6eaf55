"""Argument checks shared by the theory modules.

Checks on values run only when the value is concrete; under `jit` or `vmap`
the argument is a tracer and only its shape can be checked, so traced calls
skip the value checks instead of failing.
"""

from __future__ import annotations

import jax
import numpy as np


def concrete(x) -> np.ndarray | None:
  """`x` as a numpy array, or None when it is a tracer."""
  try:
    return np.asarray(x)
  except (jax.errors.TracerArrayConversionError,
          jax.errors.ConcretizationTypeError):
    return None


def check_finite(name: str, x) -> None:
  v = concrete(x)
  if v is not None and not np.all(np.isfinite(v)):
    raise ValueError(f"`{name}` must be finite, got {v!r}.")


def check_finite_nonnegative(name: str, x) -> None:
  v = concrete(x)
  if v is None:
    return
  if not np.all(np.isfinite(v)):
    raise ValueError(f"`{name}` must be finite, got {v!r}.")
  if np.any(v < 0):
    raise ValueError(f"`{name}` must be non-negative, got {v!r}.")


def check_positive(name: str, x) -> None:
  v = concrete(x)
  if v is None:
    return
  if not np.all(np.isfinite(v)) or np.any(v <= 0):
    raise ValueError(f"`{name}` must be positive and finite, got {v!r}.")


def check_depth(depth) -> int:
  if isinstance(depth, bool) or not float(depth).is_integer() or depth < 1:
    raise ValueError(f"`depth` must be an integer >= 1, got {depth!r}.")
  return int(depth)


def check_ndim(name: str, x, ndims: tuple[int, ...]) -> None:
  if np.ndim(x) not in ndims:
    raise ValueError(
        f"`{name}` must have {' or '.join(map(str, ndims))} dimensions, "
        f"got shape {np.shape(x)}.")
