r"""Implicit bias of diagonal linear networks (Woodworth et al., "Kernel and
rich regimes in overparametrized models", COLT 2020).

The network `f(x) = <u*u - v*v, x>` from `u = v = alpha` trained by gradient
flow on the loss of `docs/conventions.md`, `L = (1/2P) ||X beta - y||^2`,
has `du/dt = -2 u g`, `dv/dt = 2 v g` with `g = X^T (X beta - y) / P`, so
`beta(t) = -2 alpha^2 sinh(2 int_0^t g)`: `beta` stays of the form
`2 alpha^2 sinh(X^T mu)`. If the flow reaches an interpolator (`X beta = y`),
that is the one with `arcsinh(beta / (2 alpha^2)) = X^T mu`, the KKT
condition of

    min Q_alpha(beta)  subject to  X beta = y,
    Q_alpha(beta) = alpha^2 sum_i q(beta_i / alpha^2),
    q(z) = 2 - sqrt(4 + z^2) + z arcsinh(z / 2),

since `q'(z) = arcsinh(z / 2)`. As `alpha -> 0`, `Q_alpha / (alpha^2 log(1 /
alpha^2))` tends to the l1 norm (the rich regime); as `alpha -> inf`,
`Q_alpha` tends to `||beta||^2 / (4 alpha^2)` (the kernel regime). The
constants are those of this parameterization; tests/theory/
test_diagonal_linear.py checks them by simulating the network.
numpy/scipy in float64.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy import optimize

from theory import _checks


def q_alpha(beta: ArrayLike, alpha: float) -> float:
  """`Q_alpha(beta) = alpha^2 sum_i q(beta_i / alpha^2)`, computed as
  `sum_i beta_i q(z_i) / z_i` with `q(z) / z = arcsinh(z / 2) - z / (2 +
  sqrt(4 + z^2))` (`2 - sqrt(4 + z^2)` rewritten without its cancellation)
  and `arcsinh(z / 2) = log|z|` to float64 precision past `|z| = 1e16`, so
  that neither `alpha^2` nor `z` over- or underflows: relative precision at
  every `alpha` and `beta`. Numpy float64; not traceable (a traced argument is a `TypeError`)."""
  _checks.numpy_only("q_alpha", beta=beta, alpha=alpha)
  _checks.check_finite("beta", beta, dtype=np.float64)
  _checks.check_positive("alpha", alpha, dtype=np.float64)
  b, a = np.asarray(beta, np.float64), float(alpha)
  with np.errstate(divide="ignore", over="ignore", under="ignore", invalid="ignore"):
    log_z = np.log(np.abs(b)) - 2 * np.log(a)
    big = log_z > np.log(1e16)
    z = np.where(big, 0.0, b / a / a)
    ratio = np.where(big, np.sign(b) * (log_z - 1.0),
                     np.arcsinh(z / 2) - z / (2 + np.hypot(2.0, z)))
  # past 1e16: arcsinh(z/2) - z/(2 + sqrt(4 + z^2)) = sign(z) (log|z| - 1) + O(log|z| / z^2)
  return float(np.sum(b * ratio))


def _check_xy(x, y):
  for name, a in (("x", x), ("y", y)):
    _checks.check_finite(name, a, dtype=np.float64)
  _checks.check_ndim("x", x, (2,))
  _checks.check_ndim("y", y, (1,))
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if x.shape[0] != y.shape[0]:
    raise ValueError(f"`x` [n, d] and `y` [n] disagree: {x.shape}, {y.shape}.")
  if np.linalg.matrix_rank(x) < x.shape[0]:
    raise ValueError(f"`x` {x.shape} must have full row rank (n <= d and independent "
                     "rows) for an interpolator to exist for every `y`.")
  return x, y


def implicit_bias_solution(x: ArrayLike, y: ArrayLike, alpha: float) -> np.ndarray:
  """`argmin Q_alpha(beta)` subject to `x beta = y`: where gradient flow of
  the diagonal network from scale `alpha` converges when it interpolates.

  Solved through its dual: `beta = 2 alpha^2 sinh(x^T mu)` with `mu`
  minimising the convex `2 alpha^2 sum cosh(x^T mu) - y . mu` by damped
  Newton steps (exact Hessian, backtracking) to a residual
  `||x beta - y|| <= 1e-12 ||y||`; a `ValueError` if it stays above 1e-8.
  A step is accepted when it lowers the dual enough (Armijo) or, near the
  solution where the dual's decrease is below its rounding, when it lowers
  the residual. Numpy float64; not traceable (a traced argument is a `TypeError`).

  Args:
    x: `[n, d]`, full row rank (`n <= d`); y: `[n]`; alpha: > 0.

  Returns:
    `beta: [d]`.
  """
  _checks.numpy_only("implicit_bias_solution", x=x, y=y, alpha=alpha)
  x, y = _check_xy(x, y)
  _checks.check_positive("alpha", alpha, dtype=np.float64)
  with np.errstate(over="ignore", under="ignore"):
    a2 = 2 * np.float64(alpha) ** 2
  if not np.isfinite(a2):
    # Q_alpha = ||beta||^2 / (4 alpha^2) (1 + O(||beta||^2 / alpha^4)): past
    # alpha ~ 1e154 the correction is below 1e-300, the minimiser min-l2.
    return min_l2_solution(x, y)
  if a2 == 0:
    raise ValueError(f"`alpha` = {alpha:g} is too small for float64 (2 alpha^2 underflows); "
                     "its limit alpha -> 0 is `min_l1_solution`.")
  dual = lambda m: a2 * np.sum(np.cosh(x.T @ m)) - y @ m
  # start from the l2 solution's dual variable, then damped Newton steps
  mu = np.linalg.lstsq(x.T, np.arcsinh(min_l2_solution(x, y) / a2), rcond=None)[0]
  tol = 1e-12 * max(np.linalg.norm(y), 1e-300)
  residual = lambda m: np.linalg.norm(a2 * x @ np.sinh(x.T @ m) - y)
  for _ in range(500):
    z = x.T @ mu
    grad = a2 * x @ np.sinh(z) - y
    if np.linalg.norm(grad) <= tol:
      break
    try:
      step = np.linalg.solve(a2 * (x * np.cosh(z)) @ x.T, grad)
    except np.linalg.LinAlgError:
      raise ValueError(f"`x` is numerically rank deficient (condition number "
                       f"{np.linalg.cond(x):.3g}): the interpolation constraint "
                       "x beta = y does not determine the dual variable.") from None
    size, now, norm = 1.0, dual(mu), np.linalg.norm(grad)
    while (dual(mu - size * step) > now - 1e-4 * size * grad @ step
           and not residual(mu - size * step) < norm) and size > 1e-12:
      size /= 2
    mu = mu - size * step
  beta = a2 * np.sinh(x.T @ mu)
  if np.linalg.norm(x @ beta - y) > 1e-8 * max(np.linalg.norm(y), 1e-300):
    raise ValueError(f"the dual problem did not converge at alpha = {alpha:g} (residual "
                     f"{np.linalg.norm(x @ beta - y):.3g}); alpha is too small for float64 "
                     "(sinh overflows beyond ~700).")
  return beta


def min_l1_solution(x: ArrayLike, y: ArrayLike) -> np.ndarray:
  """`argmin ||beta||_1` subject to `x beta = y` (the `alpha -> 0` limit), as
  the linear program over `beta = p - n`, `p, n >= 0` (scipy's HiGHS).
  Numpy float64; not traceable (a traced argument is a `TypeError`)."""
  _checks.numpy_only("min_l1_solution", x=x, y=y)
  x, y = _check_xy(x, y)
  d = x.shape[1]
  res = optimize.linprog(np.ones(2 * d), A_eq=np.hstack([x, -x]), b_eq=y,
                         bounds=(0, None), method="highs")
  return res.x[:d] - res.x[d:]


def min_l2_solution(x: ArrayLike, y: ArrayLike) -> np.ndarray:
  """`argmin ||beta||_2` subject to `x beta = y` (the `alpha -> inf` limit),
  `x^T (x x^T)^{-1} y`. Numpy float64; not traceable (a traced argument is a `TypeError`)."""
  _checks.numpy_only("min_l2_solution", x=x, y=y)
  x, y = _check_xy(x, y)
  return x.T @ np.linalg.solve(x @ x.T, y)
