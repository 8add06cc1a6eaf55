r"""Two-layer ReLU network `Dense(m) -> ReLU -> Dense(k)` as an `(init, apply)` pair.

Parameters `{'W': [m, d], 'b': [m], 'v': [m] or [m, k], 'b_out': [] or [k]}`.
`parameterization` chooses where the scale lives (Jacot et al. 2018; Yang &
Hu 2021):

  * `'ntk'` (neural-tangents' `stax.Dense(..., parameterization='ntk')`):
    every parameter standard normal,
    `h = (w_std/sqrt(d)) W x + b_std b`, `f = (w_std/sqrt(m)) v.relu(h) + b_std b_out`.
    Its infinite-width kernels are `theory.ntk.relu_nngp` / `relu_ntk`.
  * `'standard'`: the same function at init with the scales in the init,
    `W ~ N(0, w_std^2/d)`, `b ~ N(0, b_std^2)`, `v ~ N(0, w_std^2/m)`,
    `b_out ~ N(0, b_std^2)`, `f = v.relu(W x + b) + b_out`. Same NNGP; under
    gradient descent the layers learn at other rates.
  * `'mean_field'` (muP-style): as `'ntk'` but the output is scaled by
    `w_std/m`, `f = (w_std/m) v.relu(h) + b_std b_out`. The NTK then vanishes
    as `1/m`, so the time is rescaled by `m` (train with `lr * m`), and the
    kernel moves by O(1) during training: features are learned.

`bias=False` drops `b` and `b_out`. Conventions: `docs/conventions.md`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

PARAMETERIZATIONS = ("ntk", "standard", "mean_field")


def init(key: jax.Array, d: int, width: int, out: int | None = None, *,
         parameterization: str = "ntk", w_std: float = 1.0,
         b_std: float = 0.0, bias: bool = True, dtype=jnp.float32) -> dict:
  """Parameters at init; `out=None` gives a scalar output (`v: [m]`)."""
  if parameterization not in PARAMETERIZATIONS:
    raise ValueError(f"`parameterization` must be one of {PARAMETERIZATIONS}, "
                     f"got {parameterization!r}.")
  k_w, k_b, k_v, k_o = jax.random.split(key, 4)
  v_shape = (width,) if out is None else (width, out)
  o_shape = () if out is None else (out,)
  params = {"W": jax.random.normal(k_w, (width, d), dtype),
            "v": jax.random.normal(k_v, v_shape, dtype)}
  if bias:
    params["b"] = jax.random.normal(k_b, (width,), dtype)
    params["b_out"] = jax.random.normal(k_o, o_shape, dtype)
  if parameterization == "standard":
    params["W"] = params["W"] * w_std / jnp.sqrt(d)
    params["v"] = params["v"] * w_std / jnp.sqrt(width)
    if bias:
      params["b"], params["b_out"] = params["b"] * b_std, params["b_out"] * b_std
  return params


def apply(params: dict, x: jax.Array, *, parameterization: str = "ntk",
          w_std: float = 1.0, b_std: float = 0.0) -> jax.Array:
  """`f(x)` for `x: [n, d]`; returns `[n]` (scalar output) or `[n, k]`.

  Computed with the units in the rows, `h^T = W x^T: [m, n]`: the same function
  as `relu(x W^T) v`, with the products in the layout XLA's CPU GEMMs take
  without copies (`scripts/bench.py relu_train`: 716-732 -> 1,252-1,294
  seed-steps/s, docs/performance.md)."""
  m, d = params["W"].shape
  b, b_out = params.get("b", 0.0), params.get("b_out", 0.0)
  b = jnp.asarray(b)[..., None] if jnp.ndim(b) else b      # [m] -> [m, 1]
  v = params["v"]
  if parameterization == "standard":
    return (v.T @ jax.nn.relu(params["W"] @ x.T + b)).T + b_out
  h = w_std * params["W"] @ x.T / jnp.sqrt(d) + b_std * b
  scale = w_std / (m if parameterization == "mean_field" else jnp.sqrt(m))
  return scale * (v.T @ jax.nn.relu(h)).T + b_std * b_out
