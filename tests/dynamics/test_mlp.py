"""The multilayer perceptron: shapes, its output variance at init against the
recursion in its docstring (Monte Carlo over seeds), and relu_net as its
depth-2 ReLU case."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from dynamics.models import mlp, relu_net

ACTS = ["relu", "tanh", "erf", "gelu", "linear"]
PARAMS = ["ntk", "standard", "mean_field"]


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("par", PARAMS)
def test_shapes(act, par):
  x = jnp.ones((4, 3))
  for widths, out, bias in [((5,), None, True), ((5, 7), 2, False), ((6, 6, 6), 1, True)]:
    p = mlp.init(jax.random.PRNGKey(0), 3, widths, out, parameterization=par, bias=bias)
    assert len(p) == len(widths) + 1 and ("b" in p[0]) == bias
    f = mlp.apply(p, x, activation=act, parameterization=par)
    assert f.shape == ((4,) if out is None else (4, out))
    assert np.all(np.isfinite(f))


def second_moment(act, q):
  """`E_{z ~ N(0, q)} phi(z)^2` by 100-point Gauss-Hermite quadrature (exact
  to float64 for these smooth or piecewise-linear integrands to ~1e-10)."""
  t, w = np.polynomial.hermite_e.hermegauss(100)
  z = np.sqrt(q) * t
  phi = {"relu": np.maximum(z, 0), "tanh": np.tanh(z), "linear": z,
         "erf": erf(z), "gelu": z * 0.5 * (1 + erf(z / np.sqrt(2)))}[act]
  return float(np.sum(w * phi**2) / np.sqrt(2 * np.pi))


def output_variance(act, par, widths, d_norm2, d, w_std, b_std):
  """The docstring's recursion: `q1 = w^2 |x|^2/d + b^2`, `q <- w^2 E phi^2 + b^2`
  (the last layer over `n_{L-1}` for mean_field)."""
  q = w_std**2 * d_norm2 / d + b_std**2
  for i, _ in enumerate(widths):
    last = i == len(widths) - 1
    m2 = second_moment(act, q)
    q = w_std**2 * m2 / (widths[-1] if (last and par == "mean_field") else 1) + b_std**2
  return q


@pytest.mark.parametrize("act, widths", [(a, (16,)) for a in ACTS]
                         + [("relu", (16, 8)), ("linear", (8, 16))])
@pytest.mark.parametrize("par", PARAMS)
def test_output_variance_at_init(act, widths, par):
  """Over 8000 seeds, `mean f(x)^2` against the recursion; exact at any width
  for one hidden layer (its pre-activations are exactly N(0, q1)) and for
  relu and linear at any depth (E phi^2 is linear in the variance). The
  tolerance is 4 standard errors of the estimate, `std(f^2)/sqrt(N)`, from the
  sample itself (f is far from Gaussian at width 8)."""
  w_std, b_std, d = 1.3, 0.4, 5
  x = jnp.asarray(np.random.default_rng(0).normal(size=(1, d)))
  keys = jax.random.split(jax.random.PRNGKey(1), 8000)
  f = jax.vmap(lambda k: mlp.apply(
      mlp.init(k, d, widths, parameterization=par, w_std=w_std, b_std=b_std),
      x, activation=act, parameterization=par, w_std=w_std, b_std=b_std)[0])(keys)
  f2 = np.asarray(f, np.float64) ** 2
  want = output_variance(act, par, widths, float(np.sum(np.square(x))), d, w_std, b_std)
  se = f2.std() / np.sqrt(len(f2))
  assert abs(f2.mean() - want) < 4 * se, (f2.mean(), want, se)


@pytest.mark.parametrize("par", PARAMS)
def test_depth_two_relu_is_relu_net(par):
  x = jnp.asarray(np.random.default_rng(1).normal(size=(6, 5)))
  for out in (None, 3):
    p = relu_net.init(jax.random.PRNGKey(2), 5, 32, out, parameterization=par, w_std=1.2,
                      b_std=0.3)
    layers = [{"W": p["W"], "b": p["b"]},
              {"W": p["v"] if out is None else p["v"].T, "b": p["b_out"]}]
    kw = dict(parameterization=par, w_std=1.2, b_std=0.3)
    np.testing.assert_allclose(mlp.apply(layers, x, **kw), relu_net.apply(p, x, **kw),
                               rtol=1e-6, atol=1e-6)


def test_any_callable_activation():
  p = mlp.init(jax.random.PRNGKey(3), 2, (4,))
  x = jnp.ones((3, 2))
  np.testing.assert_allclose(mlp.apply(p, x, activation=jnp.tanh),
                             mlp.apply(p, x, activation="tanh"))


@pytest.mark.parametrize("call, name", [
    (lambda: mlp.init(jax.random.PRNGKey(0), 3, (4,), parameterization="mup"),
     "`parameterization`"),
    (lambda: mlp.init(jax.random.PRNGKey(0), 3, 4), "`widths`"),
    (lambda: mlp.init(jax.random.PRNGKey(0), 3, (4, 0)), "`widths`"),
    (lambda: mlp.init(jax.random.PRNGKey(0), 0, (4,)), "`d`"),
    (lambda: mlp.apply(mlp.init(jax.random.PRNGKey(0), 3, (4,)), jnp.ones((1, 3)),
                       activation="sigmoid"), "`activation`"),
])
def test_bad_input_names_the_argument(call, name):
  with pytest.raises(ValueError, match=name):
    call()


@pytest.mark.parametrize("par, bias", [(p, True) for p in PARAMS] + [("ntk", False)])
def test_ntk_without_the_jacobian(par, bias):
  from theory import ntk
  with jax.enable_x64(True):
    x = np.random.default_rng(0).normal(size=(7, 3))
    p = mlp.init(jax.random.PRNGKey(1), 3, (9, 6), parameterization=par, w_std=1.3,
                 b_std=0.4, bias=bias, dtype=jnp.float64)
    kw = dict(activation="tanh", parameterization=par, w_std=1.3, b_std=0.4)
    f = lambda p_, x_: mlp.apply(p_, x_, **kw)
    # the Jacobian's NTK as one jitted program (eagerly, every primitive of the
    # per-example Jacobians compiles anew)
    want, want_sym = jax.jit(lambda q: (ntk.empirical_ntk(f, q, x, x[:4]),
                                        ntk.empirical_ntk(f, q, x)))(p)
    np.testing.assert_allclose(mlp.ntk(p, x, x[:4], **kw), want, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(mlp.ntk(p, x, **kw), want_sym, rtol=1e-12)
