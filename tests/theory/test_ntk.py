"""theory.ntk against Monte Carlo, Jacobians, closed forms and matrix exponentials."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.linalg import expm

from theory import ntk

@pytest.fixture(autouse=True)
def x64():  # float64 for every test here, restored after each
  with jax.enable_x64(True):
    yield


# Eagerly, every primitive compiles anew for each shape it meets (seconds per
# kernel on 2 CPU cores); the value checks here run each computation as one
# jitted program instead. The inputs are closed over as constants, so the
# argument checks still see concrete values. Eager calls: test_bad_input,
# relu_empirical_ntk's exact symmetry, and tests/theory/test_mlp_kernel.py.
def compiled(fn, *args):
  """`fn(*args)` as one jitted program."""
  return jax.jit(lambda: fn(*args))()


def sphere(key, n, d):
  x = jax.random.normal(jax.random.PRNGKey(key), (n, d))
  return np.asarray(x / jnp.linalg.norm(x, axis=1, keepdims=True) * np.sqrt(d))


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def two_layer(key, m, d, dtype=jnp.float64):
  k = jax.random.split(jax.random.PRNGKey(key), 4)
  return {"W": jax.random.normal(k[0], (m, d), dtype), "b": jax.random.normal(k[1], (m,), dtype),
          "v": jax.random.normal(k[2], (m,), dtype), "b_out": jax.random.normal(k[3], (), dtype)}


def apply(params, x, w_std=1.0, b_std=0.0):
  """The network of the theory docstring, written out independently."""
  m, d = params["W"].shape
  h = w_std * x @ params["W"].T / jnp.sqrt(d) + b_std * params["b"]
  return w_std * jax.nn.relu(h) @ params["v"] / jnp.sqrt(m) + b_std * params["b_out"]


@pytest.mark.parametrize("w_std, b_std", [(1.0, 0.0), (1.5, 0.3)])
def test_kernels_symmetric_psd(w_std, b_std):
  x = sphere(0, 30, 5)
  for fn in (ntk.relu_nngp, ntk.relu_ntk):
    k = np.asarray(compiled(fn, x, x, w_std, b_std))
    np.testing.assert_allclose(k, k.T, atol=1e-12)
    assert np.linalg.eigvalsh(k).min() > -1e-10 * np.abs(k).max()


def test_closed_form_values():
  nngp = lambda *a: compiled(ntk.relu_nngp, *a)
  ntk_ = lambda *a: compiled(ntk.relu_ntk, *a)
  d = 4
  e = np.eye(d) * np.sqrt(d)          # inputs with x.x/d = 1, mutually orthogonal
  # identical inputs: theta = 0, E[relu^2] = q/2, E[relu'^2] = 1/2
  np.testing.assert_allclose(nngp(e[:1], e[:1]), [[0.5]])
  np.testing.assert_allclose(ntk_(e[:1], e[:1]), [[1.0]])
  # orthogonal inputs: theta = pi/2, E[relu relu] = 1/(2 pi), K1 = 0
  np.testing.assert_allclose(nngp(e[:1], e[1:2]), [[1 / (2 * np.pi)]])
  np.testing.assert_allclose(ntk_(e[:1], e[1:2]), [[1 / (2 * np.pi)]])
  # scaling: with b_std = 0 both kernels carry w_std^4
  x = sphere(1, 6, 3)
  np.testing.assert_allclose(ntk_(x, x, 2.0), 16 * ntk_(x, x, 1.0))
  np.testing.assert_allclose(nngp(x, x, 2.0), 16 * nngp(x, x, 1.0))
  # b_std enters through K1 = w^2 x.x'/d + b^2 and the output bias: for
  # orthogonal inputs of equal norm, cos(theta) = b^2 / (1 + b^2).
  b = 0.5
  c = b**2 / (1 + b**2)
  th = np.arccos(c)
  rr = (1 + b**2) / (2 * np.pi) * (np.sin(th) + (np.pi - th) * c)
  np.testing.assert_allclose(nngp(e[:1], e[1:2], 1.0, b), [[rr + b**2]])
  np.testing.assert_allclose(ntk_(e[:1], e[1:2], 1.0, b),
                             [[rr + b**2 + (np.pi - th) / (2 * np.pi) * b**2]])


def test_zero_and_duplicate_inputs_finite():
  x = np.array([[0.0, 0.0], [1.0, 1.0], [1.0, 1.0], [1.0 + 1e-9, 1.0]])
  for b in (0.0, 0.7):
    for fn in (ntk.relu_nngp, ntk.relu_ntk):
      assert np.all(np.isfinite(compiled(fn, x, x, 1.0, b)))
  # b_std = 0: a zero input makes every hidden unit 0 with relu'(0) = 0,
  # so both kernels vanish, as the network's own Jacobian does.
  np.testing.assert_array_equal(compiled(ntk.relu_ntk, x[:1], x, 1.3, 0.0), 0.0)
  np.testing.assert_array_equal(compiled(ntk.relu_nngp, x[:1], x, 1.3, 0.0), 0.0)
  p = two_layer(0, 64, 2)
  np.testing.assert_array_equal(jax.jit(lambda q: ntk.empirical_ntk(apply, q, x[:1], x))(p),
                                0.0)


@pytest.mark.parametrize("w_std, b_std", [(1.0, 0.0), (1.2, 0.5)])
def test_nngp_against_monte_carlo(w_std, b_std):
  x = sphere(2, 5, 3)
  p = two_layer(3, 200_000, 3)

  @jax.jit
  def run(p):
    f = apply(p, x, w_std, b_std) - b_std * p["b_out"]
    # Hidden units are independent draws of relu(h): average f-features over m.
    h = w_std * x @ p["W"].T / np.sqrt(3) + b_std * p["b"]
    mc = w_std**2 * jax.nn.relu(h) @ jax.nn.relu(h).T / 200_000 + b_std**2
    return f, mc, ntk.relu_nngp(x, x, w_std, b_std)

  f, mc, want = run(p)
  # Monte Carlo error ~ 1/sqrt(m) ~ 2e-3 relative.
  np.testing.assert_allclose(mc, want, rtol=2e-2, atol=1e-2)
  assert f.shape == (5,)


@jax.jit
def jacobian_ntks(p, pairs, w_std, b_std):
  """The Jacobian's `empirical_ntk` on each pair of inputs, in one program
  (`w_std`, `b_std` traced: one compilation for both cases)."""
  fn = lambda params, x: apply(params, x, w_std, b_std)
  return [ntk.empirical_ntk(fn, p, a, b) for a, b in pairs]


@pytest.mark.parametrize("w_std, b_std", [(1.0, 0.0), (1.3, 0.4)])
def test_empirical_ntk_general_equals_fast_and_converges(w_std, b_std):
  x1, x2 = sphere(4, 12, 6), sphere(5, 7, 6)
  p = two_layer(6, 2048, 6)
  xs = (sphere(8, 11, 6), sphere(9, 3, 6))
  general, *same = jacobian_ntks(p, [(x1, x2)] + [(x, x) for x in xs], w_std, b_std)
  fast = jax.jit(ntk.relu_empirical_ntk)
  np.testing.assert_allclose(fast(p, x1, x2, w_std, b_std), general, rtol=1e-5, atol=1e-8)
  # x1 is x2: the upper block triangle (uneven blocks for 11 and 3 points),
  # exactly symmetric as called eagerly (jitted, XLA may round the products
  # within a diagonal block differently: not bit-symmetric)
  for x, want in zip(xs, same):
    sym = ntk.relu_empirical_ntk(p, x, x, w_std, b_std)
    np.testing.assert_array_equal(sym, sym.T)
    np.testing.assert_allclose(sym, want, rtol=1e-5, atol=1e-8)
  analytic = compiled(ntk.relu_ntk, x1, x2, w_std, b_std)
  gap = lambda m, seed: float(np.linalg.norm(
      fast(two_layer(seed, m, 6), x1, x2, w_std, b_std) - analytic)
      / np.linalg.norm(analytic))
  # The gap is a finite-width fluctuation of about 2.2 / sqrt(m) (measured
  # over 20 seeds: mean 2.5%, worst 3.4% at m = 8192; mean 1.6%, worst 2.4%
  # at m = 16384), so the 3% holds for every seed only from 16384.
  assert gap(16384, 6) < 0.03
  # the width^-1/2 slope, for every activation and 32 seeds: test_mlp_kernel.py


@jax.jit
def flow(k, y, t, f0, kt, f0t):
  """gradient_flow_mse as one program (the kernel traced: the argument checks,
  which need concrete values, are test_bad_input's)."""
  return ntk.gradient_flow_mse(k, y, t, f0, kt, f0t)


def test_gradient_flow_endpoints_and_expm():
  x, xt = sphere(7, 15, 4), sphere(8, 5, 4)
  k, kt = compiled(lambda: (ntk.relu_ntk(x, x), ntk.relu_ntk(xt, x)))
  k, kt = np.asarray(k), np.asarray(kt)
  y = np.sin(x[:, 0]) + x[:, 1]
  f0, f0t = 0.3 * np.cos(x[:, 2]), 0.1 * xt[:, 0]
  t = np.array([0.0, 0.7, 5.0, 1e9])
  ftr, fte = flow(k, y, t, f0, kt, f0t)
  np.testing.assert_allclose(ftr[0], f0, atol=1e-12)
  np.testing.assert_allclose(fte[0], f0t, atol=1e-12)
  # t -> inf: kernel regression on the residual of the initial function.
  np.testing.assert_allclose(ftr[-1], y, atol=1e-8)
  np.testing.assert_allclose(fte[-1], f0t + kt @ np.linalg.solve(k, y - f0), atol=1e-6)
  # intermediate t against the matrix exponential of the joint ODE
  # d[f, f*]/dt = -(1/n) [K; K*] (f - y).
  n = len(y)
  e = expm(-0.7 * k / n)
  np.testing.assert_allclose(ftr[1], y + e @ (f0 - y), atol=1e-10)
  np.testing.assert_allclose(fte[1], f0t - kt @ np.linalg.solve(k, (np.eye(n) - e) @ (f0 - y)),
                             atol=1e-8)


def test_gradient_descent_approaches_flow():
  x, xt = sphere(9, 10, 3), sphere(10, 4, 3)
  k, kt = compiled(lambda: (ntk.relu_ntk(x, x), ntk.relu_ntk(xt, x)))
  k, kt = np.asarray(k), np.asarray(kt)
  y = np.stack([x[:, 0], x[:, 1] ** 2], 1)  # vector outputs

  @jax.jit
  def run(k, kt):  # one program (the kernels traced, as in `flow`)
    gaps = []
    for lr in (0.4, 0.2, 0.1):
      steps = np.array([0, int(round(2.0 / lr)), int(round(6.0 / lr))])
      gd = ntk.gradient_descent_mse(k, y, lr, steps, k_test_train=kt)
      gf = ntk.gradient_flow_mse(k, y, lr * steps, k_test_train=kt)
      gaps.append(jnp.max(jnp.stack([jnp.abs(a - b).max() for a, b in zip(gd, gf)])))
    return gaps, ntk.gradient_descent_mse(k, y, 0.4, [15])[0]

  errors, gd15 = run(k, kt)
  # explicit iteration equals the closed form
  f, n = np.zeros_like(y), len(y)
  for _ in range(15):
    f = f - 0.4 / n * k @ (f - y)
  np.testing.assert_allclose(gd15, f, atol=1e-12)
  # O(lr): halving lr halves the gap
  np.testing.assert_allclose(errors[0] / errors[1], 2.0, rtol=0.15)
  np.testing.assert_allclose(errors[1] / errors[2], 2.0, rtol=0.15)


def test_bad_input():
  x = sphere(0, 3, 2)
  with pytest.raises(ValueError, match="feature dimension"):
    ntk.relu_ntk(x, np.ones((2, 3)))
  with pytest.raises(ValueError, match="w_std"):
    ntk.relu_nngp(x, x, w_std=-1.0)
  with pytest.raises(ValueError, match="b_std"):
    ntk.relu_ntk(x, x, b_std=-0.1)
  with pytest.raises(ValueError, match="square"):
    ntk.gradient_flow_mse(np.ones((3, 2)), np.ones(3), [1.0])
  with pytest.raises(ValueError, match="symmetric"):
    ntk.gradient_flow_mse(np.triu(np.ones((3, 3))), np.ones(3), [1.0])
  with pytest.raises(ValueError, match="`t`"):
    ntk.gradient_flow_mse(np.eye(3), np.ones(3), [-1.0])
  with pytest.raises(ValueError, match="`lr`"):
    ntk.gradient_descent_mse(np.eye(3), np.ones(3), 0.0, [1])
