"""Online SGD in the teacher-student setup: soft committee machines.

A student `sigma(x) = sum_i v_i g(w_i . x / sqrt(N))` with `K` hidden units
learns from a teacher `tau(x) = sum_n v*_n g(w*_n . x / sqrt(N))` with `M`,
on Gaussian inputs `x ~ N(0, I_N)` (Saad & Solla 1995; Biehl & Schwarze 1995;
Goldt et al. 2019). The fields `lambda_i = w_i . x / sqrt(N)` and `nu_n =
w*_n . x / sqrt(N)` are jointly Gaussian with covariances given by the order
parameters (docs/conventions.md)

    Q = W W^T / N  [K, K],   R = W W*^T / N  [K, M],   T = W* W*^T / N  [M, M],

so every average over inputs is an average over Gaussian fields with
covariance `[[Q, R], [R^T, T]]`. Activations: `'erf'` is `g(x) = erf(x /
sqrt(2))` (Saad & Solla's choice), `'relu'` and `'linear'`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from theory import _checks

ACTIVATIONS = ("erf", "relu", "linear")


def _pair_mean(activation: str, c_ab, c_aa, c_bb):
  """`E[g(a) g(b)]` for zero-mean Gaussian `(a, b)` with variances `c_aa`,
  `c_bb` and covariance `c_ab` (broadcast): erf `(2/pi) arcsin(c_ab /
  sqrt((1 + c_aa)(1 + c_bb)))`; relu `sqrt(c_aa c_bb) (sin th + (pi - th) cos
  th) / (2 pi)` with `cos th` the correlation; linear `c_ab`."""
  if activation == "erf":
    return 2 / jnp.pi * jnp.arcsin(c_ab / jnp.sqrt((1 + c_aa) * (1 + c_bb)))
  if activation == "relu":
    scale = jnp.sqrt(c_aa * c_bb)
    safe = jnp.where(scale > 0, scale, 1.0)
    cos = jnp.clip(c_ab / safe, -1.0, 1.0)
    sin = jnp.sqrt(jnp.maximum(1 - cos**2, 0.0))
    theta = jnp.arctan2(sin, cos)  # stable at cos = +-1
    return jnp.where(scale > 0, scale * (sin + (jnp.pi - theta) * cos) / (2 * jnp.pi), 0.0)
  return c_ab


def _check_order_parameters(q, r, t, v, v_teacher, activation):
  if activation not in ACTIVATIONS:
    raise ValueError(f"`activation` must be one of {ACTIVATIONS}, got {activation!r}.")
  for name, a, nd in (("q", q, 2), ("r", r, 2), ("t", t, 2)):
    _checks.check_finite(name, a)
    _checks.check_ndim(name, a, (nd,))
  (k, k2), (m, m2), (kr, mr) = np.shape(q), np.shape(t), np.shape(r)
  if k != k2 or m != m2 or (kr, mr) != (k, m):
    raise ValueError(f"shapes must be q [K, K], r [K, M], t [M, M]; got {np.shape(q)}, "
                     f"{np.shape(r)}, {np.shape(t)}.")
  for name, a, n in (("v", v, k), ("v_teacher", v_teacher, m)):
    if a is not None:
      _checks.check_finite(name, a)
      if np.shape(a) != (n,):
        raise ValueError(f"`{name}` must have shape ({n},), got {np.shape(a)}.")
  values = [_checks.concrete(a) for a in (q, r, t)]
  if any(x is None for x in values):
    return  # traced: shapes and dtypes only
  qv, rv, tv = (np.asarray(x, np.float64) for x in values)
  for names, c in (("`q`", qv), ("`t`", tv), ("`q`, `r`, `t` (jointly)",
                                             np.block([[qv, rv], [rv.T, tv]]))):
    scale = max(np.abs(c).max(), 1e-300)
    if np.abs(c - c.T).max() > 1e-6 * scale:
      raise ValueError(f"{names} must be symmetric: a covariance of the fields.")
    low = np.linalg.eigvalsh((c + c.T) / 2).min()
    if low < -1e-6 * scale:
      raise ValueError(f"{names} must be positive semi-definite (a covariance of the "
                       f"fields): smallest eigenvalue {low:.3g}.")


def committee_error(q: ArrayLike, r: ArrayLike, t: ArrayLike, v: ArrayLike | None = None,
                    v_teacher: ArrayLike | None = None, activation: str = "erf"):
  """The generalisation error `eps = 1/2 E_x (sigma(x) - tau(x))^2` of a soft
  committee machine, exactly, from its order parameters:

      eps = 1/2 [sum_ij v_i v_j E g(l_i) g(l_j) + sum_nm v*_n v*_m E g(n_n) g(n_m)
                 - 2 sum_in v_i v*_n E g(l_i) g(n_n)],

  each pair average in closed form (`_pair_mean`; for erf Saad & Solla's
  arcsin form). Conventions: docs/conventions.md (order parameters).
  jit- and vmap-able over every numeric argument; value checks (symmetry,
  positive semi-definiteness of `[[q, r], [r^T, t]]`) run on concrete values.

  Args:
    q: `[K, K]` student overlaps `W W^T / N`.
    r: `[K, M]` student-teacher overlaps `W W*^T / N`.
    t: `[M, M]` teacher overlaps `W* W*^T / N`.
    v, v_teacher: second-layer weights `[K]`, `[M]` (default ones).
    activation: one of `ACTIVATIONS`.

  Returns:
    `eps`, a scalar.
  """
  _check_order_parameters(q, r, t, v, v_teacher, activation)
  q, r, t = (jnp.asarray(a, jnp.result_type(float)) for a in (q, r, t))
  v = jnp.ones(q.shape[0], q.dtype) if v is None else jnp.asarray(v, q.dtype)
  vt = jnp.ones(t.shape[0], q.dtype) if v_teacher is None else jnp.asarray(v_teacher, q.dtype)
  dq, dt = jnp.diagonal(q), jnp.diagonal(t)
  ss = _pair_mean(activation, q, dq[:, None], dq[None, :])
  tt = _pair_mean(activation, t, dt[:, None], dt[None, :])
  st = _pair_mean(activation, r, dq[:, None], dt[None, :])
  return 0.5 * (v @ ss @ v + vt @ tt @ vt - 2 * v @ st @ vt)


def _erf_i3(c, a, b, d):
  """`E[g'(l_a) l_b g(l_d)]` for `g = erf(x / sqrt(2))`, fields with covariance
  `c` (Saad & Solla 1995): `(2/pi) (C_bd (1 + C_aa) - C_ab C_ad) / ((1 + C_aa)
  sqrt((1 + C_aa)(1 + C_dd) - C_ad^2))`."""
  caa, cdd, cad, cab, cbd = c[a, a], c[d, d], c[a, d], c[a, b], c[b, d]
  lam3 = (1 + caa) * (1 + cdd) - cad**2
  return 2 / jnp.pi * (cbd * (1 + caa) - cab * cad) / ((1 + caa) * jnp.sqrt(lam3))


def _erf_i4(c, a, b, e, f):
  """`E[g'(l_a) g'(l_b) g(l_e) g(l_f)]` for `g = erf(x / sqrt(2))` (Saad &
  Solla 1995): `(4 / pi^2) arcsin(L0 / sqrt(L1 L2)) / sqrt(L4)`."""
  caa, cbb, cab = c[a, a], c[b, b], c[a, b]
  cae, caf, cbe, cbf, cee, cff, cef = c[a, e], c[a, f], c[b, e], c[b, f], c[e, e], c[f, f], \
      c[e, f]
  lam4 = (1 + caa) * (1 + cbb) - cab**2
  lam0 = lam4 * cef - cbe * cbf * (1 + caa) - cae * caf * (1 + cbb) + cab * cae * cbf \
      + cab * caf * cbe
  lam1 = lam4 * (1 + cee) - cbe**2 * (1 + caa) - cae**2 * (1 + cbb) + 2 * cab * cae * cbe
  lam2 = lam4 * (1 + cff) - cbf**2 * (1 + caa) - caf**2 * (1 + cbb) + 2 * cab * caf * cbf
  return 4 / jnp.pi**2 / jnp.sqrt(lam4) * jnp.arcsin(lam0 / jnp.sqrt(lam1 * lam2))


def committee_drift(q: ArrayLike, r: ArrayLike, t: ArrayLike, *, lr, v: ArrayLike | None = None,
                    v_teacher: ArrayLike | None = None, activation: str = "erf",
                    noise: ArrayLike = 0.0, train_second_layer: bool = False) -> dict:
  """The right-hand side of the order-parameter ODEs of online SGD (Saad &
  Solla 1995; Goldt et al. 2019 for the second layer), in `alpha = steps / N`.

  One step on a fresh `x` with label `y = tau(x) + xi`, `xi ~ N(0, noise)`, is
  `w_i <- w_i - lr dL/dw_i`, `L = 1/2 (sigma - y)^2`, i.e. `w_i += lr delta_i x
  / sqrt(N)` with `delta_i = v_i g'(l_i) (y - sigma)`; with
  `train_second_layer`, `v_i += (lr / N) (y - sigma) g(l_i)` (Goldt et al.'s
  1/N scaling of the second layer's rate). Then

      dQ_ik/dalpha = lr E[delta_i l_k + delta_k l_i] + lr^2 E[delta_i delta_k],
      dR_in/dalpha = lr E[delta_i nu_n],      dv_i/dalpha = lr E[(y - sigma) g(l_i)],

  the `lr^2` term from `|x|^2 / N -> 1`; the noise enters only there, as
  `noise v_i v_k E[g'(l_i) g'(l_k)]`. Averages in closed form for
  `activation='erf'` (Saad & Solla's `I2`, `I3`, `I4`). Conventions:
  docs/conventions.md. jit- and vmap-able over every numeric argument
  (`noise` included).

  Returns:
    `{"dq": [K, K], "dr": [K, M], "dv": [K]}` (`dv` zeros unless
    `train_second_layer`).
  """
  _check_order_parameters(q, r, t, v, v_teacher, activation)
  if activation != "erf":
    raise ValueError(f"`activation` must be 'erf' for committee_drift (the closed forms "
                     f"used), got {activation!r}.")
  _checks.check_positive("lr", lr)
  _checks.check_finite_nonnegative("noise", noise)
  q, r, t = (jnp.asarray(a, jnp.result_type(float)) for a in (q, r, t))
  k, m = q.shape[0], t.shape[0]
  v = jnp.ones(k, q.dtype) if v is None else jnp.asarray(v, q.dtype)
  vt = jnp.ones(m, q.dtype) if v_teacher is None else jnp.asarray(v_teacher, q.dtype)
  c = jnp.block([[q, r], [r.T, t]])  # fields: students 0..K-1, teachers K..K+M-1
  coef = jnp.concatenate([-v, vt])  # tau - sigma = coef . g(fields)
  idx = jnp.arange(k + m)
  stu = jnp.arange(k)
  # E[g'(l_i) f_b (tau - sigma)] for every student i and field b
  i3 = jnp.einsum("ibd,d->ib", _erf_i3(c, stu[:, None, None], idx[None, :, None],
                                       idx[None, None, :]), coef)
  d_lam = v[:, None] * i3  # E[delta_i f_b]
  i4 = _erf_i4(c, stu[:, None, None, None], stu[None, :, None, None],
               idx[None, None, :, None], idx[None, None, None, :])
  dq_ = jnp.diagonal(q)
  i2 = 2 / jnp.pi / jnp.sqrt((1 + dq_[:, None]) * (1 + dq_[None, :]) - q**2)  # E g'(l_i) g'(l_k)
  dd = v[:, None] * v[None, :] * (jnp.einsum("ikef,e,f->ik", i4, coef, coef) + noise * i2)
  dq = lr * (d_lam[:, :k] + d_lam[:, :k].T) + lr**2 * dd
  dr = lr * d_lam[:, k:]
  pair = _pair_mean("erf", c[:k], jnp.diagonal(q)[:, None], jnp.diagonal(c)[None, :])
  dv = lr * pair @ coef if train_second_layer else jnp.zeros(k, q.dtype)
  return {"dq": dq, "dr": dr, "dv": dv}


def committee_flow(q0: ArrayLike, r0: ArrayLike, t: ArrayLike, alpha: ArrayLike, *, lr,
                   v0: ArrayLike | None = None, v_teacher: ArrayLike | None = None,
                   noise: ArrayLike = 0.0, train_second_layer: bool = False,
                   dalpha: float = 0.01) -> dict:
  """The order parameters along online SGD's ODEs (`committee_drift`, erf) from
  `(q0, r0, v0)`, at the times `alpha` (examples / N, increasing, from 0), by
  classical Runge-Kutta with steps of at most `dalpha` (global error
  `O(dalpha^4)`). jit- and vmap-able over `lr`, `noise` and the initial
  order parameters; `alpha` and `dalpha` must be concrete (they set the
  number of steps). `error` is against the clean teacher (`committee_error`);
  against noisy labels add `noise / 2`.

  Returns:
    `{"q": [A, K, K], "r": [A, K, M], "v": [A, K], "error": [A]}`.
  """
  _check_order_parameters(q0, r0, t, v0, v_teacher, "erf")
  _checks.check_positive("lr", lr)
  _checks.check_finite_nonnegative("noise", noise)
  a = _checks.concrete(alpha)
  if a is None:
    raise ValueError("`alpha` must be concrete (it sets the number of integration steps).")
  a = np.atleast_1d(np.asarray(a, np.float64))
  if a.ndim != 1 or not np.all(np.isfinite(a)) or np.any(a < 0) or np.any(np.diff(a) < 0):
    raise ValueError(f"`alpha` must be finite, >= 0 and increasing, got {alpha!r}.")
  if not (isinstance(dalpha, (int, float)) and dalpha > 0):
    raise ValueError(f"`dalpha` must be a positive number, got {dalpha!r}.")
  dtype = jnp.result_type(float)
  q0, r0, t = (jnp.asarray(x, dtype) for x in (q0, r0, t))
  v0 = jnp.ones(q0.shape[0], dtype) if v0 is None else jnp.asarray(v0, dtype)
  gaps = np.diff(np.concatenate([[0.0], a]))
  sub = max(1, int(np.ceil(gaps.max() / dalpha))) if len(a) else 1

  def rhs(y):
    d = committee_drift(y[0], y[1], t, lr=lr, v=y[2], v_teacher=v_teacher, noise=noise,
                        train_second_layer=train_second_layer)
    return d["dq"], d["dr"], d["dv"]

  def rk4(y, h):
    add = lambda y, k, c: tuple(a + c * b for a, b in zip(y, k))
    k1 = rhs(y)
    k2 = rhs(add(y, k1, h / 2))
    k3 = rhs(add(y, k2, h / 2))
    k4 = rhs(add(y, k3, h))
    return tuple(a + h / 6 * (b1 + 2 * b2 + 2 * b3 + b4)
                 for a, b1, b2, b3, b4 in zip(y, k1, k2, k3, k4))

  def interval(y, gap):
    y = jax.lax.fori_loop(0, sub, lambda _, y: rk4(y, gap / sub), y)
    return y, y

  _, (q, r, v) = jax.lax.scan(interval, (q0, r0, v0), jnp.asarray(gaps, dtype))
  error = jax.vmap(lambda q, r, v: committee_error(q, r, t, v, v_teacher))(q, r, v)
  return {"q": q, "r": r, "v": v, "error": error}


def _symmetric(k, m, q, c, r, xp=np):
  """`(Q, R)` of the symmetric subspace: `Q_ii = q`, `Q_ik = c`, `R_in = r`."""
  return (c * xp.ones((k, k)) + (q - c) * xp.eye(k), r * xp.ones((k, m)))


def _first_order(q, r, t):
  """The `lr -> 0` drift per unit `lr`: `committee_drift` is `lr A + lr^2 B`,
  so `A = 2 d(1) - d(2) / 2`, exactly up to rounding."""
  d1, d2 = (committee_drift(q, r, t, lr=lr) for lr in (1.0, 2.0))
  return {key: 2 * d1[key] - d2[key] / 2 for key in ("dq", "dr")}


def plateau(k: int, m: int | None = None, activation: str = "erf", *, lr: float = 0.0) -> dict:
  """The symmetric fixed point of online SGD's flow (Saad & Solla 1995): the
  plateau of a student with `k` hidden units learning a teacher with `m` (default
  `k`) from a small init, for `T = I`, `v = v* = 1` (second layer fixed), every
  student unit equally correlated with every teacher unit: `Q_ii = q`, `Q_ik =
  c` (i != k), `R_in = r`. Conventions: docs/conventions.md.

  For `lr -> 0` (`lr=0`, the default) and `k == m` it has a closed form:

      q = c = 1 / (2K - 1),   r = 1 / sqrt(K (2K - 1)),
      error = (K / pi) (pi / 6 - K arcsin(1 / (2K))),

  (for `g = erf(x / sqrt(2))`: then `q / (1 + q) = r / sqrt(2 (1 + q)) = 1 / (2K)`).
  Otherwise (`k != m`, or `lr > 0`, where the `lr^2` term of
  `committee_drift` moves the fixed point) the flow restricted to the
  symmetric subspace (which it leaves invariant, and where the plateau
  attracts) is integrated from a small init to its fixed point, then polished
  by a root finder. Numpy/scipy float64; not traceable (a traced argument is a
  `TypeError`).

  Returns:
    `{"q", "c", "r", "error", "escape_rate"}` as floats (`c` is NaN for `k =
    1`). `escape_rate` is the largest real part of the eigenvalues of the
    drift's Jacobian there (over `Q`'s upper triangle and `R`; per unit alpha
    at `lr`, per unit `lr x alpha` at `lr = 0`): a deviation from the
    symmetric subspace grows like `exp(escape_rate alpha)`, so a student
    starting `O(1/sqrt(N))` from it leaves the plateau after `ln N / (2
    escape_rate)` plus a constant.
  """
  _checks.numpy_only("plateau", k=k, m=m, lr=lr)
  k = _checks.check_int("k", k)
  m = k if m is None else _checks.check_int("m", m)
  if activation != "erf":
    raise ValueError(f"`activation` must be 'erf' for plateau (committee_drift's closed "
                     f"forms), got {activation!r}.")
  if isinstance(lr, bool) or not isinstance(lr, (int, float, np.floating, np.integer)) \
      or not np.isfinite(lr) or lr < 0:
    raise ValueError(f"`lr` must be a finite number >= 0, got {lr!r}.")
  t = np.eye(m)
  if k == m and lr == 0:
    q = 1.0 / (2 * k - 1)
    r = 1.0 / np.sqrt(k * (2 * k - 1))
    error = k / np.pi * (np.pi / 6 - k * np.arcsin(1.0 / (2 * k)))
    qm, rm = _symmetric(k, m, q, q, r)
    return {"q": q, "c": q if k > 1 else float("nan"), "r": float(r), "error": float(error),
            "escape_rate": _growth(qm, rm, t, 0.0)}
  from scipy.integrate import solve_ivp
  from scipy.optimize import root

  with jax.enable_x64(True):
    @jax.jit
    def rhs(y):
      qm, rm = _symmetric(k, m, y[0], y[1], y[2], jnp)
      d = _first_order(qm, rm, t) if lr == 0 else committee_drift(qm, rm, t, lr=lr)
      d = d if lr == 0 else {key: val / lr for key, val in d.items()}  # time lr x alpha
      off = d["dq"][0, 1] if k > 1 else 0.0
      return jnp.stack([d["dq"][0, 0], off, d["dr"][0, 0]])

    f = lambda y: np.asarray(rhs(jnp.asarray(y)), np.float64)
    y0 = np.array([1e-2, 1e-3 if k > 1 else 0.0, 1e-3])
    sol = solve_ivp(lambda _, y: f(y), (0.0, 1e4), y0, method="LSODA",
                    rtol=1e-10, atol=1e-12)
    fixed = root(f, sol.y[:, -1], tol=1e-14)
    y = fixed.x
    if not (np.all(np.isfinite(y)) and np.abs(f(y)).max() < 1e-12):
      raise ValueError(f"no symmetric fixed point found for k={k}, m={m}, lr={lr!r} (the "
                       "symmetric flow does not settle: the learning rate may be too large).")
    qm, rm = _symmetric(k, m, *y)
    error = float(committee_error(qm, rm, t))
  return {"q": float(y[0]), "c": float(y[1]) if k > 1 else float("nan"), "r": float(y[2]),
          "error": error, "escape_rate": _growth(qm, rm, t, lr)}


@functools.lru_cache(maxsize=None)
def _jacobian(k: int, m: int, first_order: bool):
  """The drift's Jacobian over `Q`'s upper triangle and `R`, jitted per shape."""
  iu = np.triu_indices(k)

  def vec_rhs(y, t, lr):
    qm = jnp.zeros((k, k), y.dtype).at[iu].set(y[:len(iu[0])])
    qm = qm + qm.T - jnp.diag(jnp.diag(qm))
    rm = y[len(iu[0]):].reshape(k, m)
    d = _first_order(qm, rm, t) if first_order else committee_drift(qm, rm, t, lr=lr)
    return jnp.concatenate([d["dq"][iu], d["dr"].ravel()])
  return jax.jit(jax.jacfwd(vec_rhs)), iu


def _growth(q, r, t, lr):
  """The largest real part of the eigenvalues of the drift's Jacobian over
  `Q`'s upper triangle and `R` at `(q, r)` (float64; `lr = 0`: the first-order
  drift per unit `lr`)."""
  jac, iu = _jacobian(q.shape[0], r.shape[1], lr == 0)
  with jax.enable_x64(True):
    y = jnp.concatenate([jnp.asarray(q, jnp.float64)[iu], jnp.asarray(r, jnp.float64).ravel()])
    j = jac(y, jnp.asarray(t, jnp.float64), jnp.float64(lr if lr > 0 else 1.0))
    return float(np.linalg.eigvals(np.asarray(j)).real.max())


def critical_lr(k: int, activation: str = "erf") -> float:
  """The learning rate past which online SGD cannot converge to its teacher:
  the largest `lr` at which the teacher's solution `Q = R = T = I` (`K = M =
  k`, `v = v* = 1`, second layer fixed) is a stable fixed point of
  `committee_drift`'s flow. Past it the `lr^2` term, positive
  semi-definite, outweighs the `lr` term along some direction: the flow goes
  to another fixed point with a nonzero error or grows without bound (Saad &
  Solla 1995's maximal learning rate). Found where the largest real part of
  the drift's Jacobian at the solution (`jax.jacfwd`, over `Q`'s upper
  triangle and `R`) crosses zero, by Brent's method. Numpy/scipy float64;
  not traceable (a traced argument is a `TypeError`). Conventions:
  docs/conventions.md.
  """
  _checks.numpy_only("critical_lr", k=k)
  k = _checks.check_int("k", k)
  if activation != "erf":
    raise ValueError(f"`activation` must be 'erf' for critical_lr, got {activation!r}.")
  from scipy.optimize import brentq
  eye = np.eye(k)
  growth = lambda lr: _growth(eye, eye, eye, lr)
  grid = np.geomspace(0.01, 100.0, 41)
  signs = np.array([growth(lr) for lr in grid]) >= 0
  if not signs.any():
    raise ValueError(f"the solution stays stable up to lr = 100 for k={k}.")
  i = int(np.argmax(signs))
  return float(brentq(growth, grid[i - 1], grid[i], xtol=1e-12))
