"""The two-layer ReLU model against theory.ntk and across parameterizations."""

import jax
import numpy as np
import pytest

from dynamics.models import relu_net
from theory import ntk


def inputs(n=6, d=5):
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (n, d)))
  return x / np.linalg.norm(x, axis=1, keepdims=True) * np.sqrt(d)


@pytest.mark.parametrize("w_std, b_std", [(1.0, 0.0), (1.4, 0.3)])
def test_ntk_parameterization_kernels_match_theory(w_std, b_std):
  with jax.enable_x64(True):
    x = inputs()
    p = relu_net.init(jax.random.PRNGKey(1), 5, 16384, b_std=b_std, w_std=w_std,
                      dtype=np.float64)
    fn = lambda params, x: relu_net.apply(params, x, w_std=w_std, b_std=b_std)
    emp = jax.jit(lambda q: ntk.empirical_ntk(fn, q, x, x))(p)  # eagerly: compiles per primitive
    np.testing.assert_allclose(ntk.relu_empirical_ntk(p, x, x, w_std, b_std), emp,
                               rtol=1e-10)
    # finite-width fluctuation ~2.2/sqrt(m) = 1.7% (tests/theory/test_ntk.py)
    ana = ntk.relu_ntk(x, x, w_std, b_std)
    assert np.linalg.norm(emp - ana) / np.linalg.norm(ana) < 0.03


def test_standard_is_the_same_function_at_init():
  x = inputs()
  key = jax.random.PRNGKey(2)
  f_ntk = relu_net.apply(relu_net.init(key, 5, 64, w_std=1.3, b_std=0.2), x,
                         w_std=1.3, b_std=0.2)
  f_std = relu_net.apply(relu_net.init(key, 5, 64, parameterization="standard",
                                       w_std=1.3, b_std=0.2), x,
                         parameterization="standard")
  np.testing.assert_allclose(f_std, f_ntk, rtol=1e-5, atol=1e-6)


def test_mean_field_kernel_scales_as_one_over_width():
  with jax.enable_x64(True):
    x = inputs()
    ratio = []
    for m in (512, 8192):
      p = relu_net.init(jax.random.PRNGKey(3), 5, m, bias=False, dtype=np.float64)
      fn = lambda params, x: relu_net.apply(params, x, parameterization="mean_field")
      ratio.append(np.trace(jax.jit(lambda q: ntk.empirical_ntk(fn, q, x, x))(p)) * m)
    # m * Theta_mf = Theta_ntk -> the analytic NTK, to O(1/sqrt(m)) fluctuations
    np.testing.assert_allclose(ratio, np.trace(ntk.relu_ntk(x, x)), rtol=0.1)


def test_vector_output_and_bad_parameterization():
  p = relu_net.init(jax.random.PRNGKey(4), 5, 32, out=3)
  assert relu_net.apply(p, inputs()).shape == (6, 3)
  with pytest.raises(ValueError, match="parameterization"):
    relu_net.init(jax.random.PRNGKey(4), 5, 32, parameterization="muP")
