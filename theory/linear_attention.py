r"""One layer of linear self-attention learning linear regression in context.

Task (docs/conventions.md, docs/linear_attention.md): a prompt draws
`w ~ N(0, I_d)`, context inputs `x_1..x_N` and a query `x_q`, all
`N(0, Lambda)`, labels `y_i = w.x_i + eps_i`, `eps ~ N(0, noise_var)`. The
tokens are the columns of `Z = [[x_1 .. x_N, x_q], [y_1 .. y_N, 0]]` and the
layer is

    f(Z) = Z + W_PV Z M Z^T W_KQ Z / N,     M = diag(I_N, 0),

with the prediction `y_hat = f(Z)[d, N]` (label row, query column). With
`W_KQ = [[G, 0], [0, 0]]` and `W_PV = [[0, 0], [0, u]]` ("aligned") it is

    y_hat = x_q^T Gamma h,    Gamma = u G^T,    h = (1/N) sum_i y_i x_i,

and every function here speaks of this `Gamma`.

Exact risk (Gaussian fourth moments; derivation in the docs), with
`c = (tr Lambda + noise_var) / N`:

    R(Gamma) = E (y_hat - y_q)^2
             = noise_var + tr Lambda - 2 tr(Gamma Lambda^2)
               + (1 + 1/N) tr(Gamma^T Lambda Gamma Lambda^2)
               + c tr(Gamma^T Lambda Gamma Lambda).

Inputs with independent coordinates of kurtosis `kappa = E x_k^4 / (E x_k^2)^2`
(`kurtosis`; 3 is Gaussian, 9/5 uniform as in von Oswald et al.'s code) and
a diagonal `Lambda` change one coefficient: `1 + 1/N` becomes
`1 + (kappa - 2)/N` here and below.

Its minimiser (Zhang, Frei & Bartlett 2024 for noise_var = 0) is
`Gamma* = ((1 + 1/N) Lambda + c I)^{-1}`; for `Lambda = I` it is one step of
gradient descent with `lr* = N / (N + 1 + d + noise_var)`.

Gradient flow (conventions: `t = lr * steps`, `d theta/dt = -grad L`) on
`L = R / 2` from the aligned init keeps the aligned form (the other blocks
have zero population gradient there, by symmetry `w -> -w`), and with
`E = Lambda Gamma ((1 + 1/N) Lambda^2 + c Lambda) - Lambda^2`

    du/dt = -tr(G E),     dG/dt = -u E^T.

For `Lambda = I`, `G = g I`: `gamma = u g` obeys
`dgamma/dt = sqrt(C^2 + 4 d gamma^2) (1 - a gamma)` with the conserved
`C = u^2 - d g^2` and `a = (N + 1 + d + noise_var) / N`, solved in closed
form by `gamma = C/(2 sqrt d) sinh(phi)`, a Riccati equation in `e^phi`.
"""

from __future__ import annotations

import numpy as np
import jax.numpy as jnp
from jax.typing import ArrayLike
from scipy.integrate import solve_ivp

from theory import _checks


def _float(x) -> jnp.ndarray:
  return jnp.asarray(x, dtype=jnp.result_type(float))


_check_int = _checks.check_int


def _check_cov(cov, d: int | None = None) -> jnp.ndarray:
  """A symmetric positive semi-definite, non-zero `[d, d]` covariance."""
  if np.ndim(cov) != 2 or np.shape(cov)[0] != np.shape(cov)[1]:
    raise ValueError(f"`cov` must be a square matrix, got shape {np.shape(cov)}.")
  if d is not None and np.shape(cov)[0] != d:
    raise ValueError(f"`cov` must be [{d}, {d}], got shape {np.shape(cov)}.")
  v = _checks.real("cov", cov)
  if v is not None:
    v = v.astype(float)
    if not np.all(np.isfinite(v)):
      raise ValueError("`cov` must be finite.")
    scale = max(np.abs(v).max(), np.finfo(float).tiny)
    if np.abs(v - v.T).max() > 1e-6 * scale:
      raise ValueError("`cov` must be symmetric.")
    eig = np.linalg.eigvalsh((v + v.T) / 2)
    if eig.min() < -1e-6 * scale:
      raise ValueError(f"`cov` must be positive semi-definite, smallest "
                       f"eigenvalue {eig.min():.3g}.")
    if eig.max() <= 0:
      raise ValueError("`cov` must be non-zero.")
  return _float(cov)


def _fourth(kurtosis, cov, n: int):
  """`1 + (kappa - 2)/N`, the coefficient of `tr(Gamma^T L Gamma L^2)`; a
  kurtosis other than 3 needs a diagonal `cov` (independent coordinates)."""
  k = _checks.real("kurtosis", kurtosis)
  if k is not None and not (np.ndim(k) == 0 and np.isfinite(k) and k >= 1):
    raise ValueError(f"`kurtosis` must be a finite scalar >= 1, got {k!r}.")
  v = _checks.real("cov", cov) if cov is not None else None
  if v is not None and k is not None and float(k) != 3.0:
    off = np.abs(v - np.diag(np.diag(v))).max()
    if off > 1e-6 * np.abs(v).max():
      raise ValueError("`kurtosis` other than 3 needs a diagonal `cov` (inputs with "
                       f"independent coordinates); off-diagonal entries up to {off:.3g}.")
  return 1 + (kurtosis - 2) / n


def _check_common(n_context, noise_var) -> int:
  n = _check_int("n_context", n_context)
  _checks.check_finite_nonnegative("noise_var", noise_var)
  return n


def gd_params(d: int, lr: ArrayLike) -> dict:
  """Linear-attention parameters equal to one GD step from `w = 0`.

  One step with learning rate `lr` on `(1/2N) sum_i (w.x_i - y_i)^2` gives
  `w_1 = lr (1/N) sum_i y_i x_i`, predicting `y_hat = lr x_q^T h`: the
  aligned parameters with `G = I_d`, `u = lr` (`Gamma = lr I`).

  Returns:
    `{'w_kq': [[I_d, 0], [0, 0]], 'w_pv': [[0, 0], [0, lr]]}`, both
    `[d + 1, d + 1]`.
  """
  d = _check_int("d", d)
  _checks.check_finite("lr", lr)
  lr = _float(lr)
  w_kq = jnp.zeros((d + 1, d + 1), lr.dtype).at[:d, :d].set(jnp.eye(d, dtype=lr.dtype))
  w_pv = jnp.zeros((d + 1, d + 1), lr.dtype).at[d, d].set(lr)
  return {"w_kq": w_kq, "w_pv": w_pv}


def icl_risk(gamma: ArrayLike, cov: ArrayLike, n_context: int,
             noise_var: ArrayLike = 0.0, *, kurtosis: ArrayLike = 3.0) -> jnp.ndarray:
  """`E (x_q^T Gamma h - y_q)^2`, the exact in-context risk (module docstring).

  Args:
    gamma: `[d, d]` predictor matrix, or a scalar meaning `gamma * I`.
    cov: `[d, d]` input covariance `Lambda` (symmetric PSD).
    n_context: context length `N >= 1`.
    noise_var: label noise variance, on the context and on the query label.
    kurtosis: of each input coordinate (3: Gaussian); other values need a
      diagonal `cov` and independent coordinates.
  """
  n = _check_common(n_context, noise_var)
  cov = _check_cov(cov)
  fourth = _fourth(kurtosis, cov, n)
  _checks.check_finite("gamma", gamma)
  gamma = _float(gamma)
  if gamma.ndim == 0:
    gamma = gamma * jnp.eye(cov.shape[0], dtype=cov.dtype)
  elif gamma.shape != cov.shape:
    raise ValueError(f"`gamma` must be a scalar or {cov.shape}, got {gamma.shape}.")
  c = (jnp.trace(cov) + noise_var) / n
  cov2 = cov @ cov
  quad = gamma.T @ cov @ gamma
  risk = (noise_var + jnp.trace(cov) - 2 * jnp.trace(gamma @ cov2)
          + fourth * jnp.trace(quad @ cov2) + c * jnp.trace(quad @ cov))
  _checks.check_result("`gamma` and `cov`", risk)
  return risk


def optimal_preconditioner(cov: ArrayLike, n_context: int, noise_var: ArrayLike = 0.0,
                           *, kurtosis: ArrayLike = 3.0) -> jnp.ndarray:
  """`Gamma* = ((1 + 1/N) Lambda + (tr Lambda + noise_var)/N I)^{-1}`, `[d, d]`.

  The minimiser of `icl_risk` (it solves `grad R = 0`, the risk being convex
  in `Gamma`), reached by gradient flow on the linear-attention loss. With
  `kurtosis` (as in `icl_risk`) `1 + 1/N` becomes `1 + (kurtosis - 2)/N`.
  """
  n = _check_common(n_context, noise_var)
  cov = _check_cov(cov)
  fourth = _fourth(kurtosis, cov, n)
  c = (jnp.trace(cov) + noise_var) / n
  return jnp.linalg.inv(fourth * cov + c * jnp.eye(cov.shape[0], dtype=cov.dtype))


def optimal_gd_lr(d: int, n_context: int, noise_var: ArrayLike = 0.0,
                  cov: ArrayLike | None = None, *, kurtosis: ArrayLike = 3.0) -> jnp.ndarray:
  """The best single GD learning rate, `argmin_eta icl_risk(eta I)`.

  Isotropic inputs (`cov = None`, `Lambda = I_d`): `N / (N + 1 + d + noise_var)`,
  so that `gd_params(d, optimal_gd_lr(...))` is the global optimum. For a
  given `cov`: `tr L^2 / ((1 + 1/N) tr L^3 + c tr L^2)`, no longer optimal
  among all `Gamma` unless `cov` is a multiple of `I`. With `kurtosis` (as in
  `icl_risk`) `1 + 1/N` becomes `1 + (kurtosis - 2)/N`: for `cov = s I`,
  `N / (s (N + kurtosis - 2 + d) + noise_var)`.
  """
  d = _check_int("d", d)
  n = _check_common(n_context, noise_var)
  fourth = _fourth(kurtosis, cov, n)
  if cov is None:
    return _float(n / (n * fourth + d + noise_var))
  cov = _check_cov(cov, d)
  c = (jnp.trace(cov) + noise_var) / n
  cov2 = cov @ cov
  return jnp.trace(cov2) / (fourth * jnp.trace(cov2 @ cov) + c * jnp.trace(cov2))


def flow_velocity(u: ArrayLike, G: ArrayLike, cov: ArrayLike, n_context: int,
                  noise_var: ArrayLike = 0.0) -> tuple[jnp.ndarray, jnp.ndarray]:
  """`(du/dt, dG/dt) = (-tr(G E), -u E^T)`: gradient flow on `icl_risk(u G^T) / 2`.

  `E = dL/dGamma = Lambda Gamma ((1 + 1/N) Lambda^2 + c Lambda) - Lambda^2`.
  """
  n = _check_common(n_context, noise_var)
  cov = _check_cov(cov)
  _checks.check_finite("u", u)
  _checks.check_ndim("u", u, (0,))
  _checks.check_finite("G", G)
  if np.shape(G) != cov.shape:
    raise ValueError(f"`G` must be shaped like `cov` {cov.shape}, got {np.shape(G)}.")
  u, G = _float(u), _float(G)
  c = (jnp.trace(cov) + noise_var) / n
  e = cov @ (u * G.T) @ ((1 + 1 / n) * cov @ cov + c * cov) - cov @ cov
  return -jnp.trace(G @ e), -u * e.T


def _isotropic_gamma(t, d, a, u0, g0):
  """`gamma(t) = u g` in closed form (module docstring), float64 numpy.

  With `k = |C| / (2 sqrt d)`, `gamma = k sinh(phi)` and `E = e^phi` obeys a
  logistic equation with fixed point `E+ = e^{phi+}`, `sinh(phi+) = 1/(a k)`:
  `r = (E - E+)/(E + 1/E+) = r0 e^{-lam t}`, `lam = 2 sqrt(d (1 + (a k)^2))`.
  `gamma` is formed from the displacement from whichever end (the init or the
  fixed point) leaves the smaller terms, so neither a huge `|C|` (`E+ -> 1`)
  nor a huge `gamma0` cancels.
  """
  rd = np.sqrt(d)
  big_c = u0**2 - d * g0**2
  gamma0 = u0 * g0
  if big_c == 0.0:  # balanced: logistic in gamma, gamma keeps its sign
    if gamma0 == 0.0:
      return np.zeros_like(t)
    x = 2 * rd * t
    if gamma0 > 0:  # grows to 1/a
      return gamma0 / (np.exp(-x) - a * gamma0 * np.expm1(-x))
    # gamma0 < 0 decays to the saddle at 0 (its stable manifold), divided
    # through by e^x so that nothing overflows
    return gamma0 * np.exp(-x) / (1 + a * gamma0 * np.expm1(-x))
  k = abs(big_c) / (2 * rd)
  b = a * k
  phi_p, phi0 = np.arcsinh(1 / b), np.arcsinh(gamma0 / k)
  e_p, e0 = np.exp(phi_p), np.exp(phi0)
  lam = 2 * rd * np.hypot(1.0, b)
  diff0 = e_p * np.expm1(phi0 - phi_p)               # E0 - E+
  r0 = diff0 / (e0 + 1 / e_p)
  r = r0 * np.exp(-lam * t)
  if r0 > 0:  # start above E+: (1 - r0) + r0 (1 - e^{-lam t}), two positive terms
    one_minus_r = (e_p + 1 / e_p) / (e0 + 1 / e_p) + r0 * -np.expm1(-lam * t)
  else:       # r <= 0: 1 - r is a sum of positive terms
    one_minus_r = 1 - r
  # from the init: E - E0 = -(E0 - E+)(1 - e^{-lam t}) / (1 - r)
  delta = np.log1p(diff0 * np.expm1(-lam * t) / one_minus_r / e0)
  start = (gamma0 * np.cosh(delta), k * np.cosh(phi0) * np.sinh(delta))
  # from the fixed point: phi = phi+ + log1p(r / E+^2) - log1p(-r)
  eps = np.log1p(r / e_p**2) - np.log1p(-r)
  near = (np.cosh(eps) / a, k * np.cosh(phi_p) * np.sinh(eps))
  use_start = np.abs(start[0]) + np.abs(start[1]) <= np.abs(near[0]) + np.abs(near[1])
  return np.where(use_start, start[0] + start[1], near[0] + near[1])


def gradient_flow(t: ArrayLike, d: int, n_context: int, u0: float, g0: float,
                  noise_var: float = 0.0, cov: ArrayLike | None = None) -> dict:
  r"""Population gradient flow from the aligned init `W_KQ = [[g0 I, 0], [0, 0]]`,
  `W_PV = [[0, 0], [0, u0]]`, on `L = (1/2) E (y_hat - y_q)^2`.

  Time is `t = lr * steps` (docs/conventions.md). Isotropic inputs
  (`cov = None`) use the closed form of the module docstring; a given `cov`
  is solved in its eigenbasis (`G` stays `Q diag(g_j) Q^T`, `d + 1` coupled
  ODEs) with scipy's LSODA and the exact Jacobian at `rtol = 1e-11`, in a
  time that grows like `log t`. Computed in float64 numpy; not traceable (a
  traced argument is a `TypeError`).

  Args:
    t: times `>= 0`, scalar or 1-D.
    d, n_context: input dimension and context length `N`.
    u0, g0: the aligned init.
    noise_var: label noise variance.
    cov: `[d, d]` input covariance; `None` means `I_d`.

  Returns:
    dict of numpy arrays over `t`: `'u'` (`[T]`), `'G'` (`[T, d, d]`),
    `'gamma'` (`Gamma = u G^T`, `[T, d, d]`) and `'loss'` (`[T]`, `R / 2`);
    for `cov = None` also the scalars `'g'` and `'ug'` (`[T]`).
  """
  _checks.numpy_only("gradient_flow", t=t, u0=u0, g0=g0, noise_var=noise_var, cov=cov)
  d = _check_int("d", d)
  n = _check_common(n_context, noise_var)
  for name, x in (("u0", u0), ("g0", g0)):
    _checks.check_finite(name, x)
    _checks.check_ndim(name, x, (0,))
  if not np.isfinite(float(u0)**2 + d * float(g0)**2):
    raise ValueError(f"`u0` and `g0` are too large: u0^2 + d g0^2 overflows "
                     f"float64 (u0 = {u0!r}, g0 = {g0!r}).")
  _checks.real("t", t)
  t = np.asarray(t, dtype=np.float64)
  _checks.check_ndim("t", t, (0, 1))
  _checks.check_finite_nonnegative("t", t)
  scalar, t = t.ndim == 0, np.atleast_1d(t)
  u0, g0, noise_var = float(u0), float(g0), float(noise_var)
  if cov is None:
    a = (n + 1 + d + noise_var) / n
    gamma = _isotropic_gamma(t, d, a, u0, g0)
    big_c = u0**2 - d * g0**2
    s = np.hypot(big_c, 2 * np.sqrt(d) * gamma)     # u^2 + d g^2
    if big_c > 0:        # u keeps its sign, u^2 = (C + s) / 2
      u = np.sign(u0) * np.sqrt((big_c + s) / 2)
      g = gamma / u
    elif big_c < 0:      # g keeps its sign, d g^2 = (s - C) / 2
      g = np.sign(g0) * np.sqrt((s - big_c) / (2 * d))
      u = gamma / g
    else:                # balanced: u^2 = d g^2 = s / 2
      u = np.sign(u0) * np.sqrt(s / 2)
      g = np.sign(g0) * np.sqrt(s / (2 * d))
    eye = np.eye(d)
    out = {"u": u, "g": g, "ug": gamma, "G": g[:, None, None] * eye,
           "gamma": gamma[:, None, None] * eye,
           # 1 - 2 gamma + a gamma^2 without cancelling near gamma* = 1/a
           "loss": 0.5 * (noise_var + d * ((1 - 1 / a) + a * (gamma - 1 / a)**2))}
  else:
    _check_cov(cov, d)
    cov = np.asarray(cov, dtype=np.float64)  # not through the working precision
    lam, q = np.linalg.eigh((cov + cov.T) / 2)
    lam = np.clip(lam, 0.0, None)
    c = (lam.sum() + noise_var) / n
    m = (1 + 1 / n) * lam**2 + c * lam
    m_ = np.where(m > 0, m, 1.0)

    def rhs(_, z):
      e = lam * z[0] * z[1:] * m - lam**2
      return np.concatenate([[-np.dot(z[1:], e)], -z[0] * e])

    def jac(_, z):
      u, g = z[0], z[1:]
      e = lam * u * g * m - lam**2
      out = np.diag(np.concatenate([[-np.sum(g * g * lam * m)], -u * u * lam * m]))
      out[0, 1:] = -(e + g * lam * u * m)
      out[1:, 0] = -(e + u * lam * g * m)
      return out

    z0 = np.concatenate([[u0], np.full(d, g0)])
    order = np.argsort(t)
    # LSODA switches to BDF once the flow is stiff (near the fixed point, or
    # with large |u0|, |g0|), so its steps grow geometrically: the cost grows
    # like log t, not t.
    sol = solve_ivp(rhs, (0.0, float(t.max())), z0, method="LSODA", jac=jac,
                    t_eval=t[order], rtol=1e-11, atol=1e-14)
    if not sol.success:
      raise RuntimeError(f"gradient_flow: ODE solver failed: {sol.message}")
    z = np.empty((len(t), d + 1))
    z[order] = sol.y.T
    u, gj = z[:, 0], z[:, 1:]
    gam = u[:, None] * gj
    G = np.einsum("ij,tj,kj->tik", q, gj, q)
    out = {"u": u, "G": G, "gamma": u[:, None, None] * np.swapaxes(G, 1, 2),
           # lam - 2 gam lam^2 + gam^2 lam m, written about the optimum lam/m
           "loss": 0.5 * (noise_var + np.sum(np.where(
               m > 0, lam * m * (gam - lam / m_) ** 2 + lam * (1 - lam**2 / m_),
               lam), 1))}
  return {k: v[0] for k, v in out.items()} if scalar else out
