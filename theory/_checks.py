"""Argument checks shared by the theory modules.

Every numeric argument must be real numbers: a string, `None`, a boolean, a
complex number or an object array is a `ValueError` naming the argument, on
concrete and traced values alike (a tracer's dtype is known). Checks on values
(finite, sign, symmetry) run only when the value is concrete; under `jit` or
`vmap` the argument is a tracer and only its dtype and shape can be checked,
so traced calls skip the value checks instead of failing.

Values are checked in the working precision (`jnp.result_type(float)`:
float32 unless `jax_enable_x64` is on), so `t = 1e300` with float32 is refused
as not representable instead of silently becoming `inf`.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np


def concrete(x) -> np.ndarray | None:
  """`x` as a numpy array, or None when it is a tracer."""
  try:
    return np.asarray(x)
  except (jax.errors.TracerArrayConversionError,
          jax.errors.ConcretizationTypeError):
    return None


def numpy_only(function: str, **args) -> None:
  """A one-line `TypeError` when any of `args` is traced: `function` computes
  in numpy/scipy float64 and cannot run under `jit` or `vmap`."""
  for name, x in args.items():
    if any(isinstance(leaf, jax.Array) and concrete(leaf) is None
           for leaf in jax.tree_util.tree_leaves(x)):
      raise TypeError(f"`{function}` computes in numpy float64 and is not traceable: "
                      f"`{name}` is traced (under jit or vmap); call it with concrete arrays "
                      f"and loop over the values.")


def real(name: str, x, dtype=None) -> np.ndarray | None:
  """Checks that `x` holds real numbers; its values in the working float
  precision (or `dtype`, for functions computing in numpy float64), or None
  when traced."""
  precision = dtype
  if x is None or isinstance(x, (str, bytes)):
    raise ValueError(f"`{name}` must be a real number or array, got {x!r}.")
  dtype = getattr(x, "dtype", None)
  if dtype is None:
    try:
      dtype = np.asarray(x).dtype
    except (TypeError, ValueError):
      raise ValueError(f"`{name}` must be a real number or array, got "
                       f"{type(x).__name__}.") from None
  kind = np.dtype(dtype).kind
  if kind == "c":
    raise ValueError(f"`{name}` must be real, got complex values.")
  if kind not in "iuf":
    raise ValueError(f"`{name}` must be a real number or array, got dtype "
                     f"{np.dtype(dtype)} ({type(x).__name__}).")
  v = concrete(x)
  if v is None:
    return None
  working = np.dtype(jnp.result_type(float) if precision is None else precision)
  with np.errstate(over="ignore"):
    cast = v.astype(working)
  overflow = np.isfinite(v) & ~np.isfinite(cast)
  if np.any(overflow):
    raise ValueError(
        f"`{name}` = {v[overflow].flat[0]:.3g} is not representable in "
        f"{working} (enable float64 with `jax.config.update('jax_enable_x64', "
        "True)` or `with jax.enable_x64(True):`).")
  return cast


def check_finite(name: str, x, dtype=None) -> None:
  v = real(name, x, dtype)
  if v is not None and not np.all(np.isfinite(v)):
    raise ValueError(f"`{name}` must be finite, got {v!r}.")


def check_finite_nonnegative(name: str, x, allow_inf: bool = False, dtype=None) -> None:
  v = real(name, x, dtype)
  if v is None:
    return
  if np.any(np.isnan(v)) or (not allow_inf and not np.all(np.isfinite(v))):
    raise ValueError(f"`{name}` must be finite, got {v!r}.")
  if np.any(v < 0):
    raise ValueError(f"`{name}` must be non-negative, got {v!r}.")


def check_positive(name: str, x, dtype=None) -> None:
  v = real(name, x, dtype)
  if v is None:
    return
  if not np.all(np.isfinite(v)) or np.any(v <= 0):
    raise ValueError(f"`{name}` must be positive and finite, got {v!r}.")


def check_int(name: str, value, minimum: int = 1) -> int:
  """A Python or numpy integer (or an integral float) `>= minimum`."""
  ok = (isinstance(value, (numbers.Integral, np.integer))
        or (isinstance(value, (float, np.floating)) and float(value).is_integer()))
  if isinstance(value, (bool, np.bool_)) or not ok or value < minimum:
    raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")
  return int(value)


def check_depth(depth) -> int:
  return check_int("depth", depth)


def check_ndim(name: str, x, ndims: tuple[int, ...]) -> None:
  if np.ndim(x) not in ndims:
    raise ValueError(
        f"`{name}` must have {' or '.join(map(str, ndims))} dimensions, "
        f"got shape {np.shape(x)}.")


def check_result(names: str, value) -> None:
  """A concrete result that is not finite although its (checked, finite)
  arguments are means they overflow the working precision."""
  v = concrete(value)
  if v is not None and not np.all(np.isfinite(v)):
    raise ValueError(
        f"{names} are too large for {np.dtype(jnp.result_type(float))}: the "
        "result overflows (rescale them, or enable float64 with "
        "`jax.config.update('jax_enable_x64', True)`).")
