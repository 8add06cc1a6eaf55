"""More theory at the extremes: each case once silently wrong (a wrong number,
NaN, a raw exception), now right against an independent reference (lstsq,
mpmath, Monte Carlo, direct iteration, a closed-form diagonal) or refused in
one `ValueError` naming the argument."""

import jax
import jax.numpy as jnp
import mpmath as mp
import numpy as np
import pytest

from theory import deep_linear as dl
from theory import diagonal_linear as diag
from theory import ntk

mp.mp.dps = 50


# --- kernel regression on a rank-deficient kernel ---------------------------

def rank_deficient():
  r = np.random.RandomState(0)
  x, xt, y = r.randn(4, 3), r.randn(2, 3), r.randn(4)
  return x @ x.T, xt @ x.T, y, xt @ np.linalg.lstsq(x, y, rcond=None)[0]


def test_rank_deficient_kernel_at_infinite_time_is_min_norm():
  """K = X X^T with X [4, 3]: its fourth eigenvalue is rounding (~1e-16 of
  the largest), null under the `n eps` rule. At t = inf the test predictions
  are the minimum-norm interpolator's, X* lstsq(X, y); lstsq's own answer is
  backward stable, so both agree to cond(X) n eps ~ 1e-13 in float64."""
  k, kt, y, want = rank_deficient()
  with jax.enable_x64(True):
    _, ft = ntk.gradient_flow_mse(k, y, [np.inf], k_test_train=kt)
  np.testing.assert_allclose(np.ravel(ft), want, rtol=1e-10, atol=1e-12)


def test_rank_deficient_kernel_in_float32_does_not_grow_with_t():
  """In float32 the rounding eigenvalue is ~1e-7 of the largest; treated as
  null, the predictions settle on the minimum-norm ones instead of moving
  along it as t grows. float32 rounding of an eigendecomposition of a matrix
  with condition ~30 on its range: 1e-4 relative is 100x that."""
  k, kt, y, want = rank_deficient()
  _, ft = ntk.gradient_flow_mse(k.astype(np.float32), y.astype(np.float32),
                                np.array([1e4, 1e7, 1e10, np.inf], np.float32),
                                k_test_train=kt.astype(np.float32))
  for row in np.asarray(ft):
    np.testing.assert_allclose(row, want, rtol=1e-4, atol=1e-4)


def test_gradient_descent_past_the_edge_against_iteration():
  """lr = 3 on K = 2I (n = 2): each step multiplies the residual by 1 - 3 =
  -2; 200 steps: 2^200 ~ 1.6e60, finite in float64. Direct iteration of f <-
  f - lr/n K (f - y) in float64 multiplies by exactly -2: relative 1e-12."""
  k, y = 2 * np.eye(2), np.array([1.0, -1.0])
  f = np.zeros(2)
  for _ in range(200):
    f = f - 3.0 / 2 * k @ (f - y)
  with jax.enable_x64(True):
    got = ntk.gradient_descent_mse(k, y, lr=3.0, steps=np.array([200.0]))
  np.testing.assert_allclose(np.ravel(got), f, rtol=1e-12)
  assert abs(f[0]) > 1e60


def test_fractional_steps_are_refused():
  with pytest.raises(ValueError, match="`steps` must be whole"):
    ntk.gradient_descent_mse(np.eye(2), np.ones(2), lr=0.1, steps=np.array([2.5]))


# --- the infinite-width kernels -----------------------------------------------

def test_tanh_kernel_at_large_w_std_against_monte_carlo():
  """Depth 2, tanh, w_std = 10: the 96-node rule alone was 65% off. The NNGP
  is w^2 E[tanh(u) tanh(u')] + b^2 over the Gaussian (u, u') of the first
  layer's covariance. 4e6 samples: the mean of a product of tanh's (|.| <= 1,
  std <= 1) is known to 5e-4; 5 sigma is 2.5e-3, times w^2 = 100."""
  x = np.array([[1.0, 0.5, -0.3], [0.2, -1.0, 0.8]])
  w, b = 10.0, 0.3
  with jax.enable_x64(True):
    got = np.asarray(ntk.mlp_kernel(2, "tanh", w, b)(x)["nngp"])
  cov = w**2 * x @ x.T / 3 + b**2
  z = np.random.default_rng(0).multivariate_normal(np.zeros(2), cov, size=4_000_000)
  t = np.tanh(z)
  mc = w**2 * (t.T @ t) / len(t) + b**2
  np.testing.assert_allclose(got, mc, atol=5 * w**2 * 5e-4)


def test_deep_relu_kernel_diagonal_in_closed_form():
  """Depth 100, w_std = 3, no bias. On the diagonal (theta = 0) the relu
  recursion is K^{l+1} = w^2 K^l / 2 and Theta^{l+1} = K^{l+1} + w^2 Theta^l
  / 2 from K^1 = Theta^1 = w^2 |x|^2 / d: K^L = c^{L-1} K^1 and Theta^L = L
  c^{L-1} K^1 with c = w^2 / 2 = 4.5 (4.5^99 ~ 1e65, finite in float64).
  200 multiplications: 400 eps relative. In float32 the kernel overflows:
  refused in one line, not NaN."""
  x = np.array([[1.0, 2.0, -0.5], [0.3, -0.2, 1.1]])
  k1 = 9.0 * np.sum(x**2, 1) / 3
  with jax.enable_x64(True):
    out = ntk.mlp_kernel(100, "relu", 3.0)(x)
  np.testing.assert_allclose(np.diag(out["nngp"]), 4.5**99 * k1, rtol=400 * 2.2e-16)
  np.testing.assert_allclose(np.diag(out["ntk"]), 100 * 4.5**99 * k1, rtol=400 * 2.2e-16)
  assert np.all(np.isfinite(out["ntk"]))
  with pytest.raises(ValueError, match="too large for float32"):
    ntk.mlp_kernel(100, "relu", 3.0)(x)


def arc_cosine(c):
  """sin theta + (pi - theta) cos theta at cos theta = c, 50 digits."""
  th = mp.acos(mp.mpf(c))
  return float(mp.sin(th) + (mp.pi - th) * mp.mpf(c))


def test_relu_kernel_at_and_near_antipodal_inputs():
  """x' = -x: theta = pi, E[relu(u) relu(u')] = 0 exactly. Near it the value
  is phi^3/3 (phi = pi - theta), positive; against mpmath from the same
  (rounded) cosine: the series (phi < 0.1) is exact to a few eps; the direct
  form at phi = 0.2 cancels to ~3 eps / phi^2 = 1.7e-14: rtol 1e-13."""
  x = np.array([[1.0, 2.0, 0.5]])
  with jax.enable_x64(True):
    assert float(ntk.relu_nngp(x, -x)[0, 0]) == 0.0
    for ang in (1e-6, 1e-3, 0.05, 0.2):
      c = -np.cos(ang)
      got = float(ntk._relu_dual(jnp.float64(1.0), jnp.float64(c), jnp.float64(1.0))[0])
      want = arc_cosine(c) / (2 * np.pi)
      assert got > 0
      np.testing.assert_allclose(got, want, rtol=1e-13)
  assert float(ntk.relu_ntk(x, -x)[0, 0]) >= 0.0


def test_relu_ntk_vmaps_over_w_std():
  x = np.random.default_rng(0).normal(size=(5, 3))
  ws = jnp.array([0.5, 1.0, 2.0])
  batched = jax.vmap(lambda w: ntk.relu_ntk(x, x, w, 0.1))(ws)
  for i, w in enumerate(ws):
    np.testing.assert_allclose(batched[i], ntk.relu_ntk(x, x, float(w), 0.1), rtol=1e-6)


# --- diagonal networks ----------------------------------------------------------

def q_alpha_mp(beta, alpha):
  """The definition as written, with enough digits for its cancellation:
  2 - sqrt(4 + z^2) loses 2 |log10 z| digits."""
  with mp.workdps(60 + 4 * abs(int(np.log10(alpha)))):
    a2 = mp.mpf(alpha) ** 2
    return float(sum(a2 * (2 - mp.sqrt(4 + (mp.mpf(b) / a2) ** 2)
                           + mp.mpf(b) / a2 * mp.asinh(mp.mpf(b) / a2 / 2)) for b in beta))


@pytest.mark.parametrize("alpha", [1e-150, 1e-8, 1e-2, 1.0, 1e4, 1e8, 1e12, 1e150])
def test_q_alpha_against_mpmath(alpha):
  """No cancellation left: relative precision at every alpha (a sum of a few
  terms, each to a few eps: 1e-13)."""
  beta = [1.0, -2.5, 1e-3]
  np.testing.assert_allclose(diag.q_alpha(beta, alpha), q_alpha_mp(beta, alpha), rtol=1e-13)


def test_implicit_bias_at_extreme_alpha():
  r = np.random.RandomState(0)
  x, y = r.randn(2, 5), r.randn(2)
  # past alpha ~ 1e154 the minimiser of Q_alpha is min-l2 to float64; the
  # Newton solve at alpha = 1e100 (an independent path) agrees
  np.testing.assert_allclose(diag.implicit_bias_solution(x, y, 1e300),
                             diag.min_l2_solution(x, y), rtol=1e-12)
  np.testing.assert_allclose(diag.implicit_bias_solution(x, y, 1e100),
                             diag.min_l2_solution(x, y), rtol=1e-10)
  with pytest.raises(ValueError, match="`alpha` = 1e-200 is too small"):
    diag.implicit_bias_solution(x, y, 1e-200)   # float64, not float32: not "0"


def test_implicit_bias_on_numerically_rank_deficient_x():
  r = np.random.RandomState(0)
  x = r.randn(3, 5)
  x[2] = x[1] + 1e-13
  with pytest.raises(ValueError, match="`x`"):
    diag.implicit_bias_solution(x, r.randn(3), 0.1)


# --- the two-layer flow's arguments -----------------------------------------------

def test_two_layer_flow_and_ntk_arguments():
  with pytest.raises(ValueError, match="at least one hidden unit"):
    dl.two_layer_flow([1.0], np.zeros((0, 3)), np.zeros((2, 0)), np.ones((2, 3)))
  w = 0.1 * np.eye(2)
  flow = dl.two_layer_flow([1.0], w, w, np.diag([2.0, 1.0]))
  with pytest.raises(ValueError, match="`x2` must be"):
    dl.two_layer_ntk(flow, np.ones((4, 2)), np.ones((4, 5)))
  with pytest.raises(ValueError, match="`x1` must be"):
    dl.two_layer_ntk(flow, np.ones((4, 3)))
