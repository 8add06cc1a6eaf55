"""The closed forms at the extremes: no overflow, no cancellation, the right
limits, against extended-precision references (mpmath) where one exists.

Each solver is run over a grid spanning many decades of its arguments, in
float32 and float64 where it is written in jax.numpy. Tolerances are rounding
bounds: `c eps` times the condition number of the quantity, stated beside
each check.
"""

import jax
import jax.numpy as jnp
import mpmath as mp
import numpy as np
import pytest

from theory import deep_linear as dl
from theory import linear_attention as la
from theory import ntk

mp.mp.dps = 50

# --- deep linear mode strengths -------------------------------------------

S_GRID = [1e-8, 1e-4, 1.0, 1e4, 1e8]
T_GRID = {True: [0.0, 1e-12, 1.0, 1e12, 1e300, np.inf],
          False: [0.0, 1e-12, 1.0, 1e12, 1e30, np.inf]}  # 1e300 is not a float32


def strength_grid(x64):
  s, u0 = [], []
  for sv in S_GRID:
    for uv in (0.0, 1e-300, 1e-12, sv, 10 * sv):
      s.append(sv)
      u0.append(uv)
  dtype = np.float64 if x64 else np.float32
  return np.array(s, dtype), np.array(u0, dtype)  # 1e-300 -> 0 in float32


@pytest.mark.parametrize("x64", [False, True], ids=["float32", "float64"])
@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5, 6])
def test_mode_strength_extreme_grid(depth, x64):
  s, u0 = strength_grid(x64)
  t = np.array(T_GRID[x64])
  with jax.enable_x64(x64):
    u = np.asarray(dl.mode_strength(t, s, u0, depth))
    eps = float(jnp.finfo(jnp.result_type(float)).eps)
  assert u.dtype == (np.float64 if x64 else np.float32)
  assert np.all(np.isfinite(u)), u
  np.testing.assert_array_equal(u[0], u0)  # t = 0
  # Monotone toward s and never past it. Each value is within a few eps of
  # its exact value, so consecutive times may disagree by that much: 64 eps s.
  tol = 64 * eps * s
  step = np.diff(u, axis=0) * np.sign(s - u0)
  assert np.all(step >= -tol), (depth, step.min())
  assert np.all((u - s) * np.sign(s - u0) <= tol)
  # t = inf is the limit: s, except u0 = 0 (a fixed point for depth >= 2).
  stuck = (u0 == 0) & (depth >= 2)
  np.testing.assert_allclose(u[-1][~stuck], s[~stuck], rtol=64 * eps)
  np.testing.assert_array_equal(u[:, stuck], 0.0)


def exact_strength(t, s, u0, depth):
  """Depth 1 and 2 in extended precision: u0 e^{-t} + s (1 - e^{-t}) and
  Saxe et al.'s s / (1 + (s/u0 - 1) e^{-2 s t}); the condition number
  |d log u / d log t| alongside."""
  t, s, u0 = mp.mpf(float(t)), mp.mpf(float(s)), mp.mpf(float(u0))
  if depth == 1:
    u = u0 * mp.e**(-t) + s * (1 - mp.e**(-t))
    du = (s - u)
  else:
    if u0 == 0:
      return mp.mpf(0), mp.mpf(0)
    u = s / (1 + (s / u0 - 1) * mp.e**(-2 * s * t))
    du = 2 * u * (s - u)
  return u, (abs(t * du / u) if u else mp.mpf(0))


@pytest.mark.parametrize("x64", [False, True], ids=["float32", "float64"])
@pytest.mark.parametrize("depth", [1, 2])
def test_closed_forms_against_extended_precision(depth, x64):
  s, u0 = strength_grid(x64)
  t = np.array([0.0, 1e-12, 1e-6, 0.3, 1.0, 3.0, 1e6, 1e12, T_GRID[x64][4]])
  with jax.enable_x64(x64):
    u = np.asarray(dl.mode_strength(t, s, u0, depth))
    eps = float(jnp.finfo(jnp.result_type(float)).eps)
  for i, ti in enumerate(t):
    for j in range(len(s)):
      # The products s t and the exponentials round to a few eps each; an
      # error eps in s t moves log u by cond * eps: 16 eps (1 + cond).
      want, cond = exact_strength(ti, s[j], u0[j], depth)
      err = abs(mp.mpf(float(u[i, j])) - want)
      assert err <= 16 * eps * (1 + cond) * abs(want) + 1e-300, (ti, s[j], u0[j], u[i, j], want)


def test_float32_time_beyond_its_range_is_refused():
  with jax.enable_x64(False), pytest.raises(ValueError,
                                            match="`t`.*not representable in float32"):
    dl.mode_strength([1e300], 1.0, 0.1, 3)


def test_depth_two_from_zero_stays_zero_at_any_time():
  u = dl.mode_strength([20.0, 1e6, np.inf], 3.0, 0.0, 2)  # was NaN once 2 s t > 88
  np.testing.assert_array_equal(u, 0.0)


# --- linearized kernel predictor --------------------------------------------

def exact_kernel_flow(k, y, t, k_test=None, rcond=0.0):
  """`y - e^{-t K/n} y` and `K* K^+ (I - e^{-t K/n}) y` in extended precision,
  from the given (rounded) kernel, its eigenvalues at or below `rcond` times
  the largest set to 0 (the null space)."""
  n = k.shape[0]
  lam, v = mp.eigsy(mp.matrix(k.tolist()))
  top = max(lam[i] for i in range(n))
  lam = [lam[i] if lam[i] > rcond * top else mp.mpf(0) for i in range(n)]
  ry = v.T * mp.matrix(y.tolist())
  t = mp.inf if np.isinf(t) else mp.mpf(float(t))
  decay = [mp.e**(-t * l / n) if l > 0 else mp.mpf(1) for l in lam]
  gain = [(1 - decay[i]) / lam[i] if lam[i] > 0 else mp.mpf(0) for i in range(n)]
  f = mp.matrix(y.tolist()) - v * mp.matrix([decay[i] * ry[i] for i in range(n)])
  f = np.array([float(x) for x in f])
  if k_test is None:
    return f
  ft = mp.matrix(k_test.tolist()) * v * mp.matrix([gain[i] * ry[i] for i in range(n)])
  return f, np.array([float(x) for x in ft])


@pytest.mark.parametrize("x64", [False, True], ids=["float32", "float64"])
def test_kernel_flow_on_near_null_and_null_eigenvalues(x64):
  """A diagonal kernel is decomposed exactly, so the only error is the
  rounding of exp and expm1: 8 eps relative, at every t up to inf, including
  eigenvalues down to the `n eps` threshold (used as they are) and below it
  (1e-16 in float64, 1e-8 too in float32: the null space, as lstsq's rcond)."""
  lam = np.array([1.0, 1e-4, 1e-8, 1e-16, 0.0])
  y = np.array([1.0, -2.0, 0.5, 3.0, -1.0])
  k_test = np.array([[0.5, 1e-4, 1e-8, 1e-16, 0.0], [0.0, 0.0, 1e-8, 0.0, 1.0]])
  ts = [0.0, 1.0, 1e6, 1e9, 1e15, np.inf]
  with jax.enable_x64(x64):
    f, ft = ntk.gradient_flow_mse(jnp.diag(lam), y, ts, k_test_train=k_test)
    eps = float(jnp.finfo(jnp.result_type(float)).eps)
  for i, t in enumerate(ts):
    want, want_t = exact_kernel_flow(np.diag(lam), y, t, k_test, rcond=len(lam) * eps)
    np.testing.assert_allclose(f[i], want, rtol=8 * eps, atol=1e-300)
    np.testing.assert_allclose(ft[i], want_t, rtol=8 * eps, atol=1e-300)


def test_kernel_flow_issue_example():
  """Test predictions along a 1e-8 eigenvalue converge to K* K^+ y = 1 instead
  of growing like t (exact: 1 - e^{-t 1e-8 / 2}). Float64: in float32 an
  eigenvalue 1e-8 of the largest is below `n eps` and null."""
  with jax.enable_x64(True):
    _, ft = ntk.gradient_flow_mse(jnp.diag(jnp.array([1.0, 1e-8])), jnp.array([1.0, 1.0]),
                                  [1e9, 1e15], k_test_train=jnp.array([[0.0, 1e-8]]))
  np.testing.assert_allclose(np.ravel(ft), [-np.expm1(-5.0), 1.0], rtol=1e-5)


@pytest.mark.parametrize("cond", [1e4, 1e8, 1e12, 1e16])
def test_kernel_flow_on_ill_conditioned_rotated_kernels(cond):
  """`K = Q diag(lam) Q^T` with `lam` from 1 down to 1/cond, float64.

  eigh is backward stable: it decomposes `K + E`, `||E|| <= c n eps ||K||`,
  and `e^{-tK/n} r` moves by at most `(t/n) ||E|| ||r||` under that
  perturbation (Duhamel, both semigroups contractions), plus `c n eps ||r||`
  from the products; `c = 4`. That bound is all the data determine: along
  eigenvalues below `n eps ||K||` the eigenvectors themselves are O(1)
  uncertain. t = inf is checked to be finite and a contraction of `r`."""
  n = 6
  q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(n, n)))
  lam = np.logspace(0, -np.log10(cond), n)
  k = (q * lam) @ q.T
  y = np.random.default_rng(1).normal(size=n)
  ts = [0.0, 1.0, 1e3, 1e9, 1e15, np.inf]
  with jax.enable_x64(True):
    f = np.asarray(ntk.gradient_flow_mse(jnp.asarray(k), jnp.asarray(y), ts))
  eps, r = np.finfo(np.float64).eps, np.linalg.norm(y)
  knorm = np.linalg.norm(k, 2)
  assert np.all(np.isfinite(f))
  for i, t in enumerate(ts):
    if np.isinf(t):
      assert np.linalg.norm(f[i] - y) <= r * (1 + 4 * n * eps)
      continue
    bound = 4 * n * eps * knorm * (t / n) * r + 4 * n * eps * r
    assert np.linalg.norm(f[i] - exact_kernel_flow(k, y, t)) <= bound, (cond, t)


def test_kernel_that_is_not_psd_is_refused():
  with pytest.raises(ValueError, match="`k_train_train` must be positive semi-definite"):
    ntk.gradient_flow_mse(jnp.array([[1.0, 0.0], [0.0, -1e-3]]), jnp.ones(2), [1.0])


# --- linear self-attention gradient flow ------------------------------------

INITS = [-1e8, -1e3, -1.0, 0.0, 1e-8, 0.5, 1e3, 1e8]
FLOW_T = np.array([0.0, 1e-9, 1e-3, 1.0, 1e3, 1e6, 1e12])


def exact_isotropic(t, d, a, u0, g0):
  """The closed form of `theory.linear_attention` in 50 digits: `E = e^phi`,
  `gamma = k sinh(phi)`, `r = (E - E+)/(E + 1/E+) = r0 e^{-lam t}`; `u` and `g`
  from `u^2 - d g^2 = C`, `u g = gamma`."""
  u0, g0, t = mp.mpf(u0), mp.mpf(g0), mp.mpf(float(t))
  c, gamma0 = u0**2 - d * g0**2, u0 * g0
  if c == 0:
    sg = mp.sign(gamma0)
    e = mp.e**(-2 * mp.sqrt(d) * sg * t)
    gamma = gamma0 / (e + a * gamma0 * (1 - e)) if gamma0 else mp.mpf(0)
  else:
    k = abs(c) / (2 * mp.sqrt(d))
    ep, e0 = mp.e**mp.asinh(1 / (a * k)), mp.e**mp.asinh(gamma0 / k)
    lam = 2 * mp.sqrt(d) * mp.sqrt(1 + (a * k)**2)
    r = (e0 - ep) / (e0 + 1 / ep) * mp.e**(-lam * t)
    gamma = k * mp.sinh(mp.log((ep + r / ep) / (1 - r)))
  s = mp.sqrt(c**2 + 4 * d * gamma**2)
  if c > 0 or (c == 0 and u0 != 0):
    u = mp.sign(u0) * mp.sqrt((c + s) / 2)
    g = gamma / u if u else mp.mpf(0)
  else:
    g = mp.sign(g0) * mp.sqrt((s - c) / (2 * d))
    u = gamma / g if g else mp.mpf(0)
  return u, g, gamma


@pytest.mark.parametrize("d", [1, 5])
def test_isotropic_flow_extreme_grid(d):
  n, nv = 20, 0.1
  a = (n + 1 + d + nv) / n
  eps = np.finfo(np.float64).eps
  for u0 in INITS:
    for g0 in INITS:
      out = la.gradient_flow(FLOW_T, d, n, u0, g0, nv)
      for key in ("u", "g", "ug", "loss"):
        assert np.all(np.isfinite(out[key])), (u0, g0, key)
      # gamma reaches 1/a by t = 1e12 (the slowest rate is 2 sqrt(d), and
      # log(1/|gamma0|) <= 40 here) from anywhere but the saddle u = g = 0
      # and its stable manifold, u^2 = d g^2 with u g < 0, which decays to 0.
      if u0**2 == d * g0**2 and u0 * g0 <= 0:
        assert abs(out["ug"][-1]) <= 1e-300, (u0, g0, out["ug"][-1])
      else:
        assert abs(out["ug"][-1] * a - 1) <= 8 * eps, (u0, g0, out["ug"][-1])
      assert np.all(np.diff(out["loss"]) <= 8 * eps * out["loss"][:-1]), (u0, g0)
      # Against the same closed form in 50 digits, at every time: the rate
      # lam t rounds to eps lam t, moving log gamma by cond eps, cond =
      # |t dgamma/dt / gamma|; 64 eps (1 + cond) for u, g and gamma.
      for i, t in enumerate(FLOW_T):
        want = exact_isotropic(t, d, a, u0, g0)
        du, dg = la.flow_velocity(float(want[0]), float(want[1]) * np.eye(d),
                                  np.eye(d), n, nv)
        rate = abs(float(want[0]) * float(dg[0, 0]) + float(want[1]) * float(du))
        cond = t * rate / max(abs(float(want[2])), 1e-300)
        for got, w in zip((out["u"][i], out["g"][i], out["ug"][i]), want):
          # the 50-digit reference itself: 1e-45 of the init's scale
          ref = 1e-45 * max(1.0, u0**2, g0**2)
          assert abs(mp.mpf(float(got)) - w) <= 64 * eps * (1 + cond) * abs(w) + ref, (
              u0, g0, t, got, w)


def test_isotropic_flow_issue_examples():
  a = (20 + 1 + 5) / 20
  assert abs(la.gradient_flow([1e3], 5, 20, 0.0, 1e8)["ug"][0] - 1 / a) < 1e-12
  out = la.gradient_flow([0.0], 1, 20, 1e9, 1e9)
  assert np.isfinite(out["ug"][0]) and np.isfinite(out["loss"][0])
  np.testing.assert_allclose(out["ug"][0], 1e18, rtol=1e-15)


@pytest.mark.parametrize("u0, g0", [(1.0, 0.5), (0.3, -0.2), (-2.0, 0.1), (0.0, 1.0),
                                    (1.0, 0.0), (1e-4, 1e-4)])
def test_anisotropic_flow_reaches_its_fixed_point(u0, g0):
  """With `cov`, at `t = 1e12` each eigen-direction sits at `u g_j =
  lam_j / m_j` and `u^2 - sum_j g_j^2 = C` fixes `u^2 = (C + sqrt(C^2 + 4
  sum_j gamma_j^2)) / 2`: an independent algebraic check of the solver's end
  point (LSODA at rtol 1e-11, so 1e-8)."""
  d, n, nv = 3, 10, 0.2
  q, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(d, d)))
  lam = np.array([2.0, 0.5, 0.05])
  cov = (q * lam) @ q.T
  out = la.gradient_flow([0.0, 1e12], d, n, u0, g0, nv, cov=cov)
  c_ = (lam.sum() + nv) / n
  gamma_star = lam / ((1 + 1 / n) * lam**2 + c_ * lam)
  np.testing.assert_allclose(out["gamma"][-1], (q * gamma_star) @ q.T, rtol=1e-8, atol=1e-10)
  big_c = u0**2 - d * g0**2
  u2 = (big_c + np.sqrt(big_c**2 + 4 * np.sum(gamma_star**2))) / 2
  np.testing.assert_allclose(out["u"][-1] ** 2, u2, rtol=1e-8)


def test_anisotropic_flow_at_extreme_inits():
  """Huge inits need not converge by t = 1e12 (the slow manifold's time scale
  grows like g0^2), but the solution stays finite, conserves `u^2 - sum g_j^2`
  and never increases the loss."""
  d, n, nv = 3, 10, 0.2
  cov = np.diag([2.0, 0.5, 0.05])
  for u0 in (-1e8, 0.0, 1e3, 1e8):
    for g0 in (-1e8, 1e-8, 1e3, 1e8):
      out = la.gradient_flow(FLOW_T, d, n, u0, g0, nv, cov=cov)
      assert all(np.all(np.isfinite(out[k])) for k in ("u", "G", "gamma", "loss"))
      g = np.diagonal(out["G"], axis1=1, axis2=2)
      # LSODA's rtol 1e-11 on each component, accumulated over the steps:
      # 1e-9 of the largest u^2 + sum g_j^2 along the path
      scale = np.max(out["u"]**2 + np.sum(g**2, -1))
      np.testing.assert_allclose(out["u"]**2 - np.sum(g**2, -1), u0**2 - d * g0**2,
                                 atol=1e-9 * scale)
      assert np.all(np.diff(out["loss"]) <= 1e-9 * out["loss"][:-1]), (u0, g0)
