r"""Deep linear network `f(x) = W_N ... W_1 x` as an `(init, apply)` pair.

Parameters are a list `[W_1, ..., W_N]` with `W_l` of shape
`[n_l, n_{l-1}]`, `n_0 = d_in`, `n_N = d_out`, hidden widths `n_l = width`.
Shapes and loss follow `docs/conventions.md`; the theory of this model is
`theory/deep_linear.py`.

Initialisations:
  * `'random'`: `W_l ~ N(0, scale^2 / n_{l-1})` entrywise.
  * `'orthogonal'`: `W_l = scale * Q_l` with `Q_l` a random (semi-)orthogonal
    `[n_l, n_{l-1}]` matrix (orthonormal rows or columns). With every width
    equal to `d_in = d_out` the end-to-end map is `scale^N` times an
    orthogonal matrix: all its singular values equal (Saxe et al. 2014's
    orthogonal init, against which the scaled Gaussian's spread with depth).
  * `'aligned'`: the balanced, decoupled initialisation of Saxe et al. (2014):
    `W_1 = R_1 diag(a) V^T`, `W_l = R_l diag(a) R_{l-1}^T`,
    `W_N = U diag(a) R_{N-1}^T`, `a = u0^(1/N)`, with random orthonormal
    `R_l: [width, M]`, so that `W_N ... W_1 = U diag(u0) V^T` and every mode
    follows `theory.deep_linear.mode_strength` exactly under gradient flow.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from dynamics.linalg import eigh, orthonormal

Params = list  # [W_1, ..., W_N]


def layer_sizes(d_in: int, d_out: int, width: int, depth: int) -> list[int]:
  return [d_in] + [width] * (depth - 1) + [d_out]


def init_random(key: jax.Array, sizes: list[int], scale: ArrayLike = 1.0,
                dtype=jnp.float32) -> Params:
  """`W_l ~ N(0, scale^2 / fan_in)`; `sizes = [d_in, n_1, ..., d_out]`."""
  keys = jax.random.split(key, len(sizes) - 1)
  return [scale * jax.random.normal(k, (n_out, n_in), dtype) / jnp.sqrt(n_in)
          for k, n_in, n_out in zip(keys, sizes[:-1], sizes[1:])]


def init_orthogonal(key: jax.Array, sizes: list[int], scale: ArrayLike = 1.0,
                    dtype=jnp.float32) -> Params:
  """`W_l = scale * Q_l`, `Q_l: [n_out, n_in]` with orthonormal rows or
  columns (`jax.nn.initializers.orthogonal`); `sizes = [d_in, n_1, ..., d_out]`."""
  keys = jax.random.split(key, len(sizes) - 1)
  draw = jax.nn.initializers.orthogonal()
  return [scale * draw(k, (n_out, n_in), dtype)
          for k, n_in, n_out in zip(keys, sizes[:-1], sizes[1:])]


def init_aligned(key: jax.Array, sizes: list[int], u0: ArrayLike,
                 u_modes: jax.Array, v_modes: jax.Array) -> Params:
  """Balanced decoupled init with end-to-end map `U diag(u0) V^T`.

  Args:
    key: draws the hidden-layer rotations `R_l`.
    sizes: `[d_in, width, ..., width, d_out]`, every width >= M.
    u0: `[M]` (or scalar) initial mode strengths, >= 0.
    u_modes: `U`, `[d_out, M]`, orthonormal columns.
    v_modes: `V`, `[d_in, M]`, orthonormal columns.
  """
  depth, m, dtype = len(sizes) - 1, u_modes.shape[1], u_modes.dtype
  a = jnp.broadcast_to(jnp.asarray(u0, dtype), (m,)) ** (1.0 / depth)
  keys = jax.random.split(key, max(depth - 1, 1))
  frames = [v_modes] + [orthonormal(k, n, m, dtype)
                        for k, n in zip(keys, sizes[1:-1])] + [u_modes]
  return [(r_out * a) @ r_in.T for r_in, r_out in zip(frames[:-1], frames[1:])]


def apply(params: Params, x: jax.Array) -> jax.Array:
  """`f(x) = W_N ... W_1 x` for `x: [P, d_in]`, returns `[P, d_out]`.

  The product `x W_1^T ... W_N^T` is associated in the order of fewest
  multiply-adds (the matrix-chain order, from the static shapes): layer by layer
  when the samples are few, the weights' product first when `P` exceeds the
  widths (`deep_linear_small`'s 64 samples through 8-16-8: 10,240 against 32,768
  forward FLOPs), which also turns the products with the shared `x` into one GEMM
  over all seeds under `vmap`. The same function, equal to rounding. It is
  computed transposed, `(W_N ... W_1 x^T)^T`: under `vmap` over the weights the
  seeds then fold into the products' rows, where XLA needs no layout copies
  (0.8 M against 0.5 M seed-steps/s a core for `deep_linear_small`,
  `scripts/deep_linear_orders.py`)."""
  return _chain(list(params[::-1]) + [x.T]).T


def _chain(mats: list) -> jax.Array:
  """The product of `mats` in its matrix-chain order (dynamic programming over
  the static shapes; ties keep the left-to-right order)."""
  dims = [mats[0].shape[-2]] + [m.shape[-1] for m in mats]
  n = len(mats)
  cost = {(i, i): 0 for i in range(n)}
  split = {}
  for length in range(2, n + 1):
    for i in range(n - length + 1):
      j = i + length - 1
      cost[i, j], split[i, j] = min(
          (cost[i, k] + cost[k + 1, j] + dims[i] * dims[k + 1] * dims[j + 1], -k)
          for k in range(i, j))
      split[i, j] = -split[i, j]

  def product(i, j):
    if i == j:
      return mats[i]
    k = split[i, j]
    return product(i, k) @ product(k + 1, j)
  return product(0, n - 1)


def statistics(x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """`(Sigma_xx, W*, L*)`: all a full-batch loss of a linear network needs.

  `Sigma_xx = x^T x / P` (docs/conventions.md), `W* = Sigma_yx Sigma_xx^+` the
  least-squares map and `L* = (1/2P) sum ||y - W* x||^2` its loss, computed
  from the samples so that it keeps full relative precision."""
  p = x.shape[0]
  sigma_xx = x.T @ x / p
  lam, q = eigh(sigma_xx)
  inv = jnp.where(lam > lam[-1] * x.shape[1] * jnp.finfo(x.dtype).eps, 1 / lam, 0.0)
  w_star = (y.T @ x / p) @ (q * inv) @ q.T
  return sigma_xx, w_star, 0.5 * jnp.sum((x @ w_star.T - y) ** 2) / p


def stats_loss(params: Params, sigma_xx: jax.Array, w_star: jax.Array,
               loss_star: jax.Array) -> jax.Array:
  """The full-batch loss `(1/2P) sum ||y - W x||^2` from `statistics(x, y)`,

      L = L* + 1/2 tr((W - W*) Sigma_xx (W - W*)^T),   W = W_N ... W_1,

  exact because `W* Sigma_xx = Sigma_yx` (rows of `Sigma_yx` lie in the row
  space of `Sigma_xx`); its gradient in `W` is `W Sigma_xx - Sigma_yx`, the
  sample gradient. A step costs `O(d_in sum(fan_in fan_out))` instead of
  `O(P sum(fan_in fan_out))`. Written around `W*` rather than as
  `1/2 tr Sigma_yy - tr(W Sigma_yx^T) + ...`, whose O(1) terms cancel and leave
  an absolute error of `eps tr Sigma_yy` on a loss that decays far below it.
  Equal to the sample loss to rounding (tested), whitened inputs or not."""
  e = end_to_end(params) - w_star
  return loss_star + 0.5 * jnp.sum((e @ sigma_xx) * e)


def end_to_end(params: Params) -> jax.Array:
  """`W = W_N ... W_1`, `[d_out, d_in]`."""
  w = params[0]
  for layer in params[1:]:
    w = layer @ w
  return w


def mode_strengths(params: Params, u_modes: jax.Array,
                   v_modes: jax.Array) -> jax.Array:
  """`u_i = U[:, i]^T W_N ... W_1 V[:, i]`, shape `[M]`."""
  return jnp.einsum("im,ij,jm->m", u_modes, end_to_end(params), v_modes)


def effective_u0(params: Params, u_modes: jax.Array,
                 v_modes: jax.Array) -> jax.Array:
  """Initial strength of the aligned solution that a small random init joins.

  Depth 2 (Saxe et al. 2014, sec. 3): with `a = W_1 V_i` and `b = W_2^T U_i`,
  the early linear phase `da/dt = s b, db/dt = s a` grows `a + b` as `e^{st}`
  and shrinks `a - b`, so `u = a.b` approaches `||a + b||^2 / 4 e^{2st}`,
  the small-`u` limit of the aligned sigmoid with `u0 = ||a + b||^2 / 4`.
  Depth 1 has no transient: `u0 = U_i^T W V_i`. Depth >= 3 has no such
  reduction and raises.

  Returns:
    `[M]`.
  """
  if len(params) == 1:
    return mode_strengths(params, u_modes, v_modes)
  if len(params) != 2:
    raise ValueError("effective_u0 is defined for depth 1 and 2 only; the "
                     "theory for depth >= 3 needs the aligned init.")
  a, b = params[0] @ v_modes, params[1].T @ u_modes
  return 0.25 * jnp.sum((a + b) ** 2, axis=0)
