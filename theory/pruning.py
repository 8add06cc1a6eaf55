r"""Pruning measures from gradient flow (Lubana & Dick, ICLR 2021).

Under gradient flow `dtheta/dt = -g`, `g = grad L`, `H = hess L` (conventions:
`docs/conventions.md`, time `t = lr * steps`), three identities hold exactly:

    d||theta||^2/dt = -2 theta . g
    dL/dt           = -||g||^2
    d||g||^2/dt     = -2 g^T H g                                  (flow_rates)

Removing a set of parameters is the jump `delta = -theta * (1 - mask)`. To
first order it changes the loss by `g . delta = -sum_removed theta_i g_i` and
the squared gradient norm by `2 g^T H delta = -2 sum_removed theta_i (H g)_i`,
which is where the measures come from (`importance`):

    'magnitude'          |theta|            (small weights, small ||theta||^2 rate)
    'loss_preservation'  |theta * g|        (SNIP: first-order loss change)
    'gradient_norm'      theta * (H g)      (signed; GraSP scores -theta * (H g))
    'gradient_norm_abs'  |theta * (H g)|    (first-order change of ||g||^2)

`prune_mask(..., keep='highest')` removes the lowest scores. For
`'gradient_norm'` that removes the most negative `theta (H g)`, the parameters
whose removal *raises* `||g||^2` most: GraSP's choice (it removes the highest
`-theta (H g)`). `keep='lowest'` removes the highest scores instead.

Hessian-vector products are forward-over-reverse (`jax.jvp` of `jax.grad`);
the third derivative in `predicted_change` is one more forward pass. No
Hessian is ever materialised. `loss_fn` is any function of a parameter pytree
returning a scalar (data closed over).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from theory import _checks

MEASURES = ("magnitude", "loss_preservation", "gradient_norm", "gradient_norm_abs")
SCOPES = ("global", "layer")
KEEPS = ("highest", "lowest")

_map = jax.tree_util.tree_map


def _dot(a, b) -> jax.Array:
  return sum(jnp.vdot(x, y) for x, y in zip(jax.tree_util.tree_leaves(a),
                                            jax.tree_util.tree_leaves(b)))


def hvp(loss_fn: Callable, params, v):
  """`H v` by forward-over-reverse differentiation, a pytree like `params`."""
  return jax.jvp(jax.grad(loss_fn), (params,), (v,))[1]


def importance(loss_fn: Callable, params, measure: str):
  """Scores shaped like `params` for `measure` in `MEASURES` (module docstring)."""
  if not isinstance(measure, str) or measure not in MEASURES:
    raise ValueError(f"Unknown `measure` {measure!r}; known: {', '.join(MEASURES)}.")
  if measure == "magnitude":
    return _map(jnp.abs, params)
  g = jax.grad(loss_fn)(params)
  if measure == "loss_preservation":
    return _map(lambda p, g_: jnp.abs(p * g_), params, g)
  hg = hvp(loss_fn, params, g)
  score = _map(lambda p, h: p * h, params, hg)
  return score if measure == "gradient_norm" else _map(jnp.abs, score)


def _check_fraction(fraction) -> None:
  v = _checks.real("fraction", fraction)
  if v is not None and (v.ndim or not np.isfinite(v) or not 0 <= v <= 1):
    raise ValueError(f"`fraction` must be a number in [0, 1], got {fraction!r}.")


def _mask_flat(flat: jax.Array, fraction, keep: str) -> jax.Array:
  """0 at the `round(fraction * n)` lowest (`keep='highest'`) or highest entries;
  ties go by position (a stable sort), so the result is deterministic."""
  n = flat.shape[0]
  k = jnp.round(jnp.asarray(fraction, jnp.result_type(float)) * n).astype(jnp.int32)
  order = jnp.argsort(flat if keep == "highest" else -flat, stable=True)
  rank = jnp.zeros(n, jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
  return (rank >= k).astype(flat.dtype)


def prune_mask(scores, fraction, scope: str = "global", keep: str = "highest"):
  """0/1 masks shaped like `scores` removing exactly `round(fraction * n)` entries.

  Args:
    scores: a pytree of arrays (e.g. from `importance`).
    fraction: in [0, 1]; may be traced (vmapped over fractions).
    scope: `'global'` ranks all entries together (`n` = all of them);
      `'layer'` ranks every leaf on its own (`n` = the leaf's size).
    keep: `'highest'` keeps the highest scores (removes the lowest);
      `'lowest'` the opposite.
  """
  if scope not in SCOPES:
    raise ValueError(f"Unknown `scope` {scope!r}; known: {', '.join(SCOPES)}.")
  if keep not in KEEPS:
    raise ValueError(f"Unknown `keep` {keep!r}; known: {', '.join(KEEPS)}.")
  _check_fraction(fraction)
  leaves, treedef = jax.tree_util.tree_flatten(scores)
  if not leaves:
    raise ValueError("`scores` has no array leaves.")
  for leaf in leaves:  # a NaN would rank as the highest score
    v = _checks.real("scores", leaf)
    if v is not None and np.any(np.isnan(v)):
      raise ValueError("`scores` contains NaN; ranking it would be arbitrary.")
  if scope == "layer":
    masks = [_mask_flat(jnp.ravel(l), fraction, keep).reshape(jnp.shape(l)) for l in leaves]
  else:
    flat = _mask_flat(jnp.concatenate([jnp.ravel(l) for l in leaves]), fraction, keep)
    sizes = np.cumsum([np.size(l) for l in leaves])[:-1]
    masks = [m.reshape(jnp.shape(l)) for m, l in zip(jnp.split(flat, sizes), leaves)]
  return jax.tree_util.tree_unflatten(treedef, masks)


def flow_rates(loss_fn: Callable, params) -> dict:
  """`{'norm': -2 theta.g, 'loss': -||g||^2, 'grad_norm': -2 g^T H g}`: the
  exact time derivatives of `||theta||^2`, `L` and `||g||^2` under gradient flow."""
  g = jax.grad(loss_fn)(params)
  return {"norm": -2 * _dot(params, g), "loss": -_dot(g, g),
          "grad_norm": -2 * _dot(g, hvp(loss_fn, params, g))}


def _check_mask(params, mask) -> None:
  p_def, m_def = jax.tree_util.tree_structure(params), jax.tree_util.tree_structure(mask)
  if p_def != m_def:
    raise ValueError(f"`mask` must have the tree structure of `params`: {m_def} vs {p_def}.")
  for p, m in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(mask)):
    if jnp.shape(p) != jnp.shape(m):
      raise ValueError(f"`mask` leaf of shape {jnp.shape(m)} does not match the "
                       f"parameter of shape {jnp.shape(p)}.")


def predicted_change(loss_fn: Callable, params, mask, order: int = 2) -> dict:
  """Taylor prediction of what setting the parameters outside `mask` to 0 does.

  With `delta = -theta * (1 - mask)`:

    loss:      g.delta + 1/2 delta^T H delta                       (order 2)
    ||g||^2:   2 g^T H delta + delta^T (H^2 + D^3L[g]) delta       (order 2)

  where `||g||^2` is the full gradient's at the pruned point and
  `D^3L[g] delta delta = d/de (delta^T H(theta + e g) delta)`; order 1 keeps
  the first terms. Returns `{'loss': ..., 'grad_norm': ...}` (scalars).
  """
  if isinstance(order, bool) or order not in (1, 2):
    raise ValueError(f"`order` must be 1 or 2, got {order!r}.")
  _check_mask(params, mask)
  g = jax.grad(loss_fn)(params)
  delta = _map(lambda p, m: -p * (1 - m), params, mask)
  h_delta = hvp(loss_fn, params, delta)
  d_loss = _dot(g, delta)
  d_gn = 2 * _dot(g, h_delta)
  if order == 2:
    d_loss = d_loss + 0.5 * _dot(delta, h_delta)
    # D^3L[g, delta, delta]: derivative of (H delta) along g, dotted with delta
    d3 = jax.jvp(lambda p: hvp(loss_fn, p, delta), (params,), (g,))[1]
    d_gn = d_gn + _dot(h_delta, h_delta) + _dot(delta, d3)
  return {"loss": d_loss, "grad_norm": d_gn}
