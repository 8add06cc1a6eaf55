"""Small linear-algebra helpers shared by models and tasks."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def orthonormal(key: jax.Array, n: int, m: int, dtype=jnp.float32) -> jax.Array:
  """`[n, m]` with orthonormal columns (QR of a Gaussian, signs fixed), n >= m."""
  q, r = jnp.linalg.qr(jax.random.normal(key, (n, m), dtype))
  return q * jnp.sign(jnp.diagonal(r))


def whiten(x: jax.Array) -> jax.Array:
  """`x C^{-1/2}` with `C = x^T x / P`, so the result has `x^T x / P = I`."""
  evals, evecs = jnp.linalg.eigh(x.T @ x / x.shape[0])
  return x @ (evecs * evals ** -0.5) @ evecs.T
