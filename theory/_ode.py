"""The adaptive ODE solve shared by theory modules: diffrax's Tsit5 (5th order)
with a PID step-size controller (Kidger 2021), saved at given times."""

from __future__ import annotations

from typing import Callable

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from theory import _checks


def check_times(t) -> None:
  """`t`: `[L]` finite, non-negative and non-decreasing (checked where concrete)."""
  _checks.check_finite_nonnegative("t", t)
  _checks.check_ndim("t", t, (1,))
  tc = _checks.concrete(t)
  if tc is not None and np.any(np.diff(tc) < 0):
    raise ValueError("`t` must be non-decreasing.")


def solve(field: Callable, y0, t, args, *, rtol: float, atol: float,
          max_steps: int = 1_000_000):
  """`dy/dt = field(t, y, args)` from `y0` at `t = 0`, saved at the times `t`
  (an array of `y0`'s dtype): a pytree like `y0` with a leading `[L]` axis,
  NaN where the solver failed (past `max_steps`), never a stand-in."""
  sol = diffrax.diffeqsolve(
      diffrax.ODETerm(field), diffrax.Tsit5(), t0=jnp.zeros((), t.dtype), t1=t[-1], dt0=None,
      y0=y0, args=args, saveat=diffrax.SaveAt(ts=t),
      stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
      max_steps=max_steps, throw=False)
  ok = sol.result == diffrax.RESULTS.successful
  return jax.tree_util.tree_map(lambda y: jnp.where(ok, y, jnp.nan), sol.ys)
