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
