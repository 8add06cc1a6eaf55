"""theory.deep_linear.two_layer_flow against an ODE solve of the full matrix
flow, against mode_strength on aligned balanced inits, and gradient descent
converging to it at O(lr)."""

import jax
import numpy as np
import pytest
from scipy.integrate import solve_ivp

from theory import deep_linear as dl


def teacher(d_out, d_in, seed=0):
  rng = np.random.default_rng(seed)
  u, _ = np.linalg.qr(rng.normal(size=(d_out, d_out)))
  v, _ = np.linalg.qr(rng.normal(size=(d_in, d_in)))
  s = np.linspace(3.0, 1.0, min(d_out, d_in))
  return u[:, :len(s)] @ np.diag(s) @ v[:, :len(s)].T, u, s, v


def balanced_init(h, d_in, d_out, lam, scale=0.3, seed=1):
  """Non-aligned W1 [h, d_in], W2 [d_out, h] with W2^T W2 - W1 W1^T = lam I:
  W1 with singular values above sqrt(max(-lam, 0)), then W2 = O (W1 W1^T +
  lam I)^(1/2) with O orthonormal columns."""
  rng = np.random.default_rng(seed)
  a, _ = np.linalg.qr(rng.normal(size=(h, h)))
  b, _ = np.linalg.qr(rng.normal(size=(d_in, d_in)))
  sv = np.sqrt(max(-lam, 0.0) + scale**2 * np.linspace(1.0, 2.0, h))
  w1 = a @ np.diag(sv) @ b[:, :h].T
  vals, vecs = np.linalg.eigh(w1 @ w1.T + lam * np.eye(h))
  o, _ = np.linalg.qr(rng.normal(size=(d_out, h)))
  return w1, o @ vecs @ np.diag(np.sqrt(vals.clip(min=0))) @ vecs.T


def ode(t, w1, w2, syx, tau=1.0):
  """The full matrix flow by DOP853 at rtol 1e-13."""
  h, d_in = w1.shape

  def rhs(_, z):
    a, b = z[:h * d_in].reshape(h, d_in), z[h * d_in:].reshape(-1, h)
    r = syx - b @ a
    return np.concatenate([(b.T @ r).ravel(), (r @ a.T).ravel()]) / tau

  sol = solve_ivp(rhs, (0, max(t)), np.concatenate([w1.ravel(), w2.ravel()]), t_eval=t,
                  method="DOP853", rtol=1e-13, atol=1e-13)
  a = sol.y[:h * d_in].T.reshape(len(t), h, d_in)
  b = sol.y[h * d_in:].T.reshape(len(t), -1, h)
  return {"w": b @ a, "w1tw1": np.swapaxes(a, 1, 2) @ a, "w2w2t": b @ np.swapaxes(b, 1, 2)}


T = np.array([0.0, 0.4, 1.5, 4.0, 9.0])


@pytest.mark.parametrize("lam", [-4.0, -1.0, 0.0, 1.0, 4.0])
@pytest.mark.parametrize("shape", [(3, 3, 3), (3, 5, 4)])   # h, d_in, d_out
def test_against_ode_non_aligned(lam, shape):
  h, d_in, d_out = shape
  syx = teacher(d_out, d_in)[0]
  w1, w2 = balanced_init(h, d_in, d_out, lam)
  got = dl.two_layer_flow(T, w1, w2, syx)
  want = ode(T, w1, w2, syx)
  assert abs(got["lam"] - lam) < 1e-12
  for key in ("w", "w1tw1", "w2w2t"):
    np.testing.assert_allclose(got[key], want[key], rtol=1e-10,
                               atol=1e-10 * np.abs(want[key]).max())


@pytest.mark.parametrize("lam", [-4.0, 0.0, 4.0])
def test_against_ode_aligned_and_tau(lam):
  d, h = 3, 3
  syx, u, s, v = teacher(d, d)
  a1 = np.array([0.1, 0.2, 0.05]) + np.sqrt(max(-lam, 0.0))
  a2 = np.sqrt(a1**2 + lam)
  r, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(h, h)))
  w1, w2 = r @ np.diag(a1) @ v.T, u @ np.diag(a2) @ r.T
  got = dl.two_layer_flow(T, w1, w2, syx, tau=2.0)
  want = ode(T, w1, w2, syx, tau=2.0)
  np.testing.assert_allclose(got["w"], want["w"], rtol=1e-10, atol=1e-10 * s.max())
  if lam == 0:  # balanced and aligned: each mode is the depth-2 sigmoid
    u_t = np.einsum("im,tij,jm->tm", u, got["w"], v)
    with jax.enable_x64(True):
      sig = np.asarray(dl.mode_strength(T, s, a1 * a2, 2, 2.0))
    np.testing.assert_allclose(u_t, sig, rtol=1e-10, atol=1e-12)


def test_gradient_descent_converges_at_order_lr():
  syx = teacher(4, 5)[0]
  w1, w2 = balanced_init(3, 5, 4, 1.0)
  t_end = 2.0
  exact = dl.two_layer_flow([t_end], w1, w2, syx)["w"][0]

  def gd(lr):
    a, b = w1.copy(), w2.copy()
    for _ in range(int(round(t_end / lr))):
      r = syx - b @ a
      a, b = a + lr * b.T @ r, b + lr * r @ a.T
    return np.linalg.norm(b @ a - exact)

  errors = [gd(lr) for lr in (0.02, 0.01, 0.005)]
  # O(lr): halving lr halves the error (the next term is O(lr^2))
  for big, small in zip(errors, errors[1:]):
    assert 1.8 < big / small < 2.2, errors


def test_ntk_along_the_flow():
  syx = teacher(3, 4)[0]
  w1, w2 = balanced_init(3, 4, 3, 0.5)
  flow = dl.two_layer_flow([0.0, 1.0], w1, w2, syx)
  x = np.random.default_rng(5).normal(size=(2, 4))
  theta = dl.two_layer_ntk(flow, x)
  # at t = 0 against the Jacobian of f = W2 W1 x written out by hand
  jac = [np.concatenate([np.kron(w2, x[i][None]).reshape(3, -1),          # d f / d W1
                         np.kron(np.eye(3), (w1 @ x[i])[None])], 1)        # d f / d W2
         for i in range(2)]
  for i in range(2):
    for j in range(2):
      np.testing.assert_allclose(theta[0, i, j], jac[i] @ jac[j].T, rtol=1e-12)


def test_imbalance_is_refused_with_its_size():
  w1, w2 = balanced_init(3, 3, 3, 1.0)
  with pytest.raises(ValueError, match="not lambda-balanced.*= 0.0"):
    dl.two_layer_flow([1.0], w1, w2 + 0.01, teacher(3, 3)[0])
  with pytest.raises(ValueError, match="shapes"):
    dl.two_layer_flow([1.0], w1, w2[:, :2], teacher(3, 3)[0])


@pytest.mark.parametrize("lam", [-1.0, 0.0, 4.0])
def test_long_times_reach_the_teacher(lam):
  # h = rank of Sigma_yx: the flow converges to W2 W1 = Sigma_yx (the
  # slowest mode, s = 1, converges as e^{-2 sqrt(s^2 + lam^2/4) t})
  syx = teacher(3, 4)[0]
  w1, w2 = balanced_init(3, 4, 3, lam)
  w = dl.two_layer_flow([50.0, 200.0], w1, w2, syx)["w"]
  assert np.all(np.isfinite(w))
  np.testing.assert_allclose(w[-1], syx, atol=1e-10)


def test_gradient_descent_conserves_the_balance_to_order_lr():
  # One GD step changes W2^T W2 - W1 W1^T by lr^2 (G1 G1^T - G2^T G2)-type
  # terms (the O(lr) terms cancel, as in the flow); over a fixed time t that
  # is t/lr steps of O(lr^2): O(lr) in total, halving with lr.
  syx = teacher(4, 5)[0]
  w1, w2 = balanced_init(3, 5, 4, 1.0)
  d0 = w2.T @ w2 - w1 @ w1.T

  def drift(lr):
    a, b = w1.copy(), w2.copy()
    for _ in range(int(round(2.0 / lr))):
      r = syx - b @ a
      a, b = a + lr * b.T @ r, b + lr * r @ a.T
    return np.linalg.norm(b.T @ b - a @ a.T - d0)

  drifts = [drift(lr) for lr in (0.02, 0.01, 0.005)]
  for big, small in zip(drifts, drifts[1:]):
    assert 1.8 < big / small < 2.2, drifts


def fixed_point_residual(flow, syx, lam):
  """`||F P + P F - P^2|| / ||P||^2` of `P = Q Q^T` (the Riccati equation's
  right-hand side, zero only at a fixed point)."""
  d_out, d_in = syx.shape
  f_mat = np.block([[-lam / 2 * np.eye(d_in), syx.T], [syx, lam / 2 * np.eye(d_out)]])
  p = np.block([[flow["w1tw1"], np.swapaxes(flow["w"], 1, 2)], [flow["w"], flow["w2w2t"]]])
  rhs = f_mat @ p + p @ f_mat - p @ p
  return np.linalg.norm(rhs, axis=(1, 2)) / np.linalg.norm(p, axis=(1, 2))**2


def wide_balanced_init(h, d_in, d_out, scale=0.3, seed=1):
  """Balanced (lam = 0) W1 [h, d_in], W2 [d_out, h] with h > d_in, d_out:
  W1 = A S B^T, W2 = C S A^T with A [h, r], B, C orthonormal columns,
  r = min(d_in, d_out); then W2^T W2 = A S^2 A^T = W1 W1^T."""
  rng = np.random.default_rng(seed)
  r = min(d_in, d_out)
  a, b, c = (np.linalg.qr(rng.normal(size=(n, r)))[0] for n in (h, d_in, d_out))
  sv = np.diag(scale * np.linspace(1.0, 2.0, r))
  return a @ sv @ b.T, c @ sv @ a.T


@pytest.mark.parametrize("lam, shape", [(lam, shape) for lam in (-1.0, 0.0, 4.0)
                                        for shape in ((3, 4, 3), (1, 4, 3))]
                         + [(0.0, (5, 2, 2))])   # h, d_in, d_out
def test_any_time_is_one_closed_form(lam, shape, monkeypatch):
  # The cost does not grow with t: one closed-form evaluation per time,
  # however long (the earlier form stepped at max|f| dt <= 2 and took 10 s
  # at t = 1e5). At t -> inf the flow sits at a fixed point of the Riccati
  # equation and W = W2 W1 is Sigma_yx truncated to its top h modes (whitened
  # inputs; generic init). Both are float64 identities: residual and error
  # are rounding, ~1e-15 relative, checked at 1e-12.
  h, d_in, d_out = shape
  syx, u, s, v = teacher(d_out, d_in)
  w1, w2 = (balanced_init(h, d_in, d_out, lam) if h <= d_in
            else wide_balanced_init(h, d_in, d_out))
  calls = []
  real = dl._flow_factor
  monkeypatch.setattr(dl, "_flow_factor", lambda *a: calls.append(1) or real(*a))
  times = [1e3, 1e6, 1e12, 1e300]
  flow = dl.two_layer_flow(times, w1, w2, syx)
  assert len(calls) == len(times)
  k = min(h, len(s))
  target = u[:, :k] @ np.diag(s[:k]) @ v[:, :k].T
  for key in ("w", "w1tw1", "w2w2t"):
    assert np.all(np.isfinite(flow[key])), key
  np.testing.assert_allclose(flow["w"], np.broadcast_to(target, flow["w"].shape), atol=1e-12)
  assert fixed_point_residual(flow, syx, lam).max() < 1e-12


def test_a_mode_the_init_does_not_touch_never_grows():
  # An init with exactly zero overlap with the top mode (aligned, balanced)
  # stays at zero there for all t: W -> s_2 u_2 v_2^T + s_3 u_3 v_3^T, not
  # Sigma_yx. Exact zeros are a rank-deficient a; the rank tolerance must
  # not let rounding grow into the top mode as e^{2 s_1 t}.
  syx, u, s, v = teacher(3, 3)
  a = np.array([0.0, 0.1, 0.2])
  w1, w2 = np.diag(a) @ v.T, u @ np.diag(a)
  w = dl.two_layer_flow([1e2, 1e6, 1e300], w1, w2, syx)["w"]
  want = u[:, 1:] @ np.diag(s[1:]) @ v[:, 1:].T
  np.testing.assert_allclose(w, np.broadcast_to(want, w.shape), atol=1e-12)


def test_modes_at_very_different_rates_against_ode():
  # Sigma_yx's modes at 2 and 0.02 (100x apart) from a small init: by t = 400
  # the fast mode has long saturated (its e^{2 f t} ~ e^{1600} overflows any
  # direct use of the formula) while the slow one is mid-sigmoid. Against
  # DOP853 at rtol 1e-13 integrated through the whole range; agreement to
  # 1e-8 relative of ||W|| (the ODE's global error over ~1e4 steps).
  rng = np.random.default_rng(4)
  u, _ = np.linalg.qr(rng.normal(size=(3, 3)))
  v, _ = np.linalg.qr(rng.normal(size=(3, 3)))
  syx = u @ np.diag([2.0, 0.02, 0.0]) @ v.T
  for lam in (0.0, 0.5):
    w1, w2 = balanced_init(2, 3, 3, lam, scale=0.05, seed=2)
    t = np.array([1.0, 50.0, 200.0, 400.0])
    got = dl.two_layer_flow(t, w1, w2, syx)
    want = ode(t, w1, w2, syx)
    for key in ("w", "w1tw1", "w2w2t"):
      np.testing.assert_allclose(got[key], want[key], atol=1e-8 * np.abs(want[key]).max())


def test_more_hidden_units_than_dimensions_against_ode():
  # h = 5 > d_in = d_out = 2: three columns of Q0 that no eigen-direction of
  # F reaches; against DOP853 (rtol 1e-13) at the first test's tolerance.
  syx = teacher(2, 2)[0]
  w1, w2 = wide_balanced_init(5, 2, 2)
  got, want = dl.two_layer_flow(T, w1, w2, syx), ode(T, w1, w2, syx)
  for key in ("w", "w1tw1", "w2w2t"):
    np.testing.assert_allclose(got[key], want[key], rtol=1e-10,
                               atol=1e-10 * np.abs(want[key]).max())
