r"""In-context linear regression prompts (Garg et al. 2022; von Oswald et al. 2023).

Each prompt draws a task `w ~ N(0, I_d)`, `N` context inputs and one query,
all `x ~ N(0, Lambda)`, and labels `y = w.x + eps`, `eps ~ N(0, noise_var)`
(the query's label `y_q` too). Shapes: `x: [B, N, d]`, `y: [B, N]`,
`x_q: [B, d]`, `y_q: [B]`. The theory of this task is
`theory/linear_attention.py`; conventions in `docs/conventions.md`.

Input distributions (`inputs`): `'gaussian'`, `x = z Lambda^{1/2}` with
`z ~ N(0, I)`; `'uniform'`, the same with `z` uniform on `[-sqrt 3, sqrt 3]^d`
(unit variance, kurtosis 9/5): with `Lambda = (r^2/12) I` this is von
Oswald et al.'s `U(-r/2, r/2)^d` (their released code's `input_range` r,
1 in its configs, while its docstring says `U(-1, 1)`).

Covariances by name (`covariance`): `'isotropic'` is `I_d`; `'skewed'` has
eigenvalues geometric from 1 to `1/condition_number`, rescaled to trace `d`,
in a random basis drawn from `key` (so `Lambda` is not diagonal).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from dynamics.linalg import eigh, orthonormal

COVARIANCES = ("isotropic", "skewed")
INPUTS = ("gaussian", "uniform")
KURTOSIS = {"gaussian": 3.0, "uniform": 1.8}  # E z^4 / (E z^2)^2 per coordinate


class Prompts(NamedTuple):
  x: jax.Array    # [B, N, d] context inputs
  y: jax.Array    # [B, N] context labels
  x_q: jax.Array  # [B, d] query input
  y_q: jax.Array  # [B] query label (the target)


def covariance(key: jax.Array, d: int, name: str = "isotropic",
               condition_number: float = 4.0, dtype=jnp.float32) -> jax.Array:
  """`Lambda`, `[d, d]` (module docstring)."""
  if name == "isotropic":
    return jnp.eye(d, dtype=dtype)
  if name != "skewed":
    raise ValueError(f"Unknown covariance {name!r}; known: {COVARIANCES}.")
  lam = condition_number ** -(jnp.arange(d, dtype=dtype) / max(d - 1, 1))
  lam = lam * d / jnp.sum(lam)
  q = orthonormal(key, d, d, dtype)
  return (q * lam) @ q.T


def sqrtm(cov: jax.Array) -> jax.Array:
  """The symmetric square root `Lambda^{1/2}` (so `x = z Lambda^{1/2}`, `z ~ N(0, I)`)."""
  lam, q = eigh(cov)
  return (q * jnp.sqrt(jnp.clip(lam, 0.0))) @ q.T


def sample(key: jax.Array, batch: int, n_context: int, cov_sqrt: jax.Array,
           noise_var=0.0, inputs: str = "gaussian") -> Prompts:
  """`batch` fresh prompts with inputs `z Lambda^{1/2}` (`inputs`: the law of
  `z`, module docstring); `noise_var` may be traced, a Python 0 skips drawing
  the noise."""
  if inputs not in INPUTS:
    raise ValueError(f"Unknown inputs {inputs!r}; known: {INPUTS}.")
  d = cov_sqrt.shape[0]
  k_w, k_x, k_e = jax.random.split(key, 3)
  w = jax.random.normal(k_w, (batch, d), cov_sqrt.dtype)
  shape = (batch, n_context + 1, d)
  if inputs == "gaussian":
    z = jax.random.normal(k_x, shape, cov_sqrt.dtype)
  else:
    z = jax.random.uniform(k_x, shape, cov_sqrt.dtype, -3 ** 0.5, 3 ** 0.5)
  xs = z @ cov_sqrt
  ys = jnp.einsum("bnd,bd->bn", xs, w)
  if not (isinstance(noise_var, (int, float)) and noise_var == 0):
    ys = ys + jnp.sqrt(noise_var) * jax.random.normal(k_e, ys.shape, ys.dtype)
  return Prompts(xs[:, :-1], ys[:, :-1], xs[:, -1], ys[:, -1])
