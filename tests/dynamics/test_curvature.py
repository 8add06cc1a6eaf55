"""dynamics.curvature: Lanczos's top eigenvalues against eigvalsh of the dense
Hessian (alone, and inside a jitted, vmapped scan with warm starts), Adam's
preconditioned sharpness against the dense preconditioned Hessian, Hutchinson's
trace against the exact one, bad input named."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from dynamics import curvature
from dynamics.models import mlp

X = np.random.default_rng(0).normal(size=(20, 3))
Y = np.sin(X[:, 0])


def loss(p, x, y):
  return 0.5 * jnp.mean((mlp.apply(p, x, activation="tanh") - y) ** 2)


def dense(p, x=X, y=Y):
  flat, unravel = ravel_pytree(p)
  return np.asarray(jax.jit(jax.hessian(lambda f: loss(unravel(f), x, y)))(flat))


# compiled once per (k, num_iters, vectors): eager Lanczos would trace its scan each call
top = jax.jit(lambda p, k, n, vectors: curvature.top_eigenvalues(
    loss, p, X, Y, k=k, num_iters=n, return_vectors=vectors), static_argnums=(1, 2, 3))


def params(seed, dtype=jnp.float64):
  return mlp.init(jax.random.PRNGKey(seed), 3, (6,), dtype=dtype)  # 31 parameters


@pytest.mark.parametrize("k", [1, 3])
def test_top_eigenvalues_against_eigvalsh(k):
  # With num_iters = the 31 parameters the Krylov space is the whole space:
  # the Ritz values are H's eigenvalues to rounding (1e-10 relative to the
  # largest, float64, full reorthogonalisation); with 12 products the top one
  # is already within 1e-6 (it converges geometrically in the gap; measured
  # 3e-7 at 10 products), and the vectors satisfy H v = lam v to 1e-9.
  with jax.enable_x64(True):
    p = params(1)
    want = np.linalg.eigvalsh(dense(p))[::-1][:k]
    got = np.asarray(top(p, k, 31, False))
    np.testing.assert_allclose(got, want, atol=1e-10 * abs(want[0]))
    short = float(top(p, 1, 12, False)[0])
    assert abs(short - want[0]) < 1e-6 * abs(want[0])
    evals, vecs = top(p, k, 31, True)
    v = jax.vmap(lambda t: ravel_pytree(t)[0])(vecs)
    np.testing.assert_allclose(np.asarray(v) @ dense(p), np.asarray(evals)[:, None] * v,
                               atol=1e-9)


def test_inside_a_jitted_vmapped_scan_with_warm_starts():
  # Three seeds, five gradient steps each, the top 3 eigenvalues at every
  # step from 31 products started at the previous step's top vector: equal to
  # eigvalsh of the dense Hessian at the same parameters to 1e-9 relative.
  lr = 0.5
  with jax.enable_x64(True):
    def trajectory(p):
      def step(carry, _):
        p, v = carry
        evals, vecs = curvature.top_eigenvalues(loss, p, X, Y, k=3, num_iters=31, v0=v,
                                                return_vectors=True)
        g = jax.grad(loss)(p, X, Y)
        nxt = jax.tree_util.tree_map(lambda a, b: a - lr * b, p, g)
        return (nxt, jax.tree_util.tree_map(lambda a: a[0], vecs)), (p, evals)
      return jax.lax.scan(step, (p, p), None, length=5)[1]

    ps = jax.vmap(params)(jnp.arange(3))
    seen, evals = jax.jit(jax.vmap(trajectory))(ps)
    for s in range(3):
      for t in range(5):
        p = jax.tree_util.tree_map(lambda a: a[s, t], seen)
        want = np.linalg.eigvalsh(dense(p))[::-1][:3]
        np.testing.assert_allclose(np.asarray(evals[s, t]), want, atol=1e-9 * abs(want[0]))


def test_low_rank_hessian_reports_what_the_krylov_space_holds():
  # L = 1/2 ((a.p)^2 + 4 (b.p)^2) on 10 parameters: rank 2. From the all-ones
  # start the Krylov space is 3-dimensional (two eigenvectors and the null
  # space's component): the top 3 are the two eigenvalues and 0; a 4th is NaN.
  rng = np.random.default_rng(1)
  a, b = (np.linalg.qr(rng.normal(size=(10, 2)))[0]).T
  f = lambda p: 0.5 * ((a @ p) ** 2 + 4 * (b @ p) ** 2)
  with jax.enable_x64(True):
    got = np.asarray(curvature.top_eigenvalues(f, jnp.zeros(10), k=4, num_iters=10))
  np.testing.assert_allclose(got[:3], [4.0, 1.0, 0.0], atol=1e-12)
  assert np.isnan(got[3])


def test_preconditioned_sharpness_against_the_dense_preconditioned_hessian():
  # After 7 Adam steps: the top eigenvalue of P^{-1/2} H P^{-1/2}, P =
  # sqrt(nu / (1 - b2^7)) + eps from optax's own state, dense against
  # Lanczos with 31 products, 1e-10 relative (float64).
  with jax.enable_x64(True):
    p = params(2)
    opt = optax.adam(0.01)
    state = opt.init(p)
    for _ in range(7):
      upd, state = opt.update(jax.grad(loss)(p, X, Y), state, p)
      p = optax.apply_updates(p, upd)
    nu = ravel_pytree(state[0].nu)[0]
    scale = np.asarray(np.sqrt(nu / (1 - 0.999**7)) + 1e-8) ** -0.5
    want = np.linalg.eigvalsh(scale[:, None] * dense(p) * scale[None, :])[-1]
    got = float(curvature.preconditioned_sharpness(loss, p, state, X, Y, num_iters=31))
  assert got == pytest.approx(want, rel=1e-10)


def test_hessian_trace_within_its_standard_error():
  # 400 Rademacher probes: within 4 of the estimator's own standard errors of
  # the dense trace.
  with jax.enable_x64(True):
    p = params(3)
    est, se = curvature.hessian_trace(loss, p, X, Y, key=jax.random.PRNGKey(0),
                                      num_samples=400)
    exact = np.trace(dense(p))
  assert abs(float(est) - exact) <= 4 * float(se)


def test_gradient_alignment_is_the_cosine():
  # |cos| between the gradient and the top eigenvector against numpy's, 1e-12;
  # a zero direction gives 0, not NaN.
  with jax.enable_x64(True):
    p = params(4)
    _, vecs = curvature.top_eigenvalues(loss, p, X, Y, num_iters=31, return_vectors=True)
    top = jax.tree_util.tree_map(lambda a: a[0], vecs)
    got = float(curvature.gradient_alignment(loss, p, top, X, Y))
    g = np.asarray(ravel_pytree(jax.grad(loss)(p, X, Y))[0])
    v = np.asarray(ravel_pytree(top)[0])
    zero = float(curvature.gradient_alignment(loss, p, jax.tree_util.tree_map(
        jnp.zeros_like, p), X, Y))
  assert got == pytest.approx(abs(g @ v) / np.linalg.norm(g) / np.linalg.norm(v), rel=1e-12)
  assert zero == 0.0


@pytest.mark.parametrize("call, match", [
    (lambda: curvature.top_eigenvalues(loss, params(0, jnp.float32), X, Y, k=0), "`k`"),
    (lambda: curvature.top_eigenvalues(loss, params(0, jnp.float32), X, Y, k=3, num_iters=2),
     "`num_iters`"),
    (lambda: curvature.top_eigenvalues(loss, params(0, jnp.float32), X, Y, k=40, num_iters=40),
     "at most the number of parameters"),
    (lambda: curvature.preconditioned_sharpness(loss, params(0, jnp.float32),
                                                optax.sgd(0.1).init(params(0, jnp.float32)), X, Y),
     "ScaleByAdamState"),
    (lambda: curvature.hessian_trace(loss, params(0, jnp.float32), X, Y,
                                     key=jax.random.PRNGKey(0), num_samples=1), "`num_samples`"),
])
def test_bad_input_is_named(call, match):
  with pytest.raises(ValueError, match=match):
    call()
