"""theory.linear_attention against explicit GD steps, Monte Carlo, autodiff,
an ODE solver, and the full attention layer's own Monte-Carlo gradient."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dynamics.models import linear_attention as model
from theory import linear_attention as la

@pytest.fixture(autouse=True)
def x64():  # float64 for every test here, restored after each
  with jax.enable_x64(True):
    yield


def random_cov(key, d, floor=0.1):
  a = jax.random.normal(jax.random.PRNGKey(key), (d, d))
  return np.asarray(a @ a.T / d + floor * np.eye(d))


def prompts(key, batch, n, cov, noise_var=0.0):
  """Prompts written out independently of dynamics.tasks."""
  return draw_prompts(key, batch, n, np.linalg.cholesky(cov), noise_var)


@functools.partial(jax.jit, static_argnums=(1, 2))
def draw_prompts(key, batch, n, chol, noise_var):
  # one jitted program per shape (eagerly, each primitive compiles anew)
  d = chol.shape[0]
  k = jax.random.split(jax.random.PRNGKey(key), 5)
  w = jax.random.normal(k[0], (batch, d))
  x = jax.random.normal(k[1], (batch, n, d)) @ chol.T
  xq = jax.random.normal(k[2], (batch, d)) @ chol.T
  y = jnp.einsum("bnd,bd->bn", x, w) + jnp.sqrt(noise_var) * jax.random.normal(k[3], (batch, n))
  yq = jnp.einsum("bd,bd->b", xq, w) + jnp.sqrt(noise_var) * jax.random.normal(k[4], (batch,))
  return x, y, xq, yq


def test_gd_params_is_one_gd_step():
  d, n, lr = 4, 7, 0.37
  x, y, xq, _ = prompts(0, 16, n, np.eye(d))
  params = la.gd_params(d, lr)

  @jax.jit
  def run(params):  # one program (eagerly, each primitive compiles anew)
    steps = []
    for b in range(4):
      loss = lambda w: jnp.sum((x[b] @ w - y[b]) ** 2) / (2 * n)
      w1 = jnp.zeros(d) - lr * jax.grad(loss)(jnp.zeros(d))
      z = model.tokens(x[b], y[b], xq[b])
      steps.append((model.forward(params, z)[d, n], xq[b] @ w1))
    return steps, model.predict(params, x, y, xq), jnp.einsum("bd,bnd,bn->b", xq, x, y) * lr / n

  steps, pred, want = run(params)
  for layer, gd in steps:
    np.testing.assert_allclose(layer, gd, rtol=1e-12, atol=1e-14)
  np.testing.assert_allclose(pred, want, rtol=1e-12)


@pytest.mark.parametrize("noise_var", [0.0, 0.5])
def test_icl_risk_against_monte_carlo(noise_var):
  d, n = 4, 6
  cov = random_cov(1, d)
  gamma = np.asarray(jax.random.normal(jax.random.PRNGKey(2), (d, d))) * 0.3 + np.eye(d) * 0.5
  errs = []
  for key in range(4):
    x, y, xq, yq = prompts(10 + key, 100_000, n, cov, noise_var)
    h = jnp.einsum("bn,bnd->bd", y, x) / n
    errs.append((jnp.einsum("bd,de,be->b", xq, gamma, h) - yq) ** 2)
  errs = np.concatenate(errs)
  mc, se = errs.mean(), errs.std() / np.sqrt(errs.size)
  risk = float(la.icl_risk(gamma, cov, n, noise_var))
  assert abs(mc - risk) < 4 * se, (mc, se, risk)
  assert se < 0.01 * risk  # the check can fail: it resolves 1% of the risk


def test_optimal_preconditioner_is_a_minimiser():
  d, n, nv = 5, 8, 0.3
  cov = random_cov(3, d)
  g = la.optimal_preconditioner(cov, n, nv)
  r = la.icl_risk(g, cov, n, nv)
  grad = jax.grad(lambda x: la.icl_risk(x, cov, n, nv))(g)
  assert np.abs(grad).max() < 1e-10
  for key in range(20):
    delta = 1e-2 * jax.random.normal(jax.random.PRNGKey(key), (d, d))
    assert la.icl_risk(g + delta, cov, n, nv) > r
  # the best scalar learning rate: a 1-D minimum, worse than Gamma*
  eta = la.optimal_gd_lr(d, n, nv, cov=cov)
  for e in (eta * 0.99, eta * 1.01):
    assert la.icl_risk(e, cov, n, nv) > la.icl_risk(eta, cov, n, nv)
  assert la.icl_risk(eta, cov, n, nv) > r


@pytest.mark.parametrize("noise_var", [0.0, 1.0])
def test_isotropic_optimum_is_one_gd_step(noise_var):
  d, n = 6, 10
  g = la.optimal_preconditioner(np.eye(d), n, noise_var)
  eta = la.optimal_gd_lr(d, n, noise_var)
  np.testing.assert_allclose(g, eta * np.eye(d), rtol=1e-13, atol=1e-15)
  np.testing.assert_allclose(eta, n / (n + 1 + d + noise_var))
  grid = np.linspace(0.5 * eta, 1.5 * eta, 201)
  risks = [float(la.icl_risk(e, np.eye(d), n, noise_var)) for e in grid]
  assert abs(grid[np.argmin(risks)] - eta) <= grid[1] - grid[0]


def test_flow_velocity_is_minus_the_gradient():
  d, n, nv = 4, 9, 0.2
  cov = random_cov(4, d)
  G = jax.random.normal(jax.random.PRNGKey(5), (d, d))
  loss = lambda u, G: 0.5 * la.icl_risk(u * G.T, cov, n, nv)
  gu, gG = jax.grad(loss, argnums=(0, 1))(0.7, G)
  vu, vG = la.flow_velocity(0.7, G, cov, n, nv)
  np.testing.assert_allclose(vu, -gu, rtol=1e-12)
  np.testing.assert_allclose(vG, -gG, rtol=1e-12, atol=1e-14)


INITS = [(1e-3, 1e-3), (0.05, 0.01), (0.01, 0.05), (-0.1, 0.3), (1.5, -0.2),
         (1.0, 0.5), (0.0, 0.1)]  # (1.0, 0.5) with d = 4 is balanced: C = 0


@pytest.mark.parametrize("u0, g0", INITS)
def test_closed_form_flow_against_ode_solver(u0, g0):
  d, n, nv = 4, 10, 0.3
  t = np.linspace(0, 12, 61)
  closed = la.gradient_flow(t, d, n, u0, g0, nv)
  numeric = la.gradient_flow(t, d, n, u0, g0, nv, cov=np.eye(d))  # DOP853
  for k in ("u", "G", "gamma", "loss"):
    np.testing.assert_allclose(closed[k], numeric[k], rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("u0, g0", INITS)
def test_closed_form_flow_satisfies_its_ode(u0, g0):
  d, n, nv = 4, 10, 0.3
  t = np.linspace(0.05, 6, 40)
  eps = 1e-5
  f = lambda s: la.gradient_flow(s, d, n, u0, g0, nv)
  plus, minus, mid = f(t + eps), f(t - eps), f(t)
  du = (plus["u"] - minus["u"]) / (2 * eps)
  dg = (plus["G"] - minus["G"]) / (2 * eps)
  for i in range(len(t)):
    vu, vG = la.flow_velocity(mid["u"][i], mid["G"][i], np.eye(d), n, nv)
    np.testing.assert_allclose(du[i], vu, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(dg[i], vG, rtol=1e-5, atol=1e-8)


def test_flow_converges_to_the_optimum():
  d, n, nv = 5, 12, 0.1
  cov = random_cov(6, d, floor=0.3)
  for c in (None, cov):
    end = la.gradient_flow(np.array([0.0, 400.0]), d, n, 0.02, 0.01, nv, cov=c)
    c_ = np.eye(d) if c is None else c
    opt = la.optimal_preconditioner(c_, n, nv)
    np.testing.assert_allclose(end["gamma"][-1], opt, atol=1e-8)
    np.testing.assert_allclose(end["loss"][-1], 0.5 * la.icl_risk(opt, c_, n, nv), rtol=1e-10)
    assert end["loss"][0] > end["loss"][-1]
  iso = la.gradient_flow(np.array([0.0, 400.0]), d, n, 0.02, 0.01, nv)
  np.testing.assert_allclose(iso["ug"][-1], la.optimal_gd_lr(d, n, nv), rtol=1e-10)


def test_flow_loss_is_half_the_risk_of_its_gamma():
  d, n, nv = 3, 5, 0.2
  cov = random_cov(7, d)
  out = la.gradient_flow(np.linspace(0, 5, 11), d, n, 0.1, 0.2, nv, cov=cov)
  for g, l in zip(out["gamma"], out["loss"]):
    np.testing.assert_allclose(l, 0.5 * la.icl_risk(g, cov, n, nv), rtol=1e-10)


def test_aligned_form_is_invariant_under_the_population_gradient():
  """The full layer's Monte-Carlo gradient at an aligned point has the blocks
  of `flow_velocity` and no others (the reduction behind `gradient_flow`)."""
  d, n, nv = 3, 6, 0.2
  cov = random_cov(8, d, floor=0.3)
  u, g = 0.6, 0.4
  params = model.init(None, d, name="aligned", u0=u, g0=g, dtype=jnp.float64)
  grad = jax.jit(jax.grad(model.loss))
  # 40 batch means of 12,500 prompts: the z-scores below are in units of their
  # own spread, so they hold at any batch size; the spread falls as
  # 1/sqrt(batch), |w_kq|/spread measured 140 at 50,000 and 70 here, above
  # the 20 the last line asks for (a 4.5-sigma check resolves 6% of it).
  grads = [grad(params, *prompts(100 + key, 12_500, n, cov, nv)) for key in range(40)]
  mean = jax.tree_util.tree_map(lambda *a: np.mean(a, 0), *grads)
  spread = jax.tree_util.tree_map(lambda *a: np.std(a, 0) / np.sqrt(len(a)), *grads)
  vu, vG = la.flow_velocity(u, g * np.eye(d), cov, n, nv)
  expect = {"w_kq": np.zeros((d + 1, d + 1)), "w_pv": np.zeros((d + 1, d + 1))}
  expect["w_kq"][:d, :d] = -np.asarray(vG)
  expect["w_pv"][d, d] = -float(vu)
  for k in expect:
    z = np.abs(mean[k] - expect[k]) / (spread[k] + 1e-12)
    assert z.max() < 4.5, (k, mean[k], expect[k], spread[k])  # 40 batch means: Gaussian
  assert np.abs(expect["w_kq"]).max() > 20 * spread["w_kq"].max()  # resolvable


@pytest.mark.parametrize("call, name", [
    (lambda: la.icl_risk(1.0, np.ones((2, 3)), 5), "cov"),
    (lambda: la.icl_risk(1.0, np.diag([1.0, -1.0]), 5), "cov"),
    (lambda: la.icl_risk(1.0, np.array([[1.0, 2.0], [0.0, 1.0]]), 5), "cov"),
    (lambda: la.optimal_preconditioner(np.eye(2), 0), "n_context"),
    (lambda: la.optimal_preconditioner(np.eye(2), 3, -0.1), "noise_var"),
    (lambda: la.optimal_gd_lr(3, 0), "n_context"),
    (lambda: la.gradient_flow(1.0, 3, 5, 0.1, 0.1, -1.0), "noise_var"),
    (lambda: la.gradient_flow(1.0, 3, 5, 0.1, 0.1, cov=np.eye(2)), "cov"),
    (lambda: la.gradient_flow(-1.0, 3, 5, 0.1, 0.1), "t"),
    (lambda: la.gd_params(0, 0.1), "d"),
])
def test_bad_input(call, name):
  with pytest.raises(ValueError, match=f"`{name}`"):
    call()


def uniform_prompts(seed, batch, n, d, r, noise_var=0.0):
  """von Oswald et al.'s prompts, drawn with numpy: `x ~ U(-r/2, r/2)^d`."""
  rng = np.random.default_rng(seed)
  x = rng.uniform(-r / 2, r / 2, (batch, n + 1, d))
  w = rng.standard_normal((batch, d))
  y = np.einsum("bnd,bd->bn", x, w) + np.sqrt(noise_var) * rng.standard_normal((batch, n + 1))
  return x[:, :-1], y[:, :-1], x[:, -1], y[:, -1]


@pytest.mark.parametrize("noise_var", [0.0, 0.05])
def test_icl_risk_with_uniform_inputs_against_monte_carlo(noise_var):
  # Uniform coordinates have kurtosis 9/5; the risk's fourth-moment term
  # changes by (kappa - 3)/N tr(Gamma^T L Gamma L^2), here ~10% of the risk,
  # which 400,000 prompts resolve to ~0.5%: the Gaussian formula must fail.
  d, n, r = 4, 6, 1.0
  cov = np.eye(d) * r**2 / 12
  gamma = np.asarray(jax.random.normal(jax.random.PRNGKey(2), (d, d))) + np.eye(d) * 4
  x, y, xq, yq = uniform_prompts(0, 400_000, n, d, r, noise_var)
  h = np.einsum("bn,bnd->bd", y, x) / n
  errs = (np.einsum("bd,de,be->b", xq, gamma, h) - yq) ** 2
  mc, se = errs.mean(), errs.std() / np.sqrt(errs.size)
  risk = float(la.icl_risk(gamma, cov, n, noise_var, kurtosis=1.8))
  gauss = float(la.icl_risk(gamma, cov, n, noise_var))
  assert abs(mc - risk) < 4 * se, (mc, se, risk)
  assert abs(mc - gauss) > 10 * se, (mc, se, gauss)


def test_optimal_gd_lr_with_uniform_inputs_against_monte_carlo():
  # The best eta for y_hat = eta x_q^T h is E[y_q p] / E[p^2], p = x_q^T h:
  # from 400,000 of von Oswald et al.'s prompts (d = N = 10, x ~ U(-1/2, 1/2))
  # against N / (s (N + kappa - 2 + d)), s = 1/12, kappa = 9/5 (6.061; the
  # Gaussian value would be 5.714). Standard error by the delta method.
  d = n = 10
  x, y, xq, yq = uniform_prompts(1, 400_000, n, d, 1.0)
  p = np.einsum("bd,bd->b", xq, np.einsum("bn,bnd->bd", y, x) / n)
  a, b = np.mean(yq * p), np.mean(p * p)
  eta = a / b
  infl = (yq * p - a) / b - a * (p * p - b) / b**2
  se = infl.std() / np.sqrt(p.size)
  want = float(la.optimal_gd_lr(d, n, cov=np.eye(d) / 12, kurtosis=1.8))
  assert abs(want - 10 / (20 - 0.2) * 12) < 1e-9
  assert abs(eta - want) < 4 * se and 4 * se < 0.25 * abs(want - 5.714), (eta, se, want)
  assert abs(float(la.optimal_gd_lr(d, n, kurtosis=1.8)) - 10 / 19.8) < 1e-12


def test_kurtosis_needs_a_diagonal_covariance():
  with pytest.raises(ValueError, match="diagonal"):
    la.icl_risk(0.5, random_cov(1, 3), 5, kurtosis=1.8)
  with pytest.raises(ValueError, match="kurtosis"):
    la.optimal_preconditioner(np.eye(3), 5, kurtosis=0.5)
