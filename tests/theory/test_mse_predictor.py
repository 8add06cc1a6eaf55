"""theory.ntk.mse_predictor and max_learning_rate against explicit gradient
descent on the linearised model, scipy's expm, kernel regression and an
extended-precision (mpmath) reference on singular and ill-conditioned kernels."""

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest
from scipy.linalg import expm

from theory import ntk


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


def problem(n=10, m=4, k=None, seed=0):
  rng = np.random.default_rng(seed)
  a = rng.normal(size=(n + m, 6))
  kern = np.asarray(ntk.mlp_kernel(3, "relu", 1.0, 0.2)(a)["ntk"])
  shape = (n,) if k is None else (n, k)
  return (kern[:n, :n], kern[n:, :n], rng.normal(size=shape), rng.normal(size=shape),
          rng.normal(size=(m,) + shape[1:]))


@pytest.mark.parametrize("k", [None, 2])
def test_gradient_descent_against_iteration(k):
  kk, kt, y, f0, f0t = problem(k=k)
  n, lr = len(kk), 0.7 * ntk.max_learning_rate(kk)
  f, ft = f0.copy(), f0t.copy()
  want, want_t = [f], [ft]
  for _ in range(50):  # f <- f - (lr/n) K (f - y); test points follow K*
    f, ft = f - lr / n * kk @ (f - y), ft - lr / n * kt @ (f - y)
    want.append(f)
    want_t.append(ft)
  steps = np.array([0, 1, 7, 50])
  got, got_t = ntk.mse_predictor(kk, y, lr=lr)(lr * steps, f0, kt, f0t)
  np.testing.assert_allclose(got, np.stack(want)[steps], rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(got_t, np.stack(want_t)[steps], rtol=1e-10, atol=1e-12)
  old = ntk.gradient_descent_mse(kk, y, lr, steps, f0, kt, f0t)
  np.testing.assert_allclose(old[0], got)
  np.testing.assert_allclose(old[1], got_t)


@pytest.mark.parametrize("k", [None, 3])
def test_gradient_flow_against_expm(k):
  kk, kt, y, f0, f0t = problem(k=k)
  n = len(kk)
  predict = ntk.mse_predictor(kk, y)
  ts = np.array([0.0, 0.3, 5.0, 80.0])
  got, got_t = predict(ts, f0, kt, f0t)
  assert predict(ts)[1] is None
  for i, t in enumerate(ts):
    e = expm(-t * kk / n)
    np.testing.assert_allclose(got[i], y + e @ (f0 - y), rtol=1e-9, atol=1e-11)
    want_t = f0t + kt @ np.linalg.solve(kk, (np.eye(n) - e) @ (y - f0))
    np.testing.assert_allclose(got_t[i], want_t, rtol=1e-7, atol=1e-9)


def test_large_t_is_kernel_regression():
  kk, kt, y, _, _ = problem()
  for lr in (None, 0.5 * ntk.max_learning_rate(kk)):
    f, ft = ntk.mse_predictor(kk, y, lr=lr)([1e15, np.inf], k_test_train=kt)
    for i in range(2):
      np.testing.assert_allclose(f[i], y, rtol=1e-8)
      np.testing.assert_allclose(ft[i], kt @ np.linalg.solve(kk, y), rtol=1e-6)


def test_max_learning_rate_is_the_edge_of_stability():
  kk, _, y, f0, _ = problem()
  n = len(kk)
  edge = ntk.max_learning_rate(kk)
  np.testing.assert_allclose(edge, 2 * n / np.linalg.eigvalsh(kk).max(), rtol=1e-12)
  for factor, converges in ((0.98, True), (1.02, False)):
    lr = factor * edge
    f = f0.copy()
    for _ in range(3000):
      f = f - lr / n * kk @ (f - y)
    res = np.linalg.norm(f - y) / np.linalg.norm(f0 - y)
    assert (res < 1e-3) == converges, (factor, res)
    # the predictor agrees with the iteration on either side of the edge
    pred = ntk.mse_predictor(kk, y, lr=lr)(lr * 3000, f0)[0][0]
    np.testing.assert_allclose(pred, f, rtol=1e-6, atol=1e-9 * np.abs(f).max())
  assert ntk.max_learning_rate(np.zeros((3, 3))) == np.inf


def test_one_eigendecomposition(monkeypatch):
  kk, kt, y, f0, f0t = problem()
  calls = []
  eigh = jnp.linalg.eigh
  monkeypatch.setattr(jnp.linalg, "eigh", lambda a: calls.append(1) or eigh(a))
  predict = ntk.mse_predictor(kk, y)
  for t in (1.0, 2.0, 3.0):
    predict([t], f0, kt, f0t)
  assert len(calls) == 1


def mp_reference(kk, y, f0, t):
  """`y + exp(-t K/n) (f0 - y)` for the float64 matrix as stored, in 40 digits."""
  mpmath.mp.dps = 40
  n = len(kk)
  lam, v = mpmath.eigsy(mpmath.matrix(kk.tolist()))
  r = v.T * mpmath.matrix((f0 - y).tolist())
  d = mpmath.matrix(n, 1)
  for i in range(n):
    d[i] = mpmath.exp(-t * lam[i] / n) * r[i]
  out = mpmath.matrix(y.tolist()) + v * d
  return np.array([float(out[i]) for i in range(n)])


@pytest.mark.parametrize("kind", ["cond1e16", "singular"])
def test_ill_conditioned_against_mpmath(kind):
  n = 12
  rng = np.random.default_rng(3)
  if kind == "cond1e16":
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    kk = q @ np.diag(np.logspace(0, -16, n)) @ q.T
  else:  # rank 4: eight exact zeros, rounded to +-1e-16 by eigh
    a = rng.normal(size=(n, 4))
    kk = a @ a.T / 4
  kk = (kk + kk.T) / 2
  y, f0 = rng.normal(size=n), rng.normal(size=n)
  norm_k, r = np.linalg.norm(kk, 2), np.linalg.norm(f0 - y)
  predict = ntk.mse_predictor(kk, y)
  ts = [1.0, 1e4, 1e8, 1e15]
  got = np.asarray(predict(ts, f0)[0])
  for t, g in zip(ts, got):
    ref = mp_reference(kk, y, f0, t)
    # eigh is backward stable: it decomposes K + E, ||E|| <= c n eps ||K||
    # (c = 10 covers LAPACK's constant). f = y + exp(-tK/n) r moves by at most
    # (t/n) ||E|| ||r|| for a perturbation E of a PSD K (divided differences
    # of 1 - e^{-t lam/n} are <= t/n), and never by more than 2 ||r||.
    tol = min(10 * n * np.finfo(float).eps * norm_k * t / n, 2.0) * r + 1e-13 * r
    assert np.linalg.norm(g - ref) <= tol, (kind, t, np.linalg.norm(g - ref), tol)
    assert np.all(np.isfinite(g))
    assert np.linalg.norm(g - y) <= np.linalg.norm(f0 - y) * (1 + 1e-12)  # no growth
  if kind == "singular":
    # the null space keeps f0: its stored eigenvalues are rounding, ~1e-16,
    # so along them f moves by ~ t 1e-16 / n (t = 1e8: ~1e-9)
    _, v = np.linalg.eigh(kk)
    null = v[:, :n - 4]
    np.testing.assert_allclose(null.T @ got[2], null.T @ f0, atol=1e-7)


def test_test_points_on_singular_kernels():
  # Test points = train points (K* = K) on a rank-3 kernel: f* equals f up
  # to K* acting on eigh's error E along the rounding-level eigenvalues,
  # ||E|| gain ||r|| <= (10 n eps ||K||)(t/n)||r||; finite up to t = 1e15.
  rng = np.random.default_rng(4)
  a = rng.normal(size=(8, 3))
  kk = a @ a.T
  y = rng.normal(size=8)
  ts = np.array([1.0, 1e3, 1e6, 1e15])
  f, ft = ntk.mse_predictor(kk, y)(ts, k_test_train=kk)
  assert np.all(np.isfinite(ft))
  bound = 10 * np.finfo(float).eps * np.linalg.norm(kk, 2) * ts * np.linalg.norm(y) + 1e-12
  assert np.all(np.linalg.norm(ft - f, axis=1)[:3] <= bound[:3])
