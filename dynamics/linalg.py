"""Small linear-algebra helpers shared by models and tasks.

The decompositions here are vmapped as a loop of single ones
(`jax.custom_batching.sequential_vmap`): XLA's CPU runtime runs a batched
LAPACK kernel by fanning the batch out to the thread pool it runs on, which
can hang when seeds are sharded over one CPU device per core
(`dynamics.train.plan_rows`). They run once per trajectory, not per step,
so the loop costs nothing that shows.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


svd = jax.custom_batching.sequential_vmap(
    lambda a: jnp.linalg.svd(a, full_matrices=False))
eigh = jax.custom_batching.sequential_vmap(lambda a: jnp.linalg.eigh(a))
qr = jax.custom_batching.sequential_vmap(lambda a: jnp.linalg.qr(a))


def orthonormal(key: jax.Array, n: int, m: int, dtype=jnp.float32) -> jax.Array:
  """`[n, m]` with orthonormal columns (QR of a Gaussian, signs fixed), n >= m."""
  q, r = qr(jax.random.normal(key, (n, m), dtype))
  return q * jnp.sign(jnp.diagonal(r))


def whiten(x: jax.Array) -> jax.Array:
  """`x C^{-1/2}` with `C = x^T x / P`, so the result has `x^T x / P = I`."""
  evals, evecs = eigh(x.T @ x / x.shape[0])
  return x @ (evecs * evals ** -0.5) @ evecs.T
