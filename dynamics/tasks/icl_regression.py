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

Moments (`sample_moments`): the layer reads the context only through
`E = (1/N) sum_i z_i z_i^T`, `z_i = (x_i, y_i)`. Given `w`, `z_i = L g_i` with
`L = [[Lambda^{1/2}, 0], [w^T Lambda^{1/2}, sigma]]` and `g_i ~ N(0, I_{d+1})`, so
`N E = L W L^T` with `W ~ Wishart(N, I_{d+1})`, drawn by the Bartlett
decomposition `W = A A^T` (`A` lower triangular, `A_ii^2 ~ chi^2(N - i)`,
`A_ij ~ N(0, 1)` below the diagonal): `d(d+1)/2` normals and `d+1` chi-square
draws per prompt instead of `N (d+1)` normals, exactly the same law of
`(E, x_q, y_q)` (Gaussian inputs and `N >= d + 1`).

Covariances by name (`covariance`): `'isotropic'` is `I_d`; `'skewed'` has
eigenvalues geometric from 1 to `1/condition_number`, rescaled to trace `d`,
in a random basis drawn from `key` (so `Lambda` is not diagonal).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dynamics.linalg import eigh, orthonormal

COVARIANCES = ("isotropic", "skewed")
INPUTS = ("gaussian", "uniform")
KURTOSIS = {"gaussian": 3.0, "uniform": 1.8}  # E z^4 / (E z^2)^2 per coordinate


class Moments(NamedTuple):
  e: jax.Array    # [B, d+1, d+1] (1/N) sum_i z_i z_i^T over the context
  x_q: jax.Array  # [B, d] query input
  y_q: jax.Array  # [B] query label (the target)


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


def input_variance(inputs: str, input_range: float = 1.0) -> float:
  """Per-coordinate variance of the inputs before `Lambda`'s shape: 1 for
  `'gaussian'` (tr Lambda = d), `r^2 / 12` for von Oswald et al.'s `U(-r/2, r/2)`."""
  return 1.0 if inputs == "gaussian" else input_range ** 2 / 12


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


def to_moments(p: Prompts) -> Moments:
  """The moments the layer reads of token prompts, `E = (1/N) sum_i z_i z_i^T`
  (any input law): the same prompts in `O(d^2)` memory whatever N."""
  ctx = jnp.concatenate([p.x, p.y[..., None]], axis=-1)              # [B, N, d+1]
  return Moments(jnp.einsum("bni,bnj->bij", ctx, ctx) / p.x.shape[1], p.x_q, p.y_q)


def gamma(key: jax.Array, alpha, shape, dtype=jnp.float32) -> jax.Array:
  """`Gamma(alpha, 1)` draws of `shape` (`alpha` a static float or numpy
  array broadcast to `shape`): Marsaglia & Tsang's (2000) exact rejection
  sampler (a normal and a uniform per try; accepts > 95% of tries for
  `alpha >= 1`), with `alpha < 1` boosted by `U^(1/alpha)`. Tries are
  vectorised: one round for every entry, then further rounds only while some
  entry is still rejected. Unlike `jax.random.gamma` its rejection loop runs
  once for the whole array, not per entry, so it stays cheap under `vmap`."""
  alpha = np.broadcast_to(np.asarray(alpha, np.float64), shape)
  if np.any(alpha <= 0):
    raise ValueError(f"`alpha` must be positive, got {alpha.min()}.")
  boost = alpha < 1
  d = jnp.asarray(np.where(boost, alpha + 1, alpha) - 1 / 3, dtype)
  c = 1 / jnp.sqrt(9 * d)
  k_boost, key = jax.random.split(key)

  def attempt(key, out, done):
    k_x, k_u = jax.random.split(key)
    x = jax.random.normal(k_x, shape, dtype)
    u = jax.random.uniform(k_u, shape, dtype)
    v = (1 + c * x) ** 3
    ok = (v > 0) & (jnp.log(u) < 0.5 * x * x + d - d * v + d * jnp.log(jnp.where(v > 0, v, 1)))
    return jnp.where(done | ~ok, out, d * v), done | ok

  out, done = attempt(jax.random.fold_in(key, 0), jnp.zeros(shape, dtype),
                      jnp.zeros(shape, bool))

  def body(state):
    i, out, done = state
    return (i + 1, *attempt(jax.random.fold_in(key, i), out, done))

  _, out, _ = jax.lax.while_loop(lambda s: ~jnp.all(s[2]), body, (1, out, done))
  if np.any(boost):
    u = jax.random.uniform(k_boost, shape, dtype, minval=jnp.finfo(dtype).tiny)
    out = jnp.where(jnp.asarray(boost), out * u ** jnp.asarray(1 / np.where(boost, alpha, 1),
                                                                dtype), out)
  return out


def sample_moments(key: jax.Array, batch: int, n_context: int, cov_sqrt: jax.Array,
                   noise_var=0.0) -> Moments:
  """`batch` fresh prompts as `(E, x_q, y_q)`, the law of `sample`'s prompts
  (Gaussian inputs) through the moments the layer reads (module docstring).
  Needs `n_context >= d + 1` (`E` then has full rank almost surely)."""
  d = cov_sqrt.shape[0]
  if n_context < d + 1:
    raise ValueError(f"sample_moments needs n_context >= d + 1 = {d + 1}, got {n_context}; "
                     "use sample (tokens).")
  dt, e = cov_sqrt.dtype, d + 1
  k_normal, k_diag = jax.random.split(key)
  rows, cols = np.tril_indices(e, -1)
  noisy = not (isinstance(noise_var, (int, float)) and noise_var == 0)
  # one draw for w, x_q, the query's noise and A's below-diagonal entries
  z = jax.random.normal(k_normal, (batch, 2 * d + 1 + len(rows)), dt)
  w, x_q = z[:, :d], z[:, d:2 * d] @ cov_sqrt
  y_q = jnp.einsum("bd,bd->b", x_q, w)
  if noisy:
    sigma = jnp.sqrt(jnp.asarray(noise_var, dt))
    y_q = y_q + sigma * z[:, 2 * d]
  # Bartlett: A lower triangular, A_ii = sqrt(chi^2(N - i)) = sqrt(2 Gamma((N - i)/2))
  # drawn [e, B] (the batch axis contiguous: measured 1.9x faster on CPU than [B, e])
  diag = jnp.sqrt(2 * gamma(k_diag, ((n_context - np.arange(e)) / 2)[:, None], (e, batch), dt)).T
  a = jnp.zeros((batch, e, e), dt).at[:, rows, cols].set(z[:, 2 * d + 1:])
  a = a + diag[:, :, None] * jnp.eye(e, dtype=dt)
  # L A with L = [[R, 0], [w^T R, sigma]], R = Lambda^{1/2}
  top = jnp.einsum("ij,bjk->bik", cov_sqrt, a[:, :d])                # [B, d, d+1]
  bottom = jnp.einsum("bi,bik->bk", w, top)                           # [B, d+1]
  if noisy:
    bottom = bottom + sigma * a[:, d]
  la = jnp.concatenate([top, bottom[:, None]], axis=1)                # [B, d+1, d+1]
  return Moments(jnp.einsum("bik,bjk->bij", la, la) / n_context, x_q, y_q)
