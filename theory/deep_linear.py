r"""Exact gradient-flow solutions of deep linear networks.

A depth-`N` linear network `f(x) = W_N ... W_1 x` trained by gradient flow on
the loss of `docs/conventions.md`, `L = (1/2P) sum_mu ||y_mu - f(x_mu)||^2`,
with whitened inputs (`Sigma_xx = I`) and `Sigma_yx = U diag(s) V^T`, has
end-to-end gradient `W - Sigma_yx`. From a balanced, decoupled ("aligned")
initialisation, `W_l = R_l diag(a) R_{l-1}^T` with orthonormal `R_0 = V`,
`R_N = U`, every mode keeps its singular vectors and its strength
`u_i = a_i^N` obeys (Saxe, McClelland & Ganguli 2014, eq. 6-8; Arora, Cohen &
Hazan 2018, thm. 1)

    tau du/dt = N u^(2 - 2/N) (s - u).                                  (1)

Time follows the conventions: `t = lr * k` after `k` full-batch gradient
descent steps, so `tau = 1` reproduces gradient descent at small `lr`.

Closed forms used here:
  * N = 1: `u = u0 e^{-t/tau} + s (1 - e^{-t/tau})`.
  * N = 2: `u = 1 / ((1 - e^{-a})/s + e^{-a}/u0)`, `a = 2 s t / tau`,
    which is Saxe et al.'s `s e^{a} / (e^{a} - 1 + s/u0)` divided through by
    `u0 e^{a}`, so that nothing overflows, and `(1 - e^{-a})/s -> 2t/tau` as
    `s -> 0`; `u0 = 0` stays 0.
  * N >= 3: with `z = (u/s)^(1/N)`, separating variables in (1) gives
    `t = tau / (N s^(2-2/N)) [F(z) - F(z0)]`, where partial fractions over the
    N-th roots of unity `w_k = exp(2 pi i k/N)` give

        F(z) = N z^(2-N) / (2-N) - sum_k Re[w_k^2 Log(z - w_k)].

    The `k = 0` term is `-log|1 - z|`. `mode_strength` inverts `t(z)` by
    bisection in `q = -log|1 - z|`, in which `t` is monotone and which keeps
    full relative precision as `u -> s`; `learning_time` evaluates it directly.
    Derivation in `docs/deep_linear.md`.

All functions are pure jax.numpy, safe under `jit` and `vmap` (argument value
checks run only on concrete inputs), and accurate to float precision in
float64 (`jax_enable_x64`).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np
import scipy.linalg

from theory import _checks

_BISECTION_STEPS = 110  # halves [q0, 40] below float64 resolution
_Q_MAX = 40.0  # 1 - z = e^-40 ~ 4e-18: u equals s to float64 precision


def _float(x) -> jax.Array:
  return jnp.asarray(x, dtype=jnp.result_type(float))


def mode_velocity(u: ArrayLike, s: ArrayLike, depth: int = 2,
                  tau: float = 1.0) -> jax.Array:
  """Right-hand side of eq. (1): `du/dt = N u^(2-2/N) (s - u) / tau`."""
  n = _checks.check_depth(depth)
  u, s = _float(u), _float(s)
  return n * u ** (2.0 - 2.0 / n) * (s - u) / tau


def singular_value_velocity(sigma: ArrayLike, projection: ArrayLike,
                            depth: int = 2) -> jax.Array:
  """`d sigma_r/dt = -N (sigma_r^2)^(1 - 1/N) <grad L(W), u_r v_r^T>` for the
  product `W = W_N ... W_1` of a balanced factorization
  (`W_{l+1}^T W_{l+1} = W_l W_l^T`) under gradient flow on any loss
  `L(W)` (Arora, Cohen, Hu & Luo 2019, Theorem 3); eq. (1) is its case
  `L = 1/2 ||W - Sigma_yx||^2` with aligned modes.

  Args:
    sigma: `[..., R]` singular values of `W`.
    projection: `[..., R]`, `u_r^T grad L(W) v_r` with `u_r, v_r` the
      singular vectors of `sigma_r`.
    depth: `N >= 1`.
  """
  n = _checks.check_depth(depth)
  sigma, projection = _float(sigma), _float(projection)
  return -n * (sigma ** 2) ** (1.0 - 1.0 / n) * projection


def _big_f(z: jax.Array, q: jax.Array, n: int) -> jax.Array:
  """`F(z)` of the module docstring, with its `k = 0` term `q = -log|1-z|`."""
  out = n * z ** (2 - n) / (2 - n) + q
  for k in range(1, n):
    th = 2.0 * math.pi * k / n
    c, sn = math.cos(th), math.sin(th)
    log_abs = 0.5 * jnp.log((z - c) ** 2 + sn**2)
    arg = jnp.arctan2(-sn * jnp.ones_like(z), z - c)
    out = out - (math.cos(2 * th) * log_abs - math.sin(2 * th) * arg)
  return out


def _z_of_q(q: jax.Array, growth: jax.Array) -> jax.Array:
  return jnp.where(growth, -jnp.expm1(-q), 1.0 + jnp.exp(-q))


def _q_of_z(z: jax.Array, growth: jax.Array) -> jax.Array:
  """`q = -log|1 - z|`, accurate for small `z` (growth from `u0 << s`)."""
  return jnp.where(growth, -jnp.log1p(-jnp.where(growth, z, 0.0)),
                   -jnp.log(jnp.abs(z - 1.0)))


def _deep_setup(s, u0, n, tau):
  """Shared set-up of the N >= 3 implicit solution on safe values."""
  degenerate = (s == 0) | (u0 == 0) | (u0 == s)
  s_ = jnp.where(degenerate, 1.0, s)
  u0_ = jnp.where(degenerate, 0.5, u0)
  growth = u0_ < s_
  # z0 = (u0/s)^(1/N) through logs: u0/s can underflow where z0 cannot.
  z0 = jnp.exp((jnp.log(u0_) - jnp.log(s_)) / n)
  q0 = _q_of_z(z0, growth)
  c = tau / (n * s_ ** (2.0 - 2.0 / n))  # t = c [F(z) - F(z0)]
  return s_, growth, z0, q0, c, _big_f(z0, q0, n)


@functools.partial(jax.jit, static_argnums=3)
def _deep_mode_strength(t, s, u0, n, tau):
  s_, growth, z0, q0, c, f0 = _deep_setup(s, u0, n, tau)
  # dt/dq >= c (growth) or c z0^(2-2N) (decay): an upper bracket for q(t).
  slope = c * jnp.where(growth, 1.0, z0 ** (2.0 - 2.0 * n))
  hi = jnp.clip(q0 + t / slope, q0, jnp.maximum(q0, _Q_MAX))
  lo = jnp.broadcast_to(q0, hi.shape)
  # Growth bisects in log q (q > 0 there), so that a mode that has barely
  # moved from a tiny u0 keeps its relative precision; decay in q itself.
  to_w = lambda q: jnp.where(growth, jnp.log(jnp.where(growth, q, 1.0)), q)
  to_q = lambda w: jnp.where(growth, jnp.exp(w), w)

  def bisect(_, bounds):
    lo, hi = bounds
    mid = 0.5 * (lo + hi)
    q = to_q(mid)
    below = c * (_big_f(_z_of_q(q, growth), q, n) - f0) < t
    return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

  lo, hi = jax.lax.fori_loop(0, _BISECTION_STEPS, bisect, (to_w(lo), to_w(hi)))
  # s z^N in logs: z^N may be subnormal (flushed to 0) where s z^N is not.
  u = jnp.exp(jnp.log(s_) + n * jnp.log(_z_of_q(to_q(0.5 * (lo + hi)), growth)))
  u = jnp.where(t == 0, u0, u)
  # s = 0: tau du/dt = -N u^(1+p), p = 2 - 2/N, so u = u0 (1 + p N t u0^p /
  # tau)^(-1/p), the product formed in logs so that no factor overflows.
  p = 2.0 - 2.0 / n
  u0_pos = jnp.where(u0 > 0, u0, 1.0)
  log_x = jnp.log(p * n * t / tau) + p * jnp.log(u0_pos)
  u_s0 = u0_pos * jnp.exp(-jnp.logaddexp(0.0, log_x) / p)
  u = jnp.where(s == 0, u_s0, u)
  u = jnp.where(u0 == s, s, u)
  return jnp.where(u0 == 0, 0.0, u)


def _check_mode_args(t, s, u0, depth, tau):
  n = _checks.check_depth(depth)
  _checks.check_finite_nonnegative("t", t, allow_inf=True)
  _checks.check_finite_nonnegative("s", s)
  if n == 1:  # u = s + (u0 - s) e^{-t/tau} holds for any real u0
    _checks.check_finite("u0", u0)
  else:  # balanced networks have u = a^N >= 0
    _checks.check_finite_nonnegative("u0", u0)
  _checks.check_positive("tau", tau)
  _checks.check_ndim("t", t, (0, 1))
  _checks.check_ndim("s", s, (0, 1))
  _checks.check_ndim("u0", u0, (0, 1))
  try:
    np.broadcast_shapes(np.shape(s), np.shape(u0))
  except ValueError:
    raise ValueError(f"`s` (shape {np.shape(s)}) and `u0` (shape "
                     f"{np.shape(u0)}) must have the same shape or be "
                     "scalars.") from None
  return n


def mode_strength(t: ArrayLike, s: ArrayLike, u0: ArrayLike, depth: int = 2,
                  tau: float = 1.0) -> jax.Array:
  """Strength `u(t)` of each mode under eq. (1), `tau du/dt = N u^(2-2/N)(s-u)`.

  Convention: `docs/conventions.md` (loss with factor 1/2 and mean over
  samples, `t = lr * steps`, `tau = 1` for plain gradient descent).

  Args:
    t: times, `[T]` (or a scalar), >= 0; `inf` gives the limit.
    s: singular values of `Sigma_yx`, scalar or `[M]`, >= 0.
    u0: initial strengths, scalar or `[M]`, >= 0 for depth >= 2 (balanced
      networks have `u = a^N >= 0`), any finite value for depth 1. `u0 = 0` stays 0 for depth >= 2; `u0 > s` decays to s.
    depth: number of weight matrices `N`, an integer >= 1.
    tau: time constant, > 0.

  Returns:
    `[T, M]` (or `[T]` when `s` and `u0` are scalars).
  """
  n = _check_mode_args(t, s, u0, depth, tau)
  s, u0 = jnp.broadcast_arrays(_float(s), _float(u0))
  t = _float(t)
  t = t[..., None] if s.ndim else t
  return _mode_strength(t, s, u0, n, _float(tau))


@functools.partial(jax.jit, static_argnums=3)
def _mode_strength(t, s, u0, n, tau):
  if n == 1:
    # u0 e^{-t} + s (1 - e^{-t}): no cancellation when u0 << s.
    return u0 * jnp.exp(-t / tau) - s * jnp.expm1(-t / tau)
  if n == 2:
    # u = u0 / (u0 h + e^{-a}), a = 2 s t / tau, h = (1 - e^{-a}) / s: Saxe
    # et al.'s `s e^a / (e^a - 1 + s/u0)` divided through by `e^a`, so that
    # nothing overflows, with h -> 2 t / tau as s -> 0 (series below a = 1e-4).
    a = jnp.where(s == 0, 0.0, 2.0 * s * t / tau)
    small = a < 1e-4
    h = jnp.where(small, 2.0 * t / tau * (1.0 - a / 2 + a * a / 6),
                  -jnp.expm1(-a) / jnp.where(small, 1.0, s))
    u0_ = jnp.where(u0 == 0, 1.0, u0)  # 1 / (h + e^{-a} / u0): no subnormals
    u = jnp.where(t == 0, u0, 1.0 / (h + jnp.exp(-a) / u0_))  # t = 0 exactly
    return jnp.where(u0 == 0, 0.0, u)
  return _deep_mode_strength(t, s, u0, n, tau)


def learning_time(s: ArrayLike, u0: ArrayLike, depth: int = 2,
                  tau: float = 1.0, fraction: float = 0.5) -> jax.Array:
  """Time at which a mode first reaches `fraction * s`, from eq. (1).

  Closed forms: depth 1 `tau log((s - u0) / (s (1 - f)))`; depth 2
  `tau/(2s) log(f (s - u0) / (u0 (1 - f)))` (Saxe et al. 2014, eq. 10);
  depth >= 3 the implicit solution `c [F(f^(1/N)) - F(z0)]` of the module
  docstring. Returns 0 when `u0` is already at or past the target on the way
  to `s`, and `inf` when the target is never reached (it lies beyond `s`, or
  `u0 = 0` with depth >= 2). Convention: `docs/conventions.md`.

  Args:
    s: singular values, scalar or `[M]`, >= 0.
    u0: initial strengths, scalar or `[M]`, >= 0.
    depth: integer >= 1.
    tau: time constant, > 0.
    fraction: target as a fraction of `s`, > 0 (values > 1 for decaying
      modes, `u0 > s`).

  Returns:
    Times shaped like `broadcast(s, u0)`.
  """
  n = _check_mode_args(0.0, s, u0, depth, tau)
  _checks.check_positive("fraction", fraction)
  s, u0 = jnp.broadcast_arrays(_float(s), _float(u0))
  return _learning_time(s, u0, n, _float(tau), _float(fraction))


@functools.partial(jax.jit, static_argnums=2)
def _learning_time(s, u0, n, tau, f):
  growth = u0 <= s
  target = f * s
  reached = jnp.where(growth, target <= u0, target >= u0)
  never = ~reached & jnp.where(growth, f >= 1.0, f <= 1.0)
  never = never | ((u0 == 0) & (s > 0) & (n >= 2) & ~reached)
  # Safe values on the masked-out entries keep every branch finite.
  ok = ~(reached | never)
  s_ = jnp.where(ok, s, 1.0)
  u0_ = jnp.where(ok, u0, 0.25)
  f_ = jnp.where(ok, f, 0.5)
  if n == 1:
    t = tau * jnp.log((s_ - u0_) / (s_ * (1.0 - f_)))
  elif n == 2:
    t = tau / (2 * s_) * jnp.log(f_ * (s_ - u0_) / (u0_ * (1.0 - f_)))
  else:
    *_, c, f0 = _deep_setup(s_, u0_, n, tau)
    zf = f_ ** (1.0 / n)
    t = c * (_big_f(zf, -jnp.log(jnp.abs(1.0 - zf)), n) - f0)
  return jnp.where(reached, 0.0, jnp.where(never, jnp.inf, t))


def _svd(sigma_yx):
  _checks.check_ndim("sigma_yx", sigma_yx, (2,))
  v = _checks.concrete(sigma_yx)
  if v is not None and not np.all(np.isfinite(v)):
    raise ValueError("`sigma_yx` must be finite.")
  return jnp.linalg.svd(_float(sigma_yx), full_matrices=False)


def _check_u0_modes(u0, num_modes):
  if np.ndim(u0) == 1 and np.shape(u0)[0] != num_modes:
    raise ValueError(f"`u0` has {np.shape(u0)[0]} modes but `sigma_yx` has "
                     f"{num_modes} singular values (min(d_out, d_in)).")
  _checks.check_ndim("u0", u0, (0, 1))


def predicted_map(t: ArrayLike, sigma_yx: ArrayLike, u0: ArrayLike,
                  depth: int = 2, tau: float = 1.0) -> jax.Array:
  """End-to-end map `W(t) = U diag(u(t)) V^T` of an aligned network.

  Args:
    t: times `[T]`.
    sigma_yx: input-output covariance `Y^T X / P`, `[d_out, d_in]`.
    u0: initial strength of every mode, scalar or `[min(d_out, d_in)]`, in
      the order of decreasing singular value.
    depth, tau: as in `mode_strength`.

  Returns:
    `[T, d_out, d_in]`.
  """
  u_mat, s, vt = _svd(sigma_yx)
  _check_u0_modes(u0, s.shape[0])
  u = mode_strength(t, s, jnp.broadcast_to(_float(u0), s.shape), depth, tau)
  return jnp.einsum("im,...m,mj->...ij", u_mat, u, vt)


def predicted_loss(t: ArrayLike, sigma_yx: ArrayLike, u0: ArrayLike,
                   depth: int = 2, tau: float = 1.0,
                   sigma_yy_trace: float | None = None) -> jax.Array:
  """Training loss `1/2 sum_i (s_i - u_i(t))^2` of an aligned network.

  With `sigma_yy_trace = tr(Y^T Y / P)` the irreducible part
  `1/2 (tr Sigma_yy - sum_i s_i^2)` is added, giving the full loss of the
  conventions, `(1/2P) sum_mu ||y_mu - W x_mu||^2`, for whitened inputs.

  Returns:
    `[T]`.
  """
  _, s, _ = _svd(sigma_yx)
  _check_u0_modes(u0, s.shape[0])
  u = mode_strength(t, s, jnp.broadcast_to(_float(u0), s.shape), depth, tau)
  loss = 0.5 * jnp.sum((s - u) ** 2, axis=-1)
  if sigma_yy_trace is not None:
    _checks.check_finite_nonnegative("sigma_yy_trace", sigma_yy_trace)
    loss = loss + 0.5 * (sigma_yy_trace - jnp.sum(s**2))
  return loss


BALANCE_TOL = 1e-6  # relative imbalance ||W2^T W2 - W1 W1^T - lam I|| allowed


def _graded_basis(a, f):
  """An orthonormal basis `omega [h, h]` of the rows of `a [d, h]` taken in
  decreasing `f` (Gram-Schmidt, twice): column `j` is the part of the row
  `pivot[j]` (a position in `order`; `d` for columns no row reaches) that the
  rows before it do not span. A row's remainder below `max(d, h) eps ||a||`
  (numpy's `matrix_rank` tolerance) counts as spanned."""
  d, h = a.shape
  order = np.argsort(-f, kind="stable")
  tol = max(d, h) * np.finfo(np.float64).eps * max(np.linalg.norm(a, 2), 1e-300)
  basis, pivot = [], []
  for pos, i in enumerate(order):
    if len(basis) == h:
      break
    v = a[i].copy()
    for _ in range(2):
      for b in basis:
        v -= (b @ v) * b
    norm = np.linalg.norm(v)
    if norm > tol:
      basis.append(v / norm)
      pivot.append(pos)
  if len(basis) < h:  # directions no row reaches
    rest = np.linalg.qr(np.concatenate([np.array(basis).reshape(-1, h), np.eye(h)]).T)[0]
    basis += list(rest[:, len(basis):].T)
    pivot += [d] * (h - len(pivot))
  return order, np.array(basis).T, np.array(pivot)


def _half_sqrt_rest(f, s):
  """`log sqrt(H) - max(f, 0) s` with `H = (e^{2fs} - 1) / 2f` (`s` at `f =
  0`), without overflow or cancellation at any `s`."""
  x = 2 * f * s
  with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
    grow = 0.5 * (np.log(-np.expm1(-x)) - np.log(2 * f))  # f > 0: H = e^{x} (1 - e^{-x}) / 2f
    rest = 0.5 * np.log(np.expm1(x) / (2 * f))  # f < 0: bounded
    null = 0.5 * np.log(s) if s > 0 else -np.inf
  return np.where(f > 0, grow, np.where(f < 0, rest, null))


def _flow_factor(s, f, a, order, omega, pivot):
  """`Y [d, h]` with `P_hat(s) = Y Y^T` (`F`'s eigenbasis): the closed form
  `E a (I + a^T H a)^{-1} a^T E`, `E = e^{fs}`, `H = (e^{2fs} - 1) / 2f`,
  written so that nothing overflows at any `s`. In the basis `omega`, `a
  omega = A` is lower trapezoidal in decreasing `f`; scaling column `j` by
  `D_j = e^{max(f_pivot(j), 0) s}` gives `Z = E A / D` and `W = sqrt(H) A / D`,
  whose nonzero entries are bounded (a row never grows faster than its
  column's pivot), and `P_hat = Z (D^{-2} + W^T W)^{-1} Z^T`, taken by the
  QR of `[D^{-1}; W]`. The cost does not depend on `s`."""
  d, h = a.shape
  big_a = a[order] @ omega  # rows in decreasing f
  fs = f[order]
  g = np.maximum(fs, 0.0)  # growth rates
  g_piv = np.where(pivot < d, g[np.minimum(pivot, d - 1)], 0.0)  # [h]
  below = np.arange(d)[:, None] >= pivot[None, :]  # row at or after its column's pivot
  big_a = np.where(below, big_a, 0.0)
  # exponents as differences of rates times s (no cancellation of two large ones)
  lz = np.where(fs[:, None] > 0, (fs[:, None] - g_piv) * s, fs[:, None] * s - g_piv * s)
  lw = (g[:, None] - g_piv) * s + _half_sqrt_rest(fs, s)[:, None]
  with np.errstate(over="ignore", under="ignore", invalid="ignore"):
    z = np.where(below, np.exp(lz), 0.0) * big_a
    w = np.where(below, np.exp(lw), 0.0) * big_a
  log_d = g_piv * s
  stacked = np.concatenate([np.diag(np.exp(-log_d)), w], 0)
  r = np.linalg.qr(stacked, mode="r")
  y = scipy.linalg.solve_triangular(r, z.T, trans="T", lower=False).T  # Z R^{-1}
  return y[np.argsort(order)]


def _lambda_balance(w1, w2):
  """`lam` with `W2^T W2 - W1 W1^T = lam I`, refusing an init off it."""
  gap = w2.T @ w2 - w1 @ w1.T
  h = gap.shape[0]
  lam = float(np.trace(gap)) / h
  scale = max(float(np.linalg.norm(w2.T @ w2) + np.linalg.norm(w1 @ w1.T)), 1e-300)
  imbalance = float(np.linalg.norm(gap - lam * np.eye(h))) / scale
  if imbalance > BALANCE_TOL:
    raise ValueError(
        f"`w1_0`, `w2_0` are not lambda-balanced: ||W2^T W2 - W1 W1^T - lam I||_F / "
        f"(||W2^T W2|| + ||W1 W1^T||) = {imbalance:.3g} with lam = {lam:.6g}, above "
        f"{BALANCE_TOL:g}.")
  return lam


def two_layer_flow(t: ArrayLike, w1_0: ArrayLike, w2_0: ArrayLike,
                   sigma_yx: ArrayLike, tau: float = 1.0) -> dict:
  r"""Exact gradient flow of `f(x) = W2 W1 x` from a lambda-balanced init.

  Gradient flow on `L = (1/2P) sum ||y - W2 W1 x||^2` with whitened inputs,
  `tau dW1/dt = W2^T (Sigma_yx - W2 W1)`, `tau dW2/dt = (Sigma_yx - W2 W1) W1^T`,
  conserves `W2^T W2 - W1 W1^T`. When it is `lam I` at init (lambda-balanced;
  `lam = 0` is balanced), `Q = [W1^T; W2]` obeys `tau dQ/dt = F Q - Q Q^T Q / 2`
  with `F = [[0, Sigma_yx^T], [Sigma_yx, 0]] - (lam / 2) diag(I_in, -I_out)`,
  and `P = Q Q^T = [[W1^T W1, (W2 W1)^T], [W2 W1, W2 W2^T]]` the matrix Riccati
  equation `tau dP/dt = F P + P F - P^2`, solved by

      P(t) = e^{Fs} Q0 (I + Q0^T F^{-1} (e^{2Fs} - I) Q0 / 2)^{-1} Q0^T e^{Fs},

  `s = t / tau` (Fukumizu 1998 for lam = 0 and aligned inits; Braun et al.
  2022 for balanced inits; Dominé et al. 2025 for any lam). `F^{-1}(e^{2Fs} -
  I)` is taken in `F`'s eigenbasis with its limit `2s` on the null space
  (eigenvalues within `d eps max|f|` of 0 count as null). Each `t` is one
  evaluation of the formula, rescaled so that nothing overflows (`_flow_factor`:
  the growing directions are divided out column by column): the cost does not
  depend on `t`, and `t = 1e300` gives the fixed point. An init with no
  component along a direction (to `max(d, h) eps ||Q0||`, numpy's
  `matrix_rank` tolerance) never grows along it. Time as in `docs/conventions.md`
  (`t = lr x steps`). Numpy/scipy in float64; not traceable (a traced argument
  is a `TypeError`).

  Args:
    t: times `[T]`, >= 0 (any order).
    w1_0: `[h, d_in]`; w2_0: `[d_out, h]`; lambda-balanced to `BALANCE_TOL`
      relative to `||W2^T W2|| + ||W1 W1^T||` (else a `ValueError` with the
      measured imbalance).
    sigma_yx: `[d_out, d_in]` input-output covariance.
    tau: time constant > 0.

  Returns:
    `{"w": W2 W1 [T, d_out, d_in], "w1tw1": W1^T W1 [T, d_in, d_in],
    "w2w2t": W2 W2^T [T, d_out, d_out], "lam": lam}`; the weights themselves
    are determined only up to an orthogonal `h x h` rotation.
  """
  _checks.numpy_only("two_layer_flow", t=t, w1_0=w1_0, w2_0=w2_0, sigma_yx=sigma_yx, tau=tau)
  _checks.check_finite_nonnegative("t", t, dtype=np.float64)
  _checks.check_ndim("t", t, (0, 1))
  _checks.check_positive("tau", tau, dtype=np.float64)
  for name, a in (("w1_0", w1_0), ("w2_0", w2_0), ("sigma_yx", sigma_yx)):
    _checks.check_finite(name, a, dtype=np.float64)
    _checks.check_ndim(name, a, (2,))
  w1, w2, syx = (np.asarray(a, np.float64) for a in (w1_0, w2_0, sigma_yx))
  (h, d_in), (d_out, h2) = w1.shape, w2.shape
  if h2 != h or syx.shape != (d_out, d_in):
    raise ValueError(f"shapes must be w1_0 [h, d_in], w2_0 [d_out, h], sigma_yx "
                     f"[d_out, d_in]; got {w1.shape}, {w2.shape}, {syx.shape}.")
  if h == 0:
    raise ValueError("`w1_0` [h, d_in] and `w2_0` [d_out, h] need at least one hidden "
                     "unit (h >= 1).")
  lam = _lambda_balance(w1, w2)
  d = d_in + d_out
  f_mat = np.zeros((d, d))
  f_mat[:d_in, d_in:], f_mat[d_in:, :d_in] = syx.T, syx
  f_mat -= lam / 2 * np.diag(np.r_[np.ones(d_in), -np.ones(d_out)])
  f, u = np.linalg.eigh(f_mat)
  # eigenvalues below eigh's rounding are null (exactly: e^{2fs} at f ~ 1e-16
  # would still blow up at s ~ 1e17)
  f = np.where(np.abs(f) <= d * np.finfo(np.float64).eps * max(np.abs(f).max(), 1e-300), 0.0, f)
  a = u.T @ np.concatenate([w1.T, w2], 0)  # Q0 in F's eigenbasis, [d, h]
  order, omega, pivot = _graded_basis(a, f)
  times = np.atleast_1d(np.asarray(t, np.float64)) / float(tau)
  out = np.empty((len(times), d, d))
  for i, s in enumerate(times):
    y = _flow_factor(s, f, a, order, omega, pivot)
    out[i] = u @ (y @ y.T) @ u.T
  return {"w": out[:, d_in:, :d_in], "w1tw1": out[:, :d_in, :d_in],
          "w2w2t": out[:, d_in:, d_in:], "lam": lam}


def two_layer_ntk(flow: dict, x1: ArrayLike, x2: ArrayLike | None = None) -> np.ndarray:
  """The NTK of `f(x) = W2 W1 x` along `two_layer_flow`'s solution:
  `Theta(x, x')_{ab} = (x . x') (W2 W2^T)_{ab} + (x^T W1^T W1 x') delta_{ab}`
  (the `W1` and `W2` gradients), `[T, n1, n2, d_out, d_out]`. Numpy float64; not traceable (a traced argument is a `TypeError`)."""
  _checks.numpy_only("two_layer_ntk", flow=flow, x1=x1, x2=x2)
  _checks.check_finite("x1", x1, dtype=np.float64)
  _checks.check_ndim("x1", x1, (2,))
  if x2 is not None:
    _checks.check_finite("x2", x2, dtype=np.float64)
    _checks.check_ndim("x2", x2, (2,))
  d_in = np.shape(flow["w1tw1"])[-1]
  for name, x in (("x1", x1), ("x2", x2)):
    if x is not None and np.shape(x)[1] != d_in:
      raise ValueError(f"`{name}` must be [n, {d_in}] (the flow's input dimension), "
                       f"got {np.shape(x)}.")
  x1 = np.asarray(x1, np.float64)
  x2 = x1 if x2 is None else np.asarray(x2, np.float64)
  eye = np.eye(flow["w2w2t"].shape[-1])
  return (np.einsum("ik,jk,tab->tijab", x1, x2, flow["w2w2t"])
          + np.einsum("ik,tkl,jl,ab->tijab", x1, flow["w1tw1"], x2, eye))
