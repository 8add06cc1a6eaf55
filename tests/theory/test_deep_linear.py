"""theory.deep_linear against independent computations: a stiff ODE solver,
finite differences of its own ODE, and the training loss evaluated on data."""

import jax
import numpy as np
import pytest
from scipy.integrate import solve_ivp

from theory import deep_linear as dl

@pytest.fixture(autouse=True)
def x64():  # float64 for every test here, restored after each
  with jax.enable_x64(True):
    yield


def ode_reference(t, s, u0, depth):
  """DOP853 (8th-order Runge-Kutta) on log u of `du/dt = N u^(2-2/N) (s - u)`."""
  rhs = lambda _, y: [depth * np.exp(y[0]) ** (1 - 2 / depth) * (s - np.exp(y[0]))]
  sol = solve_ivp(rhs, (0, t[-1]), [np.log(u0)], method="DOP853", t_eval=t,
                  rtol=1e-13, atol=1e-14)
  return np.exp(sol.y[0])


@pytest.mark.parametrize("depth", [2, 3, 4, 6])
@pytest.mark.parametrize("s", [1e-4, 1.0, 1e3])
@pytest.mark.parametrize("ratio", [1e-6, 0.3, 4.0])  # u0 / s: plateau, mid, decay
def test_matches_ode_solver(depth, s, ratio):
  u0 = ratio * s
  frac = 0.5 if ratio < 1 else 2.0
  t_end = 4 * float(dl.learning_time(s, u0, depth, fraction=frac))
  t = np.linspace(0.0, t_end, 40)
  u = np.asarray(dl.mode_strength(t, s, u0, depth))
  # The issue asks for <= 1e-6; the implicit closed form reaches ~1e-12.
  np.testing.assert_allclose(u, ode_reference(t, s, u0, depth), rtol=1e-6)


@pytest.mark.parametrize("depth", [1, 2, 3, 5])
def test_satisfies_its_ode(depth):
  s, u0 = np.array([3.0, 1.0, 0.2, 0.5]), np.array([1e-3, 0.05, 0.1, 0.9])
  t, h = np.linspace(0.5, 12.0, 30), 1e-5
  du = (dl.mode_strength(t + h, s, u0, depth)
        - dl.mode_strength(t - h, s, u0, depth)) / (2 * h)
  rhs = dl.mode_velocity(dl.mode_strength(t, s, u0, depth), s, depth)
  # Central differences: error h^2 u''' / 6 ~ 1e-10 plus rounding 1e-16 / h.
  np.testing.assert_allclose(du, rhs, rtol=1e-6, atol=1e-9)
  np.testing.assert_allclose(dl.mode_strength(np.zeros(1), s, u0, depth)[0], u0,
                             rtol=1e-12)


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_learning_time_inverts_mode_strength(depth, fraction):
  s, u0 = np.array([1e-4, 0.7, 5.0, 200.0]), np.array([1e-9, 1e-3, 0.01, 0.5])
  tf = dl.learning_time(s, u0, depth, fraction=fraction)
  u = np.array([dl.mode_strength(tf[i:i + 1], s[i], u0[i], depth)[0]
                for i in range(4)])
  np.testing.assert_allclose(u, fraction * s, rtol=1e-9)


def test_learning_time_decay_and_edge_cases():
  # decay from u0 = 4 s down to 1.5 s
  for depth in (1, 2, 3):
    tf = dl.learning_time(2.0, 8.0, depth, fraction=1.5)
    np.testing.assert_allclose(dl.mode_strength(tf[None], 2.0, 8.0, depth), 3.0,
                               rtol=1e-9)
  assert dl.learning_time(1.0, 0.6, 2, fraction=0.5) == 0.0     # already past
  assert np.isinf(dl.learning_time(1.0, 0.1, 3, fraction=1.2))  # beyond s
  assert np.isinf(dl.learning_time(1.0, 0.0, 2))                # u0 = 0 stays 0
  np.testing.assert_allclose(dl.learning_time(1.0, 0.0, 1), np.log(2.0))
  # Saxe et al. eq. 10: t = tau/(2s) log(f(s-u0)/(u0(1-f)))
  np.testing.assert_allclose(dl.learning_time(2.0, 0.01, 2, tau=3.0),
                             3.0 / 4.0 * np.log(1.99 / 0.01))


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_large_time_finite_and_converged(depth):
  s = np.array([1e-4, 1e-2, 1.0, 1e3])
  t = np.array([0.0, 1e-3, 1.0, 1e3, 1e6])
  u = np.asarray(dl.mode_strength(t, s, 1e-6 * s, depth))
  assert np.all(np.isfinite(u)) and np.all(u > 0)
  # t = 1e6 is past every learning time here except depth>=3 at s = 1e-4
  # (c ~ 1/(N s^(2-2/N)) ~ 1e5 times a large plateau factor).
  done = dl.learning_time(s, 1e-6 * s, depth, fraction=0.999) < 1e6
  np.testing.assert_allclose(u[-1][done], s[done], rtol=1e-3)
  # 2 s t / tau = 2e9 >> 709, where the textbook sigmoid overflows to NaN.
  np.testing.assert_allclose(dl.mode_strength(np.array([1e6]), 1e3, 1.0, 2), [1e3])


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_decay_from_above_is_monotone_to_s(depth):
  t = np.linspace(0.0, 30.0, 200)
  u = np.asarray(dl.mode_strength(t, 1.0, 5.0, depth))
  # Monotone up to rounding: near u = s the closed form moves by ~1 ulp.
  assert np.all(np.diff(u) <= 1e-15) and np.all(u >= 1.0 - 1e-15)
  np.testing.assert_allclose(u[-1], 1.0, rtol=1e-6)


def test_zero_init_and_zero_s():
  t = np.linspace(0, 50, 11)
  for depth in (2, 3, 4):
    np.testing.assert_array_equal(dl.mode_strength(t, 2.0, 0.0, depth), 0.0)
  np.testing.assert_allclose(dl.mode_strength(t, 2.0, 0.0, 1), 2 * -np.expm1(-t))
  # s = 0: u^(-p) = u0^(-p) + p N t, p = 2 - 2/N (check via ODE residual).
  for depth in (2, 3):
    u = dl.mode_strength(t, 0.0, 0.5, depth)
    np.testing.assert_allclose(u, ode_reference(t, 0.0, 0.5, depth), rtol=1e-7)


def test_shapes_and_jit():
  t = np.linspace(0, 1, 7)
  assert dl.mode_strength(t, 1.0, 0.1).shape == (7,)
  assert dl.mode_strength(t, np.ones(3), 0.1, 3).shape == (7, 3)
  jitted = jax.jit(dl.mode_strength, static_argnums=3)
  np.testing.assert_allclose(jitted(t, np.ones(3), 0.1, 3),
                             dl.mode_strength(t, np.ones(3), 0.1, 3))
  batched = jax.vmap(lambda u0: dl.mode_strength(t, 2.0, u0, 2))(np.array([0.1, 0.2]))
  assert batched.shape == (2, 7)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_predicted_loss_is_the_loss_of_predicted_map_on_data(depth):
  rng = np.random.default_rng(0)
  p, d_in, d_out = 50, 6, 4
  x = rng.normal(size=(p, d_in))
  evals, evecs = np.linalg.eigh(x.T @ x / p)
  x = x @ evecs @ np.diag(evals ** -0.5) @ evecs.T          # Sigma_xx = I
  y = x @ rng.normal(size=(d_in, d_out)) + 0.3 * rng.normal(size=(p, d_out))
  sigma_yx = y.T @ x / p
  t = np.array([0.0, 0.3, 2.0, 40.0])
  u0 = np.array([0.01, 0.02, 0.0, 0.5])
  w = dl.predicted_map(t, sigma_yx, u0, depth)
  assert w.shape == (4, d_out, d_in)
  data_loss = [0.5 * np.mean(np.sum((y - x @ np.asarray(wt).T) ** 2, -1)) for wt in w]
  np.testing.assert_allclose(
      dl.predicted_loss(t, sigma_yx, u0, depth, sigma_yy_trace=np.sum(y * y) / p),
      data_loss, rtol=1e-10)


@pytest.mark.parametrize("kwargs, name", [
    (dict(t=[-1.0], s=1.0, u0=0.1), "`t`"),
    (dict(t=[np.nan], s=1.0, u0=0.1), "`t`"),
    (dict(t=[1.0], s=-1.0, u0=0.1), "`s`"),
    (dict(t=[1.0], s=np.nan, u0=0.1), "`s`"),
    (dict(t=[1.0], s=1.0, u0=-0.1), "`u0`"),
    (dict(t=[1.0], s=1.0, u0=0.1, tau=0.0), "`tau`"),
    (dict(t=[1.0], s=1.0, u0=0.1, tau=-2.0), "`tau`"),
    (dict(t=[1.0], s=1.0, u0=0.1, depth=0), "`depth`"),
    (dict(t=[1.0], s=1.0, u0=0.1, depth=2.5), "`depth`"),
    (dict(t=[1.0], s=np.ones(3), u0=np.ones(2)), "`s`"),
    (dict(t=np.ones((2, 2)), s=1.0, u0=0.1), "`t`"),
])
def test_bad_input_names_the_argument(kwargs, name):
  with pytest.raises(ValueError, match=name):
    dl.mode_strength(**kwargs)


def test_bad_input_other_functions():
  with pytest.raises(ValueError, match="`fraction`"):
    dl.learning_time(1.0, 0.1, fraction=0.0)
  with pytest.raises(ValueError, match="`u0`"):
    dl.predicted_map([1.0], np.eye(3), np.ones(2))
  with pytest.raises(ValueError, match="`sigma_yx`"):
    dl.predicted_loss([1.0], np.ones(3), 0.1)
  with pytest.raises(ValueError, match="`depth`"):
    dl.learning_time(1.0, 0.1, depth=-1)


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_singular_value_velocity_against_autodiff(depth):
  # A balanced factorization of a 6 x 6 matrix with distinct singular values,
  # a matrix-completion loss on a random mask: the derivative of
  # the product's singular values along -grad_params L, by central finite
  # differences in float64 (error O(eps^2) ~ 1e-10), against the formula.
  d, rng = 6, np.random.default_rng(depth)
  target = rng.standard_normal((d, d))
  mask = rng.random((d, d)) < 0.5
  # a generic (non-degenerate) balanced point: the same diagonal in every layer
  # W_l = R_l D R_{l-1}^T, so W_{l+1}^T W_{l+1} = R_l D^2 R_l^T = W_l W_l^T
  dg = np.diag(np.linspace(0.5, 1.5, d))
  frames = [np.linalg.qr(rng.standard_normal((d, d)))[0] for _ in range(depth + 1)]
  params = [frames[i + 1] @ dg @ frames[i].T for i in range(depth)]
  for a, b in zip(params[:-1], params[1:]):
    np.testing.assert_allclose(b.T @ b, a @ a.T, atol=1e-12)

  def product(ps):
    w = ps[0]
    for p in ps[1:]:
      w = p @ w
    return w

  loss = lambda ps: 0.5 * jax.numpy.sum(mask * (product(ps) - target) ** 2)
  grads = jax.grad(loss)(params)
  sv = lambda eps: np.linalg.svd(np.asarray(product(
      [p - eps * g for p, g in zip(params, grads)])), compute_uv=False)
  eps = 1e-5
  measured = (sv(eps) - sv(-eps)) / (2 * eps)
  u, s, vt = np.linalg.svd(np.asarray(product(params)))
  grad_w = mask * (np.asarray(product(params)) - target)
  proj = np.einsum("ir,ij,rj->r", u, grad_w, vt)
  predicted = np.asarray(dl.singular_value_velocity(s, proj, depth))
  np.testing.assert_allclose(measured, predicted, rtol=1e-6, atol=1e-8)
