"""Learning curves of kernel (ridge) regression from the kernel's spectrum.

Kernel regression on `n` samples with ridge `delta`, `f_hat(x) = k(x, X) (K +
delta I)^{-1} y`, of a target `f = sum_k v_k phi_k` in the eigenbasis of the
kernel's integral operator under the data distribution (`lambda_k`, each with
multiplicity `m_k`), labels `y = f(x) + noise`, has, to leading order in
`1/n`, a test error set by one number, the effective regularisation `kappa`
(Bordelon, Canatar & Pehlevan 2020; Canatar, Bordelon & Pehlevan 2021; the
eigenlearning form of Simon, Dickens, Karkada & DeWeese 2023; Jacot et al.
2020):

    sum_k m_k lambda_k / (lambda_k + kappa) + delta / kappa = n,
    L_k = lambda_k / (lambda_k + kappa)                    (learnability),
    E0 = n / (n - sum_k m_k L_k^2),
    excess = E0 sum_k m_k (1 - L_k)^2 v_k^2 + (E0 - 1) noise,
    test = excess + noise,      train = (delta / (n kappa))^2 test,
    residual_k = m_k [(1 - L_k)^2 v_k^2 + L_k^2 test / n].

`v_k^2` is the target's power in each of the `m_k` modes of eigenvalue `k`
(the group holds `m_k v_k^2`); `noise` is the label noise variance; `excess`
is the mean squared error against the clean target, `test` against fresh
noisy labels, `train` the training error, `residual_k` the power of the
residual `f_hat - f` in group `k` (its mean misses `(1 - L_k) v_k`, its
spread adds `L_k^2 test / n` per mode; the groups sum to `excess`), all
averaged over training sets.
With `delta = 0` and `n` at least the number of modes (`sum m_k` over
`lambda_k > 0`), `kappa = 0`, every `L_k = 1` and `sum m_k L_k` the number of modes rather
than `n`; `E0 = n / (n - modes)`, infinite at `n` = modes (the interpolation
peak, where any noise makes the error infinite). Conventions: docs/conventions.md (the loss
`1/2 mean (f - y)^2` is half these mean squared errors). The functions are
jit- and vmap-able over `n`, `ridge` and `noise`.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from theory import _checks

_BISECTIONS = 80  # halvings of the bracket on log kappa: below float64 rounding
_NEWTON = 4       # Newton steps on log kappa after them


def _check_spectrum(eigenvalues, multiplicities, coefficients=None):
  lam = jnp.asarray(eigenvalues, jnp.result_type(float))
  _checks.check_finite_nonnegative("eigenvalues", eigenvalues)
  _checks.check_ndim("eigenvalues", eigenvalues, (1,))
  if multiplicities is not None:
    _checks.check_finite_nonnegative("multiplicities", multiplicities)
    if np.shape(multiplicities) != np.shape(eigenvalues):
      raise ValueError(f"`multiplicities` must have the shape of `eigenvalues` "
                       f"{np.shape(eigenvalues)}, got {np.shape(multiplicities)}.")
  if coefficients is not None:
    _checks.check_finite("target_coefficients", coefficients)
    if np.shape(coefficients) != np.shape(eigenvalues):
      raise ValueError(f"`target_coefficients` must have the shape of `eigenvalues` "
                       f"{np.shape(eigenvalues)}, got {np.shape(coefficients)}.")
  m = jnp.ones_like(lam) if multiplicities is None else jnp.asarray(multiplicities, lam.dtype)
  return lam, m


def _check_n_ridge(n, ridge):
  _checks.check_positive("n", n)
  _checks.check_finite_nonnegative("ridge", ridge)


def _kappa(lam, m, n, ridge):
  """The root of `sum m lam / (lam + kappa) + ridge / kappa = n` (decreasing in
  kappa): bisection on log kappa in `[lo, hi]`, then Newton. `hi = (sum m lam
  + ridge) / n` makes the left side at most `n`; `lo` is `ridge / n` (the left
  side at least `n` there) or, at ridge 0, far below the smallest eigenvalue
  that matters. No root above `lo` (ridge 0, `n` >= the number of modes):
  `kappa = 0`."""
  dtype = lam.dtype
  n, ridge = jnp.asarray(n, dtype), jnp.asarray(ridge, dtype)
  f = lambda k: jnp.sum(m * lam / (lam + k)) + ridge / k - n
  top = jnp.max(jnp.where(m > 0, lam, 0.0))
  hi = (jnp.sum(m * lam) + ridge) / n
  tiny = jnp.finfo(dtype).tiny ** 0.5 * jnp.maximum(top, jnp.finfo(dtype).tiny)
  lo = jnp.where(ridge > 0, ridge / n, tiny)
  hi = jnp.maximum(hi, lo)

  def bisect(_, b):
    a, c = b
    mid = 0.5 * (a + c)
    pos = f(jnp.exp(mid)) > 0  # the root lies above mid
    return jnp.where(pos, mid, a), jnp.where(pos, c, mid)

  a, c = jax.lax.fori_loop(0, _BISECTIONS, bisect, (jnp.log(lo), jnp.log(hi)))
  u = 0.5 * (a + c)

  def newton(_, u):
    k = jnp.exp(u)
    df = -k * (jnp.sum(m * lam / (lam + k) ** 2) + ridge / k**2)  # d f / d log k
    step = jnp.where(df < 0, f(k) / df, 0.0)
    return jnp.clip(u - step, a - 1.0, c + 1.0)

  u = jax.lax.fori_loop(0, _NEWTON, newton, u)
  return jnp.where((ridge <= 0) & (f(lo) <= 0), 0.0, jnp.exp(u))


def effective_regularization(eigenvalues: ArrayLike, n, ridge=0.0,
                             multiplicities: ArrayLike | None = None):
  """`kappa`, the root of `sum_k m_k lambda_k / (lambda_k + kappa) + ridge /
  kappa = n` (module docstring; 0 at ridge 0 once `n` reaches the number of
  modes). Robust from `n = 1` to past the number of modes and at ridge 0;
  jit- and vmap-able over `n` and `ridge`. Conventions:
  docs/conventions.md.

  Args:
    eigenvalues: `[K]` the kernel operator's eigenvalues (>= 0).
    n: the number of training samples (> 0; any positive real).
    ridge: the ridge `delta` of `(K + delta I)^{-1}` (>= 0).
    multiplicities: `[K]` how many modes share each eigenvalue (default 1).
  """
  lam, m = _check_spectrum(eigenvalues, multiplicities)
  _check_n_ridge(n, ridge)
  return _kappa(lam, m, n, ridge)


def learnability(eigenvalues: ArrayLike, n, ridge=0.0,
                 multiplicities: ArrayLike | None = None):
  """`L_k = lambda_k / (lambda_k + kappa)` per eigenvalue (`[K]`): the fraction
  of a mode's coefficient the mean predictor learns. `sum_k m_k L_k = n -
  ridge / kappa`. Arguments as `effective_regularization`."""
  lam, m = _check_spectrum(eigenvalues, multiplicities)
  _check_n_ridge(n, ridge)
  kappa = _kappa(lam, m, n, ridge)
  return jnp.where(lam > 0, lam / (lam + kappa), 0.0)


def test_error(eigenvalues: ArrayLike, target_coefficients: ArrayLike, n, ridge=0.0,
               noise=0.0, multiplicities: ArrayLike | None = None) -> dict:
  """The learning curve of kernel ridge regression (module docstring; Canatar
  et al. 2021 eqs. for `E_g`, Simon et al. 2023's `E0` form).

  Args:
    eigenvalues: `[K]` eigenvalues (>= 0) of the kernel operator.
    target_coefficients: `[K]` `v_k`: the target's coefficient on each of the
      `m_k` modes of eigenvalue `k` (power `v_k^2` per mode).
    n: training samples (> 0). ridge: `delta` (>= 0). noise: the label
      noise variance (>= 0).
    multiplicities: `[K]` (default 1).

  Returns:
    `{"excess", "test", "train", "kappa", "learnability" [K], "e0",
    "mode_errors" [K], "mode_residuals" [K]}`: `mode_errors_k = E0 (1 -
    L_k)^2 v_k^2 m_k`, the group's share of the bias part of `excess`
    (Canatar et al.'s mode error); `mode_residuals_k = m_k [(1 - L_k)^2 v_k^2
    + L_k^2 test / n]`, the expected power of `f_hat - f` in the group's modes
    (Simon et al.'s mean and covariance of the learned coefficients), what a
    projection of one fit's residual measures. Both sum to the bias part and
    to `excess`. At `ridge = 0` and `n` equal to the number of modes `E0` is
    infinite (the interpolation peak).
  """
  lam, m = _check_spectrum(eigenvalues, multiplicities, target_coefficients)
  _check_n_ridge(n, ridge)
  _checks.check_finite_nonnegative("noise", noise)
  v = jnp.asarray(target_coefficients, lam.dtype)
  kappa = _kappa(lam, m, n, ridge)
  learn = jnp.where(lam > 0, lam / (lam + kappa), 0.0)
  n_ = jnp.asarray(n, lam.dtype)
  e0 = n_ / (n_ - jnp.sum(m * learn**2))
  miss = (1 - learn) ** 2  # 0 where kappa = 0: no bias, whatever E0
  mode = jnp.where(miss > 0, e0 * m * miss * v**2, 0.0)
  noise = jnp.asarray(noise, lam.dtype)
  excess = jnp.sum(mode) + jnp.where(noise > 0, (e0 - 1) * noise, 0.0)
  test = excess + noise
  ratio = jnp.where(kappa > 0, jnp.asarray(ridge, lam.dtype) / (n_ * kappa), 0.0)
  spread = jnp.where(learn > 0, m * learn**2 * test / n_, 0.0)
  return {"excess": excess, "test": test, "train": ratio**2 * test, "kappa": kappa,
          "learnability": learn, "e0": e0, "mode_errors": mode,
          "mode_residuals": m * miss * v**2 + spread}


def multiplicity(d: int, degree: int) -> int:
  """The dimension of the degree-`l` spherical harmonics on `S^{d-1}`:
  `(2l + d - 2) binom(l + d - 3, l - 1) / l` (1 at `l = 0`, 2 on the circle).
  Python integers; not traceable (a traced argument is a `TypeError`)."""
  from math import comb
  _checks.numpy_only("multiplicity", d=d, degree=degree)
  d = _checks.check_int("d", d, minimum=2)
  degree = _checks.check_int("degree", degree, minimum=0)
  if degree == 0:
    return 1
  if d == 2:
    return 2
  return (2 * degree + d - 2) * comb(degree + d - 3, degree - 1) // degree


def gegenbauer(t: ArrayLike, max_degree: int, d: int) -> jax.Array:
  """`P_l(t)` for `l = 0..max_degree`: the Gegenbauer polynomials of `S^{d-1}`,
  `C_l^{(d-2)/2}` normalised to `P_l(1) = 1` (Legendre for `d = 3`,
  Chebyshev `cos(l arccos t)` for `d = 2`), by the three-term recurrence
  `(l + d - 2) P_{l+1} = (2l + d - 2) t P_l - l P_{l-1}`. For unit `x`, `y`
  uniform on the sphere, `E_x[P_l(x.u) P_l(x.w)] = P_l(u.w) / m_l` (the
  addition theorem, `m_l` the degree's multiplicity), so `sqrt(m_l) P_l(x.u)`
  is a unit-power degree-`l` function. jit- and vmap-able over `t`.

  Returns: `[max_degree + 1, *t.shape]`.
  """
  max_degree = _checks.check_int("max_degree", max_degree, minimum=0)
  d = _checks.check_int("d", d, minimum=2)
  t = jnp.asarray(t, jnp.result_type(t, float))
  out = [jnp.ones_like(t), t]
  for l in range(1, max_degree):
    out.append(((2 * l + d - 2) * t * out[l] - l * out[l - 1]) / (l + d - 2))
  return jnp.stack(out[:max_degree + 1])


def sphere_spectrum(kernel_fn: Callable, d: int, max_degree: int, *, radius: float = 1.0,
                    which: str = "ntk", quadrature: int = 200) -> dict:
  """Eigenvalues and multiplicities of a dot-product kernel on the sphere
  `S^{d-1}` of `radius` under the uniform measure, degrees `0..max_degree`, by
  Funk-Hecke (Smola et al. 2001; Bietti & Mairal 2019):

      lambda_l = c_d int_{-1}^{1} h(t) P_l(t) (1 - t^2)^{(d-3)/2} dt,
      c_d = Gamma(d/2) / (sqrt(pi) Gamma((d-1)/2)),

  `h(t)` the kernel between two points at cosine `t`, `P_l` the Gegenbauer
  polynomial `C_l^{(d-2)/2}` normalised to `P_l(1) = 1` (Legendre for `d =
  3`), by Gauss-Jacobi quadrature with `quadrature` nodes; multiplicity
  `(2l + d - 2) binom(l + d - 3, l - 1) / l`. Numpy float64; not traceable (a
  traced argument is a `TypeError`).

  Args:
    kernel_fn: `kernel_fn(x1 [n1, d], x2 [n2, d])` returning `[n1, n2]` or a
      dict of them (`theory.ntk.mlp_kernel`'s; `which` picks the entry). Its
      inputs here have norm `radius` (mlp_kernel's convention `|x|^2 = d` is
      `radius=sqrt(d)`).
    d: the ambient dimension (>= 2).
    max_degree: the largest degree (>= 0).

  Returns:
    `{"eigenvalues": [D], "multiplicities": [D], "degree": [D], "tail"}`
    (float64). `tail = h(1) - sum_l m_l lambda_l`, the trace the listed
    degrees leave out (`h(1) = sum_l m_l lambda_l` over every degree): the
    degrees above `max_degree` have eigenvalues far below `kappa` once they
    matter, and there they act on kernel regression as a ridge of `tail`, so
    pass `ridge + tail` to `test_error` (docs/learning_curves.md).
  """
  from scipy.special import eval_gegenbauer, eval_legendre, gammaln, roots_jacobi
  _checks.numpy_only("sphere_spectrum", d=d, max_degree=max_degree, radius=radius)
  d = _checks.check_int("d", d, minimum=2)
  max_degree = _checks.check_int("max_degree", max_degree, minimum=0)
  quadrature = _checks.check_int("quadrature", quadrature, minimum=2)
  _checks.check_positive("radius", radius)
  if not callable(kernel_fn):
    raise ValueError(f"`kernel_fn` must be callable, got {type(kernel_fn).__name__}.")
  a = (d - 3) / 2
  t, w = roots_jacobi(quadrature, a, a)
  x0 = np.zeros((1, d))
  x0[0, 0] = radius
  xs = np.zeros((len(t), d))
  xs[:, 0], xs[:, 1] = radius * t, radius * np.sqrt(np.maximum(1 - t**2, 0.0))
  with jax.enable_x64(True):
    out = kernel_fn(jnp.asarray(x0), jnp.asarray(np.concatenate([x0, xs])))
    if isinstance(out, dict):
      if which not in out:
        raise ValueError(f"`which` must be one of {sorted(out)}, got {which!r}.")
      out = out[which]
    h = np.asarray(out, np.float64).reshape(-1)
  if h.shape != (len(t) + 1,) or not np.all(np.isfinite(h)):
    raise ValueError(f"`kernel_fn` must return a finite [1, {len(t) + 1}] array for one point "
                     f"against {len(t) + 1}, got shape {np.shape(out)}.")
  h_one, h = h[0], h[1:]
  c = np.exp(gammaln(d / 2) - 0.5 * np.log(np.pi) - gammaln((d - 1) / 2))
  degrees = np.arange(max_degree + 1)
  if d == 2:  # circle: Chebyshev, P_l(t) = cos(l arccos t), multiplicity 2
    poly = np.cos(degrees[:, None] * np.arccos(np.clip(t, -1, 1))[None])
  elif d == 3:
    poly = np.stack([eval_legendre(l, t) for l in degrees])
  else:
    alpha = (d - 2) / 2
    poly = np.stack([eval_gegenbauer(l, alpha, t) / eval_gegenbauer(l, alpha, 1.0)
                     for l in degrees])
  lam = c * poly @ (w * h)
  mult = np.array([multiplicity(d, l) for l in degrees], np.float64)
  return {"eigenvalues": lam, "multiplicities": mult, "degree": degrees,
          "tail": float(h_one - np.sum(mult * lam))}


def empirical_spectrum(kernel_matrix: ArrayLike) -> dict:
  """The spectrum of a kernel on a finite domain of `M` points with uniform
  weights: the eigenvalues of `K / M` (descending, clipped at 0) and the
  eigenvectors scaled to unit mean square (`phi_k(x_i) = sqrt(M) u_ik`), so
  that a target's coefficients are `v = phi^T y / M`. Numpy float64;
  not traceable (a traced argument is a `TypeError`).

  Returns:
    `{"eigenvalues": [M], "eigenvectors": [M, M]}` (float64).
  """
  _checks.numpy_only("empirical_spectrum", kernel_matrix=kernel_matrix)
  k = np.asarray(kernel_matrix, np.float64)
  if k.ndim != 2 or k.shape[0] != k.shape[1]:
    raise ValueError(f"`kernel_matrix` must be square, got shape {k.shape}.")
  if not np.all(np.isfinite(k)):
    raise ValueError("`kernel_matrix` must be finite.")
  if np.abs(k - k.T).max() > 1e-8 * max(np.abs(k).max(), 1e-300):
    raise ValueError("`kernel_matrix` must be symmetric.")
  m = k.shape[0]
  lam, u = np.linalg.eigh((k + k.T) / 2 / m)
  order = np.argsort(lam)[::-1]
  return {"eigenvalues": np.maximum(lam[order], 0.0), "eigenvectors": np.sqrt(m) * u[:, order]}


def kernel_descent(k: ArrayLike, y: ArrayLike, lr, steps: ArrayLike, ridge=0.0):
  """Gradient descent on a linear model of kernel `k [n, n]` (a network
  linearised on its NTK) with weight decay to its init: after `steps [L]`
  steps of size `lr` on `1/(2n) |f - y|^2 + ridge/(2n) |theta - theta0|^2`,
  from `f = 0`, the coefficients `alpha [L, n]` of `f = k(., X) alpha`, and
  kernel ridge regression's (`steps = inf`, `(K + ridge I)^{-1} y`). In the
  eigenbasis `k = V diag(lambda) V^T`: `alpha = V diag((1 - (1 - a)^s) /
  (lambda + ridge)) V^T y`, `a = lr (lambda + ridge) / n`. Eigenvalues at or
  below `n eps max(lambda)` are null (as in `lstsq`). jit- and vmap-able.

  Returns: `(alpha [L, n], alpha_krr [n])`.
  """
  _check_n_ridge(1.0, ridge)
  _checks.check_positive("lr", lr)
  k = jnp.asarray(k, jnp.result_type(float))
  n = k.shape[0]
  lam, vec = jnp.linalg.eigh(k)
  lam = jnp.where(lam <= n * jnp.finfo(lam.dtype).eps * lam[-1], 0.0, lam)
  s = lam + ridge
  a, steps = lr * s / n, jnp.atleast_1d(jnp.asarray(steps, lam.dtype))[:, None]
  decay = jnp.sign(1 - a) ** (steps % 2) * jnp.abs(1 - a) ** steps  # (1 - a)^steps
  moved = jnp.where(a < 0.5, -jnp.expm1(steps * jnp.log1p(-jnp.minimum(a, 0.5))), 1 - decay)
  null = s <= 0
  inv = jnp.where(null, 0.0, 1 / jnp.where(null, 1.0, s))
  proj = vec.T @ jnp.asarray(y, lam.dtype)
  return (moved * inv * proj) @ vec.T, vec @ (inv * proj)
