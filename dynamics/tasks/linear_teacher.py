r"""Linear teacher task with exactly whitened inputs.

`x: [P, d_in]` is a Gaussian sample whitened on itself, `x <- x C^{-1/2}` with
`C = x^T x / P`, so `Sigma_xx = I` to machine precision. Labels are
`y = x W_t^T + sqrt(noise_var) xi` with teacher `W_t = U_t diag(s) V_t^T`
(random orthonormal `U_t: [d_out, M]`, `V_t: [d_in, M]`), so without noise
`Sigma_yx = Y^T X / P = W_t` exactly. With noise the theory must use the
empirical `Sigma_yx`; its SVD is returned with signs matched to the teacher's.
Conventions: `docs/conventions.md`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from dynamics.linalg import orthonormal, whiten


class LinearTeacher(NamedTuple):
  x: jax.Array               # [P, d_in], x^T x / P = I
  y: jax.Array               # [P, d_out]
  sigma_yx: jax.Array        # [d_out, d_in], y^T x / P
  u_modes: jax.Array         # [d_out, K], left singular vectors of sigma_yx
  s: jax.Array               # [K], singular values, decreasing
  v_modes: jax.Array         # [d_in, K]
  sigma_yy_trace: jax.Array  # [], tr(y^T y / P)


def linear_teacher(key: jax.Array, *, d_in: int, d_out: int, num_samples: int,
                   singular_values: ArrayLike, noise_var: ArrayLike = 0.0,
                   dtype=jnp.float32) -> LinearTeacher:
  """Draws the task. `K = min(d_in, d_out)` modes: the M teacher modes first.

  Args:
    key: task key (shared by every seed of a run).
    d_in, d_out, num_samples: `d_in <= num_samples`.
    singular_values: `[M]` teacher strengths, `M <= min(d_in, d_out)`.
    noise_var: label-noise variance.
  """
  s_t = jnp.asarray(singular_values, dtype)
  m = s_t.shape[0]
  k_x, k_u, k_v, k_noise = jax.random.split(key, 4)
  x = whiten(jax.random.normal(k_x, (num_samples, d_in), dtype))
  u_t = orthonormal(k_u, d_out, m, dtype)
  v_t = orthonormal(k_v, d_in, m, dtype)
  y = x @ (v_t * s_t) @ u_t.T
  y = y + jnp.sqrt(noise_var) * jax.random.normal(k_noise, y.shape, dtype)
  sigma_yx = y.T @ x / num_samples
  u_modes, s, vt = jnp.linalg.svd(sigma_yx, full_matrices=False)
  # Singular vectors are defined up to a sign per mode; match the teacher's.
  sign = jnp.sign(jnp.sum(u_modes[:, :m] * u_t, axis=0))
  sign = jnp.concatenate([jnp.where(sign == 0, 1.0, sign),
                          jnp.ones(s.shape[0] - m, dtype)])
  return LinearTeacher(x, y, sigma_yx, u_modes * sign, s, vt.T * sign,
                       jnp.sum(y * y) / num_samples)
