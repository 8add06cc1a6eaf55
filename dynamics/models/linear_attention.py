r"""One layer of linear self-attention on in-context regression prompts.

Tokens are the columns of `Z = [[x_1 .. x_N, x_q], [y_1 .. y_N, 0]]`,
`[d + 1, N + 1]`, and the layer is (von Oswald et al. 2023)

    f(Z) = Z + W_PV Z M Z^T W_KQ Z / N,      M = diag(I_N, 0),

so the query is neither its own key nor its own value. The prediction is the
label entry of the query column, `y_hat = f(Z)[d, N]`. Writing `S = Z M Z^T / N`
(the context's second moments) and `z_q = (x_q, 0)`,

    y_hat = W_PV[d, :] S W_KQ z_q,

which is what `predict` computes, `O(N d^2)` per prompt; `forward` is the full
layer as written. With `G = W_KQ[:d, :d]`, `u = W_PV[d, d]`, `c = W_PV[d, :d]`,
`g_y = W_KQ[d, :d]` the prediction is `x_q^T Gamma h` (`h = (1/N) sum y_i x_i`,
the theory's predictor, `theory/linear_attention.py`) plus the terms
`c^T S_xx G x_q + u S_yy g_y^T x_q`, with `Gamma = u G^T + g_y c^T`
(`effective_gamma`).

Parameters: merged `{'w_kq', 'w_pv'}`, or separate `{'w_k', 'w_q', 'w_v',
'w_p'}` with `W_KQ = W_K^T W_Q` and `W_PV = W_P W_V` (`merged` maps one to
the other); every matrix is `[d + 1, d + 1]`. Inits:
  * `'random'`: entries `N(0, scale^2 / (d + 1))` (conventions: `scale^2 / fan_in`).
  * `'aligned'` (merged only): `W_KQ = [[g0 I_d, 0], [0, 0]]`,
    `W_PV = [[0, 0], [0, u0]]`, which gradient flow keeps aligned
    (`theory.linear_attention.gradient_flow`).
Loss (docs/conventions.md): `L = (1/2B) sum_prompts (y_hat - y_q)^2`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

FORMS = ("merged", "separate")
INITS = ("random", "aligned")


def tokens(x: jax.Array, y: jax.Array, x_q: jax.Array) -> jax.Array:
  """`Z`, `[..., d + 1, N + 1]`, from `x: [..., N, d]`, `y: [..., N]`, `x_q: [..., d]`."""
  ctx = jnp.concatenate([x, y[..., None]], axis=-1)                # [..., N, d+1]
  query = jnp.concatenate([x_q, jnp.zeros_like(x_q[..., :1])], -1)  # [..., d+1]
  return jnp.swapaxes(jnp.concatenate([ctx, query[..., None, :]], -2), -1, -2)


def merged(params: dict) -> dict:
  """`{'w_kq', 'w_pv'}` of either form."""
  if "w_kq" in params:
    return params
  return {"w_kq": params["w_k"].T @ params["w_q"], "w_pv": params["w_p"] @ params["w_v"]}


def init(key: jax.Array, d: int, *, form: str = "merged", name: str = "random",
         scale=0.1, u0=0.0, g0=0.0, dtype=jnp.float32) -> dict:
  """Parameters of the module docstring; `scale` may be traced, as may `u0`, `g0`."""
  if form not in FORMS:
    raise ValueError(f"Unknown form {form!r}; known: {FORMS}.")
  if name == "aligned":
    if form != "merged":
      raise ValueError("The aligned init is defined for form='merged' only.")
    w_kq = jnp.zeros((d + 1, d + 1), dtype).at[:d, :d].set(g0 * jnp.eye(d, dtype=dtype))
    w_pv = jnp.zeros((d + 1, d + 1), dtype).at[d, d].set(u0)
    return {"w_kq": w_kq, "w_pv": w_pv}
  if name != "random":
    raise ValueError(f"Unknown init {name!r}; known: {INITS}.")
  names = ("w_kq", "w_pv") if form == "merged" else ("w_k", "w_q", "w_v", "w_p")
  keys = jax.random.split(key, len(names))
  std = scale / jnp.sqrt(d + 1.0)
  return {n: std * jax.random.normal(k, (d + 1, d + 1), dtype) for n, k in zip(names, keys)}


def forward(params: dict, z: jax.Array) -> jax.Array:
  """The layer as written, `Z + W_PV Z M Z^T W_KQ Z / N`, for `z: [d+1, N+1]`."""
  p = merged(params)
  n = z.shape[-1] - 1
  mask = jnp.ones(n + 1, z.dtype).at[n].set(0.0)
  return z + p["w_pv"] @ (z * mask) @ z.T @ p["w_kq"] @ z / n


def predict(params: dict, x: jax.Array, y: jax.Array, x_q: jax.Array) -> jax.Array:
  """`y_hat = W_PV[d, :] S W_KQ z_q` for prompts `x: [B, N, d]`, `y: [B, N]`,
  `x_q: [B, d]`; returns `[B]`. Equals `forward(params, tokens(...))[d, N]`."""
  p = merged(params)
  d = x.shape[-1]
  ctx = jnp.concatenate([x, y[..., None]], axis=-1)                  # [B, N, d+1]
  k = x_q @ p["w_kq"][:, :d].T                                       # [B, d+1]
  # W_PV[d,:] S k = (1/N) sum_i (W_PV[d,:] . z_i)(z_i . k)
  return jnp.einsum("bn,bn->b", ctx @ p["w_pv"][d], jnp.einsum("bnj,bj->bn", ctx, k)) / x.shape[-2]


def predict_moments(params: dict, e: jax.Array, x_q: jax.Array) -> jax.Array:
  """`predict` from the context's moments `e = S: [B, d+1, d+1]`
  (`icl_regression.sample_moments`) and `x_q: [B, d]`: `W_PV[d, :] S W_KQ z_q`,
  `O(d^2)` per prompt whatever N."""
  p = merged(params)
  d = x_q.shape[-1]
  k = x_q @ p["w_kq"][:, :d].T                                       # [B, d+1]
  return jnp.einsum("bj,bj->b", e @ p["w_pv"][d], k)  # e symmetric: (W_PV[d] S) . k


def versus_gamma(params: dict, e: jax.Array, x_q: jax.Array, gamma: jax.Array) -> dict:
  """The layer against the predictor `x_q^T Gamma h` on prompts given as moments
  (`e: [B, d+1, d+1]`, `h = e[:, :d, d]`): `'pred_rel_diff'`, `||y_hat - y_Gamma|| /
  ||y_Gamma||`, and `'sens_cos'`, the prompts' mean cosine between the query
  sensitivities `d y_hat / d x_q = (W_PV[d, :] S) W_KQ[:, :d]` (`y_hat` is linear
  in `x_q`) and `Gamma h` (von Oswald et al. 2023)."""
  p = merged(params)
  d = x_q.shape[-1]
  s, s_ref = (e @ p["w_pv"][d]) @ p["w_kq"][:, :d], e[:, :d, d] @ gamma.T  # e symmetric
  y, y_ref = jnp.sum(s * x_q, -1), jnp.sum(s_ref * x_q, -1)
  norm = lambda a: jnp.linalg.norm(a, axis=-1)
  return {"pred_rel_diff": norm(y - y_ref) / norm(y_ref),
          "sens_cos": jnp.mean(jnp.sum(s * s_ref, -1) / (norm(s) * norm(s_ref)))}


def effective_gamma(params: dict) -> jax.Array:
  """`Gamma = u G^T + g_y c^T`, `[d, d]`: the coefficient of `x_q^T Gamma h`."""
  p = merged(params)
  d = p["w_kq"].shape[0] - 1
  G, g_y = p["w_kq"][:d, :d], p["w_kq"][d, :d]
  u, c = p["w_pv"][d, d], p["w_pv"][d, :d]
  return u * G.T + jnp.outer(g_y, c)


def loss(params: dict, x, y, x_q, y_q) -> jax.Array:
  """`(1/2B) sum (y_hat - y_q)^2` over a batch of prompts."""
  return 0.5 * jnp.mean((predict(params, x, y, x_q) - y_q) ** 2)


def loss_moments(params: dict, e, x_q, y_q) -> jax.Array:
  """`loss` on prompts given as moments (`predict_moments`)."""
  return 0.5 * jnp.mean((predict_moments(params, e, x_q) - y_q) ** 2)
