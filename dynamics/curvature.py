"""The loss's curvature from Hessian-vector products, inside a compiled trajectory.

Every function here is traceable: it runs in `observe` (inside the runner's
`lax.scan`), `vmap`s over seeds and learning rates, and never forms the
Hessian. A Hessian-vector product is forward-over-reverse,
`jvp(grad(loss), (params,), (v,))`, about the cost of two gradients.

- `top_eigenvalues`: the Hessian's `k` largest eigenvalues (and vectors) by
  Lanczos with full reorthogonalisation (Lanczos 1950; Golub & Van Loan,
  Matrix Computations, 10.1): `num_iters` products build an orthonormal Krylov
  basis `Q` and the tridiagonal `T = Q^T H Q`, whose top eigenvalues (Ritz
  values) converge to `H`'s from below, geometrically in the gap. With
  `num_iters` at least the number of parameters they are `H`'s to rounding.
  `v0` warm-starts it (the previous logged step's top vector).
- `preconditioned_sharpness`: the same for `P^{-1/2} H P^{-1/2}`, `P` Adam's
  diagonal preconditioner `sqrt(v_hat) + eps` at that step (Cohen et al. 2022),
  from optax's `scale_by_adam` state.
- `hessian_trace`: Hutchinson's estimator `E[z^T H z]`, `z` Rademacher.
- `gradient_alignment`: the cosine between the gradient and a direction (the
  top eigenvector).

Conventions: `docs/conventions.md`; the edge-of-stability thresholds these are
compared with: `theory.stability`, `docs/curvature.md`.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from dynamics import linalg


def hvp(loss_fn: Callable, params, v, *args):
  """`H v` for the Hessian of `loss_fn(params, *args)` at `params` (`v` a
  pytree like `params`)."""
  return jax.jvp(lambda p: jax.grad(loss_fn)(p, *args), (params,), (v,))[1]


def _check(k, num_iters):
  if not isinstance(k, int) or isinstance(k, bool) or k < 1:
    raise ValueError(f"`k` must be a positive integer, got {k!r}.")
  if not isinstance(num_iters, int) or isinstance(num_iters, bool) or num_iters < k:
    raise ValueError(f"`num_iters` must be an integer >= k = {k}, got {num_iters!r}.")


def _lanczos(matvec: Callable, v0: jax.Array, k: int, num_iters: int, vectors: bool):
  """The top `k` Ritz pairs of the symmetric operator `matvec` on `R^n`."""
  n = v0.shape[0]
  m = min(num_iters, n)
  dtype = v0.dtype
  q0 = v0 / jnp.linalg.norm(v0)
  tiny = jnp.finfo(dtype).eps

  def step(carry, j):
    q_all, alpha, beta, live = carry
    q = q_all[j]
    w = matvec(q)
    a = jnp.vdot(q, w)
    for _ in range(2):  # full reorthogonalisation, twice ("twice is enough")
      w = w - q_all.T @ (q_all @ w)
    b = jnp.linalg.norm(w)
    scale = jnp.maximum(jnp.abs(a), jnp.max(jnp.abs(alpha)))
    live_next = live & (b > tiny * n * jnp.maximum(scale, tiny))  # else: invariant subspace
    q_next = jnp.where(live_next, w / jnp.where(live_next, b, 1.0), 0.0)
    q_all = q_all.at[j + 1].set(q_next, mode="drop")  # past the last row: dropped
    alpha = alpha.at[j].set(jnp.where(live, a, 0.0))
    beta = beta.at[j].set(jnp.where(live_next, b, 0.0))
    return (q_all, alpha, beta, live_next), live

  q_all = jnp.zeros((m, n), dtype).at[0].set(q0)
  init = (q_all, jnp.zeros(m, dtype), jnp.zeros(m, dtype), jnp.asarray(True))
  (q_all, alpha, beta, _), live = jax.lax.scan(step, init, jnp.arange(m))
  # rows past a breakdown are not part of the Krylov space: put them far below
  low = -(1.0 + jnp.max(jnp.abs(alpha)) + jnp.max(beta)) * 1e6
  t = jnp.diag(jnp.where(live, alpha, low)) + jnp.diag(beta[:-1], 1) + jnp.diag(beta[:-1], -1)
  evals, evecs = linalg.eigh(t)
  # past the Krylov space's dimension (the operator's rank seen from v0) there
  # is no eigenvalue to report: NaN, not the stand-in rows
  found = jnp.arange(k) < jnp.sum(live)
  top = jnp.where(found, evals[::-1][:k], jnp.nan)
  if not vectors:
    return top, None
  return top, jnp.where(found[:, None], (q_all.T @ evecs[:, ::-1][:, :k]).T, jnp.nan)


def top_eigenvalues(loss_fn: Callable, params, *args, k: int = 1, num_iters: int = 20,
                    v0=None, key: jax.Array | None = None, return_vectors: bool = False):
  """The `k` largest eigenvalues (descending) of the Hessian of
  `loss_fn(params, *args)` at `params`, by Lanczos (module docstring).

  Args:
    loss_fn: `loss_fn(params, *args) -> scalar`.
    params: any pytree of float arrays.
    k: how many (>= 1). num_iters: Hessian-vector products (>= k; capped at
      the number of parameters, where the answer is exact to rounding).
    v0: a nonzero start vector like `params` (warm start), else a Gaussian
      from `key`, else all ones.
    return_vectors: also return the unit eigenvectors, pytrees like `params`
      with a leading `[k]` axis.

  Returns:
    `[k]` eigenvalues, or `(eigenvalues, vectors)`; NaN past the dimension of
    the Krylov space `v0` reaches (a Hessian of low rank seen from a start
    vector inside few of its eigenspaces).
  """
  _check(k, num_iters)
  flat, unravel = ravel_pytree(params)
  if k > flat.size:
    raise ValueError(f"`k` ({k}) must be at most the number of parameters ({flat.size}).")
  if v0 is not None:
    start = ravel_pytree(v0)[0].astype(flat.dtype)
  elif key is not None:
    start = jax.random.normal(key, flat.shape, flat.dtype)
  else:
    start = jnp.ones_like(flat)
  matvec = lambda v: ravel_pytree(hvp(loss_fn, params, unravel(v), *args))[0]
  evals, vecs = _lanczos(matvec, start, k, num_iters, return_vectors)
  if not return_vectors:
    return evals
  return evals, jax.vmap(unravel)(vecs)


def preconditioned_sharpness(loss_fn: Callable, params, opt_state, *args, b2: float = 0.999,
                             eps: float = 1e-8, num_iters: int = 20, v0=None):
  """The top eigenvalue of `P^{-1/2} H P^{-1/2}`, `P = sqrt(v_hat) + eps`
  Adam's preconditioner at this step (`v_hat = nu / (1 - b2^count)`, the bias
  correction), from the first `optax.ScaleByAdamState` in `opt_state`; compare
  with `theory.stability.adam_threshold(lr, b1)` (Cohen et al. 2022). `b2`
  and `eps` must be the optimizer's (optax's defaults here)."""
  state = _adam_state(opt_state)
  nu = ravel_pytree(state.nu)[0]
  count = jnp.maximum(state.count, 1).astype(nu.dtype)  # 1 - b2^count in nu's precision
  p_inv_sqrt = (jnp.sqrt(nu / (1 - jnp.asarray(b2, nu.dtype) ** count)) + eps) ** -0.5
  flat, unravel = ravel_pytree(params)
  p_inv_sqrt = p_inv_sqrt.astype(flat.dtype)
  matvec = lambda v: p_inv_sqrt * ravel_pytree(
      hvp(loss_fn, params, unravel(p_inv_sqrt * v), *args))[0]
  start = jnp.ones_like(flat) if v0 is None else ravel_pytree(v0)[0].astype(flat.dtype)
  return _lanczos(matvec, start, 1, num_iters, False)[0][0]


def _adam_state(opt_state):
  for s in jax.tree_util.tree_leaves(opt_state, is_leaf=lambda x: isinstance(
      x, optax.ScaleByAdamState)):
    if isinstance(s, optax.ScaleByAdamState):
      return s
  raise ValueError("`opt_state` holds no optax.ScaleByAdamState (an Adam optimizer's state).")


def hessian_trace(loss_fn: Callable, params, *args, key: jax.Array, num_samples: int = 10):
  """Hutchinson's estimate of `tr H`: the mean of `z^T H z` over
  `num_samples` Rademacher `z` (each `z^T H z` has variance `2 sum_{i != j}
  H_ij^2`). Returns `(estimate, standard_error)`."""
  if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 2:
    raise ValueError(f"`num_samples` must be an integer >= 2, got {num_samples!r}.")
  flat, unravel = ravel_pytree(params)

  def one(k):
    z = jax.random.rademacher(k, flat.shape, flat.dtype)
    return jnp.vdot(z, ravel_pytree(hvp(loss_fn, params, unravel(z), *args))[0])

  samples = jax.vmap(one)(jax.random.split(key, num_samples))
  return samples.mean(), samples.std(ddof=1) / jnp.sqrt(num_samples)


def gradient_alignment(loss_fn: Callable, params, direction, *args):
  """`|cos|` of the angle between the gradient of `loss_fn(params, *args)` and
  `direction` (a pytree like `params`, e.g. `top_eigenvalues`' top vector):
  1 when the gradient lies along it. 0 for a zero gradient."""
  g = ravel_pytree(jax.grad(loss_fn)(params, *args))[0]
  d = ravel_pytree(direction)[0].astype(g.dtype)
  norm = jnp.linalg.norm(g) * jnp.linalg.norm(d)
  return jnp.where(norm > 0, jnp.abs(jnp.vdot(g, d)) / jnp.where(norm > 0, norm, 1.0), 0.0)
