r"""Linear teacher task with exactly whitened inputs.

`x: [P, d_in]` is a Gaussian sample whitened on itself, `x <- x C^{-1/2}` with
`C = x^T x / P`, so `Sigma_xx = I` to machine precision. Labels are
`y = x W_t^T + sqrt(noise_var) xi` with teacher `W_t = U_t diag(s) V_t^T`
(random orthonormal `U_t: [d_out, M]`, `V_t: [d_in, M]`), so without noise
`Sigma_yx = Y^T X / P = W_t` exactly. With noise the theory must use the
empirical `Sigma_yx`; its SVD is returned with signs matched to the teacher's.
The `K = min(d_in, d_out)` modes always have a well-defined basis, so mode
`i` means the same direction in every seed, batch and grid point.
Conventions: `docs/conventions.md`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from dynamics.linalg import orthonormal, svd, whiten


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
  m, k = s_t.shape[0], min(d_in, d_out)
  k_x, k_u, k_v, k_noise = jax.random.split(key, 4)
  x = whiten(jax.random.normal(k_x, (num_samples, d_in), dtype))
  # Complete frames: the teacher uses the first M columns; the rest fix a
  # basis of the directions it leaves untaught (degenerate without noise).
  u_t, v_t = orthonormal(k_u, d_out, k, dtype), orthonormal(k_v, d_in, k, dtype)
  s_full = jnp.concatenate([s_t, jnp.zeros(k - m, dtype)])
  y = x @ (v_t * s_full) @ u_t.T
  y = y + jnp.sqrt(noise_var) * jax.random.normal(k_noise, y.shape, dtype)
  sigma_yx = y.T @ x / num_samples
  # With noise every singular value is distinct (almost surely) and the SVD
  # is unique up to a sign per mode, matched here to the teacher's frame.
  # Without noise the SVD of the null space is arbitrary, so the teacher's
  # frame and spectrum are used as they are (exact: sigma_yx = U diag(s) V^T).
  u_svd, s_svd, vt_svd = svd(sigma_yx)
  sign = jnp.sign(jnp.sum(u_svd * u_t, axis=0))
  sign = jnp.where(sign == 0, 1.0, sign)
  noisy = noise_var > 0
  return LinearTeacher(
      x, y, sigma_yx, jnp.where(noisy, u_svd * sign, u_t),
      jnp.where(noisy, s_svd, s_full), jnp.where(noisy, vt_svd.T * sign, v_t),
      jnp.sum(y * y) / num_samples)
