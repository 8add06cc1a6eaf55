"""Linear stability of gradient descent, momentum and Adam on a quadratic: the
sharpness each can train at, and the exact trajectory that shows it.

On `L(x) = 1/2 x^T H x`, along an eigenvector of `H` with eigenvalue `lam`,
with `a = lr lam`, the optimizers of `optax` iterate (docs/conventions.md:
`t = lr x steps`):

    GD (`optax.sgd(lr)`):             x' = (1 - a) x
    heavy ball (`sgd(lr, momentum=b)`): u' = b u + a x,  x' = x - u'       (u = lr x trace)
    Nesterov (`nesterov=True`):       u' = b u + a x,  x' = x - a x - b u'

so every mode is a linear recurrence with characteristic polynomial `z - (1 - a)`
(GD), `z^2 - (1 + b - a) z + b` (heavy ball) or `z^2 - (1 + b)(1 - a) z + b (1 - a)`
(Nesterov). A mode is stable while both roots lie inside the unit circle; the
root crosses at `z = -1`, at

    GD:          lam = 2 / lr                         (Cohen et al. 2021)
    heavy ball:  lam = (2 + 2b) / lr
    Nesterov:    lam = (2 + 2b) / ((1 + 2b) lr)

Adam with its preconditioner frozen at `P = diag(sqrt(v_hat) + eps)` (Cohen et
al. 2022) steps `x' = x - lr P^{-1} m'`, `m' = b1 m + (1 - b1) g`: heavy ball in
the preconditioned coordinates with `a = (1 - b1) lr lam`, `lam` an eigenvalue
of `P^{-1/2} H P^{-1/2}`, stable below `(2 + 2 b1) / ((1 - b1) lr)` (38 / lr at
`b1 = 0.9`; the bias correction `1 / (1 - b1^k)` tends to 1 and is left out, as
there). Every function is jit- and vmap-able over its numeric arguments.

`gradient_flow` is what every step size approximates: `dtheta/dt = -grad L`
from the same start, integrated by an adaptive solver (diffrax's Tsit5 with a
PID step-size controller; Kidger 2021), for any loss of a pytree. Gradient
descent follows it to O(lr) in `t = lr x steps` while the sharpness stays
below `2 / lr` and leaves it at the crossing (Cohen et al. 2021).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from theory import _checks, _ode

OPTIMIZERS = ("gd", "momentum", "nesterov")


def gd_threshold(lr: ArrayLike) -> jax.Array:
  """`2 / lr`: the largest Hessian eigenvalue gradient descent at `lr` is
  stable on (module docstring)."""
  _checks.check_positive("lr", lr)
  return 2.0 / jnp.asarray(lr, jnp.result_type(float))


def momentum_threshold(lr: ArrayLike, beta: ArrayLike, nesterov: bool = False) -> jax.Array:
  """`(2 + 2 beta) / lr` for heavy-ball momentum (`optax.sgd(lr, momentum=beta)`),
  `(2 + 2 beta) / ((1 + 2 beta) lr)` with `nesterov=True`: the largest
  eigenvalue the iteration is stable on (module docstring). `beta` in [0, 1)."""
  _checks.check_positive("lr", lr)
  _check_beta("beta", beta)
  lr = jnp.asarray(lr, jnp.result_type(float))
  beta = jnp.asarray(beta, lr.dtype)
  top = 2.0 + 2.0 * beta
  return top / ((1.0 + 2.0 * beta) * lr) if nesterov else top / lr


def adam_threshold(lr: ArrayLike, b1: ArrayLike = 0.9) -> jax.Array:
  """`(2 + 2 b1) / ((1 - b1) lr)`: the largest eigenvalue of the
  preconditioned Hessian `P^{-1/2} H P^{-1/2}` Adam with a frozen
  preconditioner is stable on (Cohen et al. 2022; module docstring)."""
  _checks.check_positive("lr", lr)
  _check_beta("b1", b1)
  lr = jnp.asarray(lr, jnp.result_type(float))
  b1 = jnp.asarray(b1, lr.dtype)
  return (2.0 + 2.0 * b1) / ((1.0 - b1) * lr)


def _check_beta(name, beta):
  _checks.check_finite_nonnegative(name, beta)
  v = _checks.real(name, beta)
  if v is not None and (v >= 1).any():
    raise ValueError(f"`{name}` must lie in [0, 1), got {v!r}.")


def quadratic_trajectory(eigenvalues: ArrayLike, x0: ArrayLike, lr: ArrayLike,
                         steps: ArrayLike, optimizer: str = "gd",
                         beta: ArrayLike = 0.0) -> dict:
  """The exact iterates of `optimizer` on `L = 1/2 sum_i lam_i x_i^2` (the
  Hessian's eigenbasis), from `x0` with zero momentum, at the step counts
  `steps`: each mode's 2x2 recurrence (module docstring) raised to the power
  by repeated squaring (the step count may be traced). For Adam with a frozen
  preconditioner,
  pass the preconditioned eigenvalues and `lr (1 - b1)` with `"momentum"`,
  `beta = b1`.

  Args:
    eigenvalues: `[n]` the Hessian's eigenvalues (any sign).
    x0: `[n]` the start in the eigenbasis.
    lr: the step. steps: `[T]` non-negative integers.
    optimizer: "gd", "momentum" (heavy ball) or "nesterov" (optax's).
    beta: the momentum, in [0, 1) (ignored by "gd").

  Returns:
    `{"x": [T, n], "loss": [T]}`, `loss = 1/2 sum lam x^2`.
  """
  if optimizer not in OPTIMIZERS:
    raise ValueError(f"`optimizer` must be one of {OPTIMIZERS}, got {optimizer!r}.")
  _checks.check_finite("eigenvalues", eigenvalues)
  _checks.check_ndim("eigenvalues", eigenvalues, (1,))
  _checks.check_finite("x0", x0)
  if np.shape(x0) != np.shape(eigenvalues):
    raise ValueError(f"`x0` must have the shape of `eigenvalues` {np.shape(eigenvalues)}, "
                     f"got {np.shape(x0)}.")
  _checks.check_positive("lr", lr)
  _checks.check_finite_nonnegative("steps", steps)
  _checks.check_ndim("steps", steps, (0, 1))
  _check_beta("beta", beta)
  lam = jnp.asarray(eigenvalues, jnp.result_type(float))
  a = jnp.asarray(lr, lam.dtype) * lam
  b = jnp.asarray(beta, lam.dtype) * jnp.ones_like(a)
  one, zero = jnp.ones_like(a), jnp.zeros_like(a)
  if optimizer == "gd":  # state (x, u): u unused
    m = jnp.stack([jnp.stack([1 - a, zero], -1), jnp.stack([zero, zero], -1)], -2)
  elif optimizer == "momentum":  # x' = (1 - a) x - b u, u' = a x + b u
    m = jnp.stack([jnp.stack([1 - a, -b], -1), jnp.stack([a, b], -1)], -2)
  else:  # nesterov: x' = (1 - a(1 + b)) x - b^2 u, u' = a x + b u
    m = jnp.stack([jnp.stack([1 - a * (1 + b), -b * b], -1), jnp.stack([a, b], -1)], -2)
  steps = jnp.atleast_1d(jnp.asarray(steps)).astype(jnp.int32)
  x0 = jnp.asarray(x0, lam.dtype)
  state0 = jnp.stack([x0, jnp.zeros_like(x0)], -1)  # [n, 2]

  def power(k):  # m^k applied to state0, by squaring (31 bits of k)
    def body(i, carry):
      acc, sq = carry
      bit = (k >> i) & 1
      acc = jnp.where(bit == 1, jnp.einsum("nij,nj->ni", sq, acc), acc)
      return acc, jnp.einsum("nij,njk->nik", sq, sq)
    return jax.lax.fori_loop(0, 31, body, (state0, m))[0][:, 0]

  x = jax.vmap(power)(steps)
  return {"x": x, "loss": 0.5 * jnp.sum(lam * x**2, -1)}


def gradient_flow(loss_fn: Callable, params, t: ArrayLike, *args, rtol: float = 1e-6,
                  atol: float = 1e-9, max_steps: int = 1_000_000):
  """The gradient flow `dtheta/dt = -grad loss_fn(theta, *args)` from `params`
  at the times `t`, by diffrax's Tsit5 (5th order, adaptive; a PID controller
  keeps each step's local error below `atol + rtol |theta|`).

  An explicit solver's step is bounded by its stability region, about
  `3.5 / lam_max` once the sharpness `lam_max` is large, so the cost grows with
  the sharpness the flow reaches: about `lam_max t / 3.5` steps of 6 gradients
  each.

  Args:
    loss_fn: `loss_fn(params, *args) -> scalar` (docs/conventions.md's loss).
    params: the start, any pytree of float arrays (its dtype is the solver's).
    t: `[L]` non-decreasing times from 0 (`lr x steps`: docs/conventions.md).
    rtol, atol: the controller's tolerances. max_steps: the solver's cap; past
      it the values are NaN, not a stand-in.

  Returns:
    The parameters at `t`: a pytree like `params` with a leading `[L]` axis.
  """
  _ode.check_times(t)
  for name, tol in (("rtol", rtol), ("atol", atol)):
    if not isinstance(tol, (int, float)) or not tol > 0:
      raise ValueError(f"`{name}` must be a positive number, got {tol!r}.")
  if not isinstance(max_steps, int) or isinstance(max_steps, bool) or max_steps < 1:
    raise ValueError(f"`max_steps` must be a positive integer, got {max_steps!r}.")
  leaf = jax.tree_util.tree_leaves(params)[0]
  t = jnp.asarray(t, leaf.dtype)
  field = lambda _, p, a: jax.tree_util.tree_map(jnp.negative, jax.grad(loss_fn)(p, *a))
  return _ode.solve(field, params, t, args, rtol=rtol, atol=atol, max_steps=max_steps)
