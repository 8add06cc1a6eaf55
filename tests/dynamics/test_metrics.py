"""dynamics.metrics against closed forms and scipy/numpy computations."""

import numpy as np
import pytest
from scipy import stats

from dynamics import metrics


def test_relative_error_is_relative_to_the_prediction_scale():
  p = np.array([[0.0, 1.0, 2.0, 4.0]])
  e = p + np.array([[0.4, 0.0, -0.2, 0.0]])
  np.testing.assert_allclose(metrics.relative_error(e, p), [0.1])
  np.testing.assert_allclose(metrics.relative_error(e, p, reduce="mean"), [0.6 / 16])
  np.testing.assert_allclose(metrics.relative_error(e.T, p.T, axis=0), [0.1])
  with pytest.raises(ValueError, match="reduce"):
    metrics.relative_error(e, p, reduce="median")


def test_r_squared():
  rng = np.random.default_rng(0)
  e = rng.normal(size=(3, 50))
  assert np.allclose(metrics.r_squared(e, e), 1.0)
  np.testing.assert_allclose(metrics.r_squared(e, e.mean(-1, keepdims=True)), 0.0,
                             atol=1e-12)
  p = e + 0.1 * rng.normal(size=e.shape)
  expected = [1 - np.sum((a - b) ** 2) / np.sum((a - a.mean()) ** 2) for a, b in zip(e, p)]
  np.testing.assert_allclose(metrics.r_squared(e, p), expected)


def test_time_to_fraction_on_a_sigmoid():
  # u = s / (1 + (s/u0 - 1) e^{-2 s t}) crosses s/2 at log(s/u0 - 1) / (2 s).
  s, u0 = np.array([[2.0], [0.5]]), 1e-3
  t = np.linspace(0, 20, 4001)
  u = s / (1 + (s / u0 - 1) * np.exp(-2 * s * t))
  exact = np.log(s[:, 0] / u0 - 1) / (2 * s[:, 0])
  # Linear interpolation on a grid of 5e-3: error << grid spacing.
  np.testing.assert_allclose(metrics.time_to_fraction(t, u, s[:, 0]), exact, atol=1e-4)


def test_time_to_fraction_directions_and_misses():
  t = np.arange(5.0)
  up = np.array([0.0, 0.2, 0.6, 0.9, 1.0])
  down = np.array([3.0, 2.0, 1.6, 1.2, 1.0])
  np.testing.assert_allclose(metrics.time_to_fraction(t, up, 1.0, 0.4), 1.5)
  np.testing.assert_allclose(metrics.time_to_fraction(t, down, 1.0, 1.4), 2.5)
  assert metrics.time_to_fraction(t, up, 1.0, 0.0) == 0.0     # already there
  assert metrics.time_to_fraction(t, up + 0.6, 2.0, 0.25) == 0.0  # between level and target
  assert np.isnan(metrics.time_to_fraction(t, up * 0.5, 1.0, 0.9))  # never


def test_seed_stats_against_scipy():
  rng = np.random.default_rng(1)
  x = rng.normal(2.0, 0.5, size=(20, 3))
  got = metrics.seed_stats(x, confidence=0.9)
  lo, hi = stats.t.interval(0.9, 19, loc=x.mean(0), scale=stats.sem(x, axis=0))
  np.testing.assert_allclose(got["mean"], x.mean(0))
  np.testing.assert_allclose(got["std"], x.std(0, ddof=1))
  np.testing.assert_allclose(got["ci_low"], lo)
  np.testing.assert_allclose(got["ci_high"], hi)
  x[0, 0] = np.nan  # a diverged seed is left out and counted
  got = metrics.seed_stats(x)
  assert got["n"][0] == 19 and np.isclose(got["mean"][0], x[1:, 0].mean())


def test_compare_keys_and_shapes():
  e = np.ones((4, 2, 10))
  out = metrics.compare(e, 1.1 * e)
  assert set(out) == {"max_rel_error", "mean_rel_error", "r2"}
  assert out["max_rel_error"].shape == (4, 2)
  np.testing.assert_allclose(out["max_rel_error"], 0.1 / 1.1)


def test_laziness_measures_by_hand():
  import jax
  import jax.numpy as jnp
  p0 = {"a": np.array([3.0, 0.0]), "b": [np.array([[4.0]])]}        # ||p0|| = 5
  p1 = {"a": np.array([3.0, 1.0]), "b": [np.array([[4.0 + 2.0]])]}  # moved by (0, 1, 2)
  np.testing.assert_allclose(metrics.relative_weight_change(p1, p0), np.sqrt(5) / 5)
  assert float(metrics.relative_weight_change(p0, p0)) == 0.0
  k0 = np.eye(3)
  np.testing.assert_allclose(metrics.kernel_distance(2 * k0, k0), 1.0)
  np.testing.assert_allclose(metrics.kernel_distance(np.stack([k0, 3 * k0]), k0), [0.0, 2.0])
  y = np.array([1.0, -2.0, 2.0])
  # K = c y y^T is perfectly aligned; K = I gives |y|^2 / (sqrt(n) |y|^2)
  np.testing.assert_allclose(metrics.kernel_alignment(5 * np.outer(y, y), y), 1.0)
  np.testing.assert_allclose(metrics.kernel_alignment(k0, y), 1 / np.sqrt(3))
  np.testing.assert_allclose(metrics.kernel_alignment(k0, y[:, None]), 1 / np.sqrt(3))
  # effective rank: r equal singular values give r; a rank-one matrix 1;
  # singular values (3, 1): exp(-(3/4) log(3/4) - (1/4) log(1/4))
  q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(5, 5)))
  np.testing.assert_allclose(metrics.effective_rank(2 * q[:, :3] @ q[:3]), 3.0, rtol=1e-5)
  np.testing.assert_allclose(metrics.effective_rank(np.outer(y, y)), 1.0, rtol=1e-5)
  want = np.exp(-(0.75 * np.log(0.75) + 0.25 * np.log(0.25)))
  np.testing.assert_allclose(metrics.effective_rank(np.diag([3.0, 1.0, 0.0])), want, rtol=1e-5)
  # inside a compiled function, batched
  w = jnp.stack([jnp.eye(4), jnp.diag(jnp.array([1.0, 0, 0, 0]))])
  np.testing.assert_allclose(jax.jit(metrics.effective_rank)(w), [4.0, 1.0], rtol=1e-5)
