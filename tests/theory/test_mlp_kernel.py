"""theory.ntk.mlp_kernel against its recursion written out by hand, closed
forms, finer quadrature, and Monte Carlo of finite networks."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dynamics.models import mlp
from theory import ntk

ACTS = ntk.ACTIVATIONS


def inputs(d=5):
  """Six inputs in d = 5 with `|x|^2 = d`: generic ones, an identical pair,
  an antipodal pair and a zero input (the edge cases of the arc-cosine
  formulas); scripts/kernel_quadrature.py uses the same."""
  x = np.random.default_rng(0).normal(size=(6, d))
  x *= np.sqrt(d) / np.linalg.norm(x, axis=1, keepdims=True)
  x[2], x[4], x[5] = x[1], -x[3], 0.0
  return x


# ---- the depth-3 recursion written out by hand, pair by pair -------------

def e_relu(q1, k, q2):
  c = max(-1.0, min(1.0, k / math.sqrt(q1 * q2)))
  t = math.acos(c)
  return (math.sqrt(q1 * q2) * (math.sin(t) + (math.pi - t) * c) / (2 * math.pi),
          (math.pi - t) / (2 * math.pi))


def e_erf(q1, k, q2):
  return (2 / math.pi * math.asin(2 * k / math.sqrt((1 + 2 * q1) * (1 + 2 * q2))),
          4 / math.pi / math.sqrt((1 + 2 * q1) * (1 + 2 * q2) - 4 * k * k))


@pytest.mark.parametrize("act, e", [("relu", e_relu), ("erf", e_erf)])
@pytest.mark.parametrize("w, b", [(1.0, 0.0), (1.4, 0.3)])
def test_depth3_against_recursion_by_hand(act, e, w, b):
  x = inputs()[:4]
  d = x.shape[1]
  with jax.enable_x64(True):
    got = ntk.mlp_kernel(3, act, w, b)(x)
    width = 7
    std = ntk.mlp_kernel(3, act, w, b, "standard", width=width)(x)
  for i in range(4):
    for j in range(4):
      k1 = lambda a, c: w**2 * x[a] @ x[c] / d + b**2
      q1, q2, k = k1(i, i), k1(j, j), k1(i, j)
      ee, dd = e(q1, k, q2)
      k2 = w**2 * ee + b**2
      th2 = k2 + w**2 * dd * k
      q1b, q2b = w**2 * e(q1, q1, q1)[0] + b**2, w**2 * e(q2, q2, q2)[0] + b**2
      ee2, dd2 = e(q1b, k2, q2b)
      k3 = w**2 * ee2 + b**2
      th3 = k3 + w**2 * dd2 * th2
      # neural-tangents' standard parameterization: gradients not rescaled
      s2 = x[i] @ x[j] + 1
      s3 = width * ee + 1 + w**2 * dd * s2
      s4 = width * ee2 + 1 + w**2 * dd2 * s3
      np.testing.assert_allclose(got["nngp"][i, j], k3, rtol=1e-12)
      np.testing.assert_allclose(got["ntk"][i, j], th3, rtol=1e-12)
      np.testing.assert_allclose(std["nngp"][i, j], k3, rtol=1e-12)
      np.testing.assert_allclose(std["ntk"][i, j], s4, rtol=1e-12)


def test_relu_diagonal_exact():
  # relu halves the second moment, E[relu'^2] = 1/2: with w = 1, b = 0,
  # K^l = K^1 / 2^(l-1), Theta^2 = K^1 / 2 + K^1 / 2, Theta^3 = K^1 / 4 + Theta^2 / 2.
  x = inputs()[:4]
  k1 = np.sum(x * x, 1) / x.shape[1]
  out = ntk.mlp_kernel(3)(x)
  np.testing.assert_allclose(np.diag(out["nngp"]), k1 / 4, rtol=1e-6)
  np.testing.assert_allclose(np.diag(out["ntk"]), 0.75 * k1, rtol=1e-6)


def test_linear_and_depth_one():
  x, y = inputs()[:3], inputs()[3:]
  with jax.enable_x64(True):
    lin = ntk.mlp_kernel(4, "linear", 1.5, 0.5)(x, y)
    k = theta = 1.5**2 * x @ y.T / 5 + 0.25
    for _ in range(3):  # K^{l+1} = w^2 K^l + b^2, Theta^{l+1} = K^{l+1} + w^2 Theta^l
      k = 1.5**2 * k + 0.25
      theta = k + 1.5**2 * theta
    np.testing.assert_allclose(lin["nngp"], k, rtol=1e-12)
    np.testing.assert_allclose(lin["ntk"], theta, rtol=1e-12)
    one = ntk.mlp_kernel(1, "tanh", 2.0, 0.1)(x, y)
    np.testing.assert_allclose(one["ntk"], 4 * x @ y.T / 5 + 0.01, rtol=1e-12)


# ---- the quadrature path -------------------------------------------------

def rel(a, b):
  return max(float(np.max(np.abs(a[k] - b[k])) / np.max(np.abs(b[k]))) for k in a)


@pytest.mark.parametrize("w, tol", [(1.0, 1e-12), (2.0, 1e-8), (3.0, 1e-3)])
def test_quadrature_against_erf_closed_form(w, tol):
  # erf is analytic: the trapezoidal rule's error falls geometrically; the
  # docstring states below 1e-12 at w_std = 1, 1e-8 at 2 and 1e-3 at 3 (96
  # nodes; measured 9e-15, 9e-15 and 1e-8); float64 rounding is ~1e-14.
  x = inputs()
  with jax.enable_x64(True):
    exact = ntk.mlp_kernel(3, "erf", w, 0.3)(x)
    assert rel(ntk.mlp_kernel(3, "erf", w, 0.3, quadrature=96)(x), exact) < tol


def test_quadrature_against_relu_closed_form():
  # relu and its step derivative are not smooth: the error falls only
  # algebraically (measured 4.4e-4 / 4.6e-3 for the NNGP / NTK at 96 nodes,
  # roughly halving per doubling). The closed form is the default for relu.
  x = inputs()
  with jax.enable_x64(True):
    exact = ntk.mlp_kernel(3, "relu", 1.0, 0.3)(x)
    e96 = rel(ntk.mlp_kernel(3, "relu", 1.0, 0.3, quadrature=96)(x), exact)
    e192 = rel(ntk.mlp_kernel(3, "relu", 1.0, 0.3, quadrature=192)(x), exact)
  assert e96 < 1e-2 and e192 < 0.7 * e96


@pytest.mark.parametrize("act", ["tanh", "gelu"])
@pytest.mark.parametrize("w, tol", [(1.0, 1e-12), (2.0, 1e-8), (3.0, 1e-3)])
def test_quadrature_error_as_stated(act, w, tol):
  # the default rule against one with twice the nodes (whose own error is
  # ~1e-10 or below here): the docstring's stated errors (measured at most
  # 3e-14, 1.6e-9 and 1e-4 by scripts/kernel_quadrature.py).
  x = inputs()
  with jax.enable_x64(True):
    fine = ntk.mlp_kernel(3, act, w, 0.3, quadrature=192)(x)
    assert rel(ntk.mlp_kernel(3, act, w, 0.3)(x), fine) < tol


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("b", [0.0, 0.5])
def test_edge_inputs_finite_and_symmetric(act, b):
  x = inputs()
  fn = ntk.mlp_kernel(4, act, 1.3, b)
  out = fn(x)
  cross = fn(x, x[::-1])
  for k in ("nngp", "ntk"):
    v = np.asarray(out[k])
    assert np.all(np.isfinite(v)) and np.all(np.isfinite(cross[k]))
    np.testing.assert_array_equal(v, v.T)
    np.testing.assert_allclose(v[1], v[2], rtol=1e-6)        # identical inputs
    np.testing.assert_allclose(cross[k], v[:, ::-1], rtol=1e-5, atol=1e-6)
    assert np.linalg.eigvalsh(v.astype(np.float64)).min() > -1e-5 * np.abs(v).max()
  if b == 0:
    # a zero input with no bias: every pre-activation is 0, phi(0) = 0 for
    # each activation, and Theta^1 = K^1 = 0 makes every later term vanish
    np.testing.assert_allclose(out["nngp"][5], 0.0, atol=1e-7)
    np.testing.assert_allclose(out["ntk"][5], 0.0, atol=1e-7)


def test_jit_and_vmap():
  x = inputs()
  fn = ntk.mlp_kernel(3, "tanh", 1.2, 0.2)
  eager = fn(x)
  jitted = jax.jit(fn)(x)
  np.testing.assert_allclose(jitted["ntk"], eager["ntk"], rtol=1e-5)
  batched = jax.vmap(lambda s: ntk.mlp_kernel(3, "relu", 1.0, 0.0)(s * x)["ntk"])(
      jnp.array([1.0, 2.0]))
  # relu with no bias is homogeneous: Theta(2x) = 4 Theta(x)
  np.testing.assert_allclose(batched[1], 4 * batched[0], rtol=1e-5)


# ---- Monte Carlo of finite networks --------------------------------------

def finite_kernels(params, x, act, w, b, standard=False):
  """One finite network's NNGP estimate (the expectation over its last layer
  given the rest, `w^2 a.a'/n + b^2` with `a` the last hidden layer) and its
  NTK (`dynamics.models.mlp.ntk`, checked against the Jacobian in
  tests/dynamics/test_mlp.py)."""
  par = "standard" if standard else "ntk"
  kw = dict(activation=act, parameterization=par, w_std=w, b_std=b)
  last = mlp.ACTIVATIONS[act](mlp.apply(params[:-1], x, **kw))
  return w**2 * last @ last.T / last.shape[1] + b**2, mlp.ntk(params, x, **kw)


def exact_kernels(depth, acts, w=1.3, b=0.3):
  """The analytic kernels on `inputs()` for each activation, in one jitted
  program (the eager recursion compiles every primitive anew per activation)."""
  return jax.jit(lambda x: {a: ntk.mlp_kernel(depth, a, w, b)(x) for a in acts})(inputs())


def monte_carlo(acts, widths, seeds, w=1.3, b=0.3, depth=3):
  """Per width and activation: every seed's empirical kernels, `[seeds, 6, 6]`.
  One program per width for every activation: a seed's network weights are
  drawn once and used with each activation, so for each activation the seeds
  are still independent networks."""
  x = inputs()
  keys = jax.random.split(jax.random.PRNGKey(depth), seeds)
  out = {}
  for n in widths:
    def one(key, n=n):
      params = mlp.init(key, 5, (n,) * (depth - 1), w_std=w, b_std=b)
      return {a: finite_kernels(params, x, a, w, b) for a in acts}
    est = jax.jit(lambda k: jax.lax.map(one, k))(keys)   # one seed at a time
    out[n] = {a: {k: np.asarray(est[a][i]) for i, k in enumerate(("nngp", "ntk"))}
              for a in acts}
  return out


def rms_error(runs, ref):
  """Root-mean-square over seeds of the relative Frobenius error."""
  return float(np.sqrt(np.mean([np.sum((s - ref)**2) for s in runs]) / np.sum(ref**2)))


def z_scores(runs, ref):
  """The seeds' mean minus the limit, in units of its standard error."""
  scale = runs.std(0, ddof=1) / np.sqrt(len(runs)) + 1e-7 * np.abs(ref).max()
  return np.abs(runs.mean(0) - ref) / scale


def check_monte_carlo(act, exact, runs, widths, slope_tol):
  for key in ("nngp", "ntk"):
    ref = np.asarray(exact[act][key])
    # One network's empirical kernel fluctuates as width^-1/2 (a mean of
    # `width` weakly dependent terms), so its mean squared error is
    # a/width + O(1/width^2): the RMS error's log-log slope is -1/2.
    rms = [rms_error(runs[n][act][key], ref) for n in widths]
    slope = np.polyfit(np.log(widths), np.log(rms), 1)[0]
    assert abs(slope + 0.5) < slope_tol, (act, key, slope, rms)
    # At the largest width the seeds' mean is within its own standard error
    # of the limit (the O(1/width) bias is well below it there): 4.5 sigma
    # over the 21 distinct entries, a false alarm below 1e-4.
    assert z_scores(runs[widths[-1]][act][key], ref).max() < 4.5, (act, key)


# the ends of a 16x range: the least-squares slope over (1024, 4096, 16384),
# log-equally spaced, is exactly the slope between its ends (the middle width
# has no leverage on it), and the z-scores read the widest only
WIDTHS = (1024, 16384)


@pytest.fixture(scope="module")
def depth2_runs():
  return exact_kernels(2, ACTS), monte_carlo(ACTS, WIDTHS, seeds=32, depth=2)


@pytest.mark.parametrize("act", ACTS)
def test_against_monte_carlo(act, depth2_runs):
  # One hidden layer at widths 2^10 and 2^14, 32 seeds. The per-seed error's
  # coefficient of variation is ~0.5, so each RMS is known to ~10% and the
  # slope over a 16x range to ~0.05: a 3-sigma band of 0.15.
  check_monte_carlo(act, *depth2_runs, WIDTHS, slope_tol=0.15)


@pytest.fixture(scope="module")
def depth3_runs():
  return exact_kernels(3, ACTS), monte_carlo(ACTS, (4096,), seeds=8, depth=3)[4096]


@pytest.mark.parametrize("act", ACTS)
def test_depth3_against_monte_carlo(act, depth3_runs):
  # Two hidden layers of width 4096, 8 seeds. The per-seed relative error
  # is ~0.02 here (measured 0.021 +- 0.013 for relu); the seeds' mean adds
  # that / sqrt(8) = 0.007 to an O(1/width) bias measured as ~30/width
  # (0.116 at width 256): 0.015 expected, bounded at 0.03.
  exact, runs = depth3_runs
  for key in ("nngp", "ntk"):
    ref = np.asarray(exact[act][key])
    mean = runs[act][key].mean(0)
    assert np.linalg.norm(mean - ref) / np.linalg.norm(ref) < 0.03, (act, key)


@pytest.mark.slow
@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_depth3_against_monte_carlo_wide(act):
  # up to width 2^14 (a 1 GB weight matrix per seed), 8 seeds: each RMS
  # known to ~20%, the slope to ~0.1; 3 sigma. The O(1/width) bias is
  # ~0.3 standard errors at 2^14.
  widths = (1024, 4096, 16384)
  check_monte_carlo(act, exact_kernels(3, [act]), monte_carlo([act], widths, 8, depth=3),
                    widths, slope_tol=0.3)


def test_standard_parameterization_against_monte_carlo():
  # neural-tangents' standard NTK grows with the width: the analytic one at
  # `width` against the empirical NTK of networks of that width.
  x = inputs()
  n, seeds = 2048, 8
  exact = ntk.mlp_kernel(3, "relu", 1.3, 0.3, "standard", width=n)(x)
  run = jax.jit(lambda key: finite_kernels(
      mlp.init(key, 5, (n, n), parameterization="standard", w_std=1.3, b_std=0.3),
      x, "relu", 1.3, 0.3, standard=True)[1])
  s = np.stack([run(jax.random.PRNGKey(k)) for k in range(seeds)])
  # width 2048 and depth 3: the O(1/width) bias is ~1.5% (~30/width, as in
  # the ntk parameterization), about the seeds' standard error; 6 sigma.
  assert z_scores(s, np.asarray(exact["ntk"])).max() < 6
  assert np.abs(exact["ntk"]).max() > 100  # it is O(width), not O(1)


# ---- empirical_ntk: blocks, trailing outputs, Flax ------------------------

def flat_jacobian_ntk(f, params, x1, x2):
  """`J J^T` from one Jacobian of the flattened batch output with respect to
  the raveled parameters, traced over the outputs: the plain definition."""
  flat, unravel = jax.flatten_util.ravel_pytree(params)
  jac = lambda x: jax.jacrev(lambda w: f(unravel(w), x).reshape(x.shape[0], -1))(flat)
  return jnp.einsum("ikp,jkp->ij", jac(x1), jac(x2))


@pytest.mark.parametrize("out", [None, 3])
def test_empirical_ntk_blocks_and_outputs(out):
  import jax.flatten_util  # noqa: F401
  with jax.enable_x64(True):
    p = mlp.init(jax.random.PRNGKey(2), 5, (6, 4), out, w_std=1.2, b_std=0.3,
                 dtype=jnp.float64)
    f = lambda p_, x_: mlp.apply(p_, x_, activation="tanh", w_std=1.2, b_std=0.3)
    x1 = np.random.default_rng(1).normal(size=(13, 5))
    x2 = x1[:7] * 0.5

    def every(p):  # one jitted program: eagerly, each primitive compiles anew
      r = {"want": flat_jacobian_ntk(f, p, x1, x2),
           "full": ntk.empirical_ntk(f, p, x1, x2),
           "blocks": ntk.empirical_ntk(f, p, x1, x2, batch_size=4),
           "sym_blocks": ntk.empirical_ntk(f, p, x1, batch_size=4),
           "sym": ntk.empirical_ntk(f, p, x1, x1)}
      if out:
        r["each"] = sum(ntk.empirical_ntk(lambda p_, x_, k=k: f(p_, x_)[:, k], p, x1, x2)
                        for k in range(out))
      return r

    r = jax.jit(every)(p)
    want = r["want"]
    np.testing.assert_allclose(r["full"], want, rtol=1e-12)
    # uneven blocks (13 = 4 + 4 + 4 + 1, the last padded; 7 = 4 + 3)
    np.testing.assert_allclose(r["blocks"], want, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(r["sym_blocks"], r["sym"], rtol=1e-12)
    if out:  # traced over the outputs: the sum of each output's own NTK
      np.testing.assert_allclose(r["each"], want, rtol=1e-12)


def test_empirical_ntk_of_a_flax_module():
  import flax.linen as nn
  import jax.flatten_util  # noqa: F401

  class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(2)(nn.tanh(nn.Dense(16)(x)))

  with jax.enable_x64(True):
    x = np.random.default_rng(2).normal(size=(9, 4))
    model = MLP()
    variables = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64),
                                       model.init(jax.random.PRNGKey(0), x))
    got, want = jax.jit(lambda v: (
        ntk.empirical_ntk(model.apply, v, x, x[:5], batch_size=2),
        flat_jacobian_ntk(model.apply, v, x, x[:5])))(variables)
    np.testing.assert_allclose(got, want, rtol=1e-12)
