r"""Diagonal linear network `f(x) = <u*u - v*v, x>` as an `(init, apply)` pair.

Parameters `{'u': [d], 'v': [d]}`, the regression vector `beta = u^2 - v^2`.
`init` sets `u = v = alpha` (so `beta = 0` at init): the scale `alpha` moves
gradient flow between the rich regime (`alpha -> 0`: the minimum-l1
interpolator) and the kernel regime (`alpha -> inf`: the minimum-l2 one);
`theory.diagonal_linear` has the interpolator for every `alpha` (Woodworth
et al. 2020). Loss and time in `docs/conventions.md`'s conventions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def init(d: int, alpha: float, dtype=jnp.float32) -> dict:
  """`u = v = alpha`, `[d]` each (no randomness: the init is the scale)."""
  if not isinstance(d, int) or isinstance(d, bool) or d < 1:
    raise ValueError(f"`d` must be a positive integer, got {d!r}.")
  return {"u": jnp.full((d,), alpha, dtype), "v": jnp.full((d,), alpha, dtype)}


def beta(params: dict) -> jax.Array:
  """The regression vector `u^2 - v^2`, `[d]`."""
  return params["u"] ** 2 - params["v"] ** 2


def apply(params: dict, x: jax.Array) -> jax.Array:
  """`f(x) = x @ (u^2 - v^2)` for `x: [n, d]`: `[n]`."""
  return x @ beta(params)
