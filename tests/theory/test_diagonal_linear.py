"""theory.diagonal_linear against gradient descent on the diagonal network
(dynamics.models.diagonal_linear), its KKT conditions and its two limits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dynamics.models import diagonal_linear as dln
from theory import diagonal_linear as td


def sparse_problem(n=10, d=30, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d))
  beta = np.zeros(d)
  beta[:3] = [2.0, -1.5, 1.0]
  return x, x @ beta, beta


def gradient_descent(x, y, alpha, lr, steps):
  """The network trained by full-batch GD on (1/2n) ||x beta - y||^2, float64."""
  with jax.enable_x64(True):
    loss = lambda p: 0.5 * jnp.mean((dln.apply(p, x) - y) ** 2)
    step = lambda _, p: jax.tree_util.tree_map(lambda a, g: a - lr * g, p, jax.grad(loss)(p))
    p = jax.jit(lambda p: jax.lax.fori_loop(0, steps, step, p))(
        dln.init(x.shape[1], alpha, jnp.float64))
    return np.asarray(dln.beta(p))


@pytest.mark.parametrize("alpha", [0.1, 1.0])
def test_gradient_descent_reaches_the_predicted_interpolator(alpha):
  # GD's limit differs from the flow's by O(lr): halving lr halves the gap
  # (measured 6.3e-4 -> 3.1e-4 at alpha 0.1), which pins the constants of Q.
  x, y, _ = sparse_problem()
  pred = td.implicit_bias_solution(x, y, alpha)
  lr = 0.1 / (12 * np.linalg.eigvalsh(x.T @ x / len(x)).max())
  gaps = [np.linalg.norm(gradient_descent(x, y, alpha, lr / k, 150_000 * k) - pred)
          for k in (1, 2)]
  assert 1.8 < gaps[0] / gaps[1] < 2.2, gaps
  assert gaps[1] < 1e-3 * np.linalg.norm(pred)


def test_kkt_and_minimality():
  x, y, _ = sparse_problem()
  for alpha in (0.05, 0.5, 5.0):
    b = td.implicit_bias_solution(x, y, alpha)
    np.testing.assert_allclose(x @ b, y, atol=1e-9)
    # grad Q = arcsinh(beta / 2 alpha^2) lies in the row space of x
    g = np.arcsinh(b / (2 * alpha**2))
    mu = np.linalg.lstsq(x.T, g, rcond=None)[0]
    np.testing.assert_allclose(x.T @ mu, g, atol=1e-8 * np.abs(g).max())
    # and every interpolator nearby has a larger Q
    null = np.linalg.svd(x)[2][len(x):]
    rng = np.random.default_rng(1)
    for _ in range(5):
      step = null.T @ rng.normal(size=len(null)) * 1e-3
      assert td.q_alpha(b + step, alpha) > td.q_alpha(b, alpha)


def test_the_two_limits():
  x, y, beta = sparse_problem()
  l1, l2 = td.min_l1_solution(x, y), td.min_l2_solution(x, y)
  np.testing.assert_allclose(l1, beta, atol=1e-8)  # 3-sparse, 10 measurements: recovered
  d1 = [np.linalg.norm(td.implicit_bias_solution(x, y, a) - l1) for a in (1e-1, 1e-2, 1e-4)]
  d2 = [np.linalg.norm(td.implicit_bias_solution(x, y, a) - l2) for a in (1.0, 3.0, 10.0)]
  # rich regime: slowly in alpha (measured 1.05, 0.31, 0.022)
  assert d1[0] > d1[1] > d1[2] and d1[2] < 0.1 * d1[0], d1
  # kernel regime: q(z) = z^2/4 - z^4/192 + ..., so beta differs from the
  # l2 interpolator by O(|beta|^3 / alpha^4): from alpha 3 to 10, (3/10)^4 = 0.0081
  assert d2[0] > d2[1] > d2[2], d2
  assert 0.5 * 0.0081 < d2[2] / d2[1] < 2 * 0.0081, d2
  b = np.array([1.0, -2.0, 0.5])
  np.testing.assert_allclose(td.q_alpha(b, 100.0) * 4 * 100.0**2, b @ b, rtol=1e-6)


@pytest.mark.parametrize("call, name", [
    (lambda: td.q_alpha([1.0], 0.0), "`alpha`"),
    (lambda: td.implicit_bias_solution(np.ones((2, 3)), np.ones(2), 1.0), "`x`"),
    (lambda: td.implicit_bias_solution(np.eye(3), np.ones(2), 1.0), "`x`"),
    (lambda: td.implicit_bias_solution(np.eye(3), np.ones(3), -1.0), "`alpha`"),
    (lambda: td.min_l1_solution(np.eye(3), np.ones((3, 1))), "`y`"),
    (lambda: dln.init(0, 1.0), "`d`"),
])
def test_bad_input(call, name):
  with pytest.raises(ValueError, match=name):
    call()


def converged_gradient_descent(x, y, alpha, lr, max_steps=4_000_000, chunk=100_000):
  """GD in float64 until `||x beta - y|| < 1e-11 ||y||` (or `max_steps`)."""
  with jax.enable_x64(True):
    loss = lambda p: 0.5 * jnp.mean((dln.apply(p, x) - y) ** 2)
    step = lambda _, p: jax.tree_util.tree_map(lambda a, g: a - lr * g, p, jax.grad(loss)(p))
    run = jax.jit(lambda p: jax.lax.fori_loop(0, chunk, step, p))
    p = dln.init(x.shape[1], alpha, jnp.float64)
    for _ in range(max_steps // chunk):
      p = run(p)
      beta = np.asarray(dln.beta(p))
      if np.linalg.norm(x @ beta - y) < 1e-11 * np.linalg.norm(y):
        break
    return beta


@pytest.mark.parametrize("alpha", [1e-3, 1e-2, 1e1, 1e2])
def test_prediction_from_rich_to_lazy_extremes(alpha):
  # GD run to convergence at lr and lr/2: its limit is the flow's plus
  # c lr + O(lr^2), so |beta(lr/2) - pred| ~ |beta(lr) - beta(lr/2)|; the
  # bound allows 1.5 of that, plus the unconverged part, at most
  # ||x beta - y|| / sigma_min(x), plus float64 rounding of the solve.
  x, y, _ = sparse_problem()
  pred = td.implicit_bias_solution(x, y, alpha)
  lam_max = np.linalg.eigvalsh(x @ x.T / len(x)).max()
  lr = 0.1 / (8 * max(alpha**2, 2.0) * lam_max)  # well inside the NTK's stable range
  b1, b2 = (converged_gradient_descent(x, y, alpha, lr / k) for k in (1, 2))
  sigma_min = np.linalg.svd(x, compute_uv=False).min()
  bound = (1.5 * np.linalg.norm(b1 - b2) + np.linalg.norm(x @ b2 - y) / sigma_min
           + 1e-9 * np.linalg.norm(pred))
  assert np.linalg.norm(b2 - pred) <= bound, (alpha, np.linalg.norm(b2 - pred), bound)
  assert np.linalg.norm(b2 - pred) < 2e-3 * np.linalg.norm(pred)
