r"""Fully connected network of any depth as an `(init, apply)` pair.

`widths = (n_1, ..., n_{L-1})` hidden layers between the input `n_0 = d` and the
output `n_L = out`. Parameters are a list of layers `[{'W': [n_{l+1}, n_l],
'b': [n_{l+1}]}, ...]` (`b` only with `bias=True`); with `out=None` the last
layer is `{'W': [n_{L-1}], 'b': []}` and `f(x)` is `[n]`, not `[n, 1]`. With `phi` the activation (none before the first layer, none
after the last), `parameterization` chooses where the scale lives, as in
`dynamics.models.relu_net` (Jacot et al. 2018; Yang & Hu 2021):

  * `'ntk'`: every parameter standard normal,
    `h^{l+1} = (w_std / sqrt(n_l)) W^l phi(h^l) + b_std b^l`.
  * `'standard'`: the same function at init with the scales in the init,
    `W^l ~ N(0, w_std^2 / n_l)`, `b^l ~ N(0, b_std^2)`, `h^{l+1} = W^l phi(h^l) + b^l`.
  * `'mean_field'`: as `'ntk'` with the last layer scaled by `w_std / n_{L-1}`
    instead of `w_std / sqrt(n_{L-1})`: the NTK vanishes as `1 / n_{L-1}`
    (train with `lr * n_{L-1}`) and the features move by O(1).

At init, over the random parameters, the output of a network with one hidden
layer is `N(0, q)` given `x`, with `q = w_std^2 E_{z ~ N(0, q1)}[phi(z)^2] +
b_std^2` and `q1 = w_std^2 |x|^2 / d + b_std^2` (`'mean_field'`: the first term
divided by `n_1`); deeper networks follow the same recursion layer by layer,
exactly for `relu` and `linear` (`E[phi(z)^2]` is linear in the variance) and
up to O(1/width) otherwise (the NNGP limit). `'erf'` is `erf(z)`, `'gelu'`
the exact (erf) GELU. Conventions: `docs/conventions.md`.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp

PARAMETERIZATIONS = ("ntk", "standard", "mean_field")
ACTIVATIONS = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "erf": jax.scipy.special.erf,
    "gelu": lambda z: jax.nn.gelu(z, approximate=False),
    "linear": lambda z: z,
}


def _phi(phi: str | Callable) -> Callable:
  """The activation named `phi` (one of `ACTIVATIONS`), or `phi` itself."""
  if callable(phi):
    return phi
  if phi not in ACTIVATIONS:
    raise ValueError(f"`activation` must be one of {tuple(ACTIVATIONS)} or a callable, "
                     f"got {phi!r}.")
  return ACTIVATIONS[phi]


def _check(widths, parameterization):
  if parameterization not in PARAMETERIZATIONS:
    raise ValueError(f"`parameterization` must be one of {PARAMETERIZATIONS}, "
                     f"got {parameterization!r}.")
  if isinstance(widths, int) or any(not isinstance(w, int) or isinstance(w, bool) or w < 1
                                    for w in widths):
    raise ValueError(f"`widths` must be a sequence of positive integers (the hidden "
                     f"layers), got {widths!r}.")


def init(key: jax.Array, d: int, widths: Sequence[int], out: int | None = None, *,
         parameterization: str = "ntk", w_std: float = 1.0, b_std: float = 0.0,
         bias: bool = True, dtype=jnp.float32) -> list:
  """Parameters at init for `d` inputs, hidden `widths` and `out` outputs."""
  _check(widths, parameterization)
  if not isinstance(d, int) or d < 1:
    raise ValueError(f"`d` must be a positive integer, got {d!r}.")
  sizes = (d, *widths, out)
  params = []
  for k, n_in, n_out in zip(jax.random.split(key, len(sizes) - 1), sizes[:-1], sizes[1:]):
    k_w, k_b = jax.random.split(k)
    shape = () if n_out is None else (n_out,)  # out=None: a scalar output
    w = jax.random.normal(k_w, shape + (n_in,), dtype)
    b = jax.random.normal(k_b, shape, dtype)
    if parameterization == "standard":
      w, b = w * w_std / jnp.sqrt(n_in), b * b_std
    params.append({"W": w, "b": b} if bias else {"W": w})
  return params


def apply(params: list, x: jax.Array, *, activation: str | Callable = "relu",
          parameterization: str = "ntk", w_std: float = 1.0,
          b_std: float = 0.0) -> jax.Array:
  """`f(x)` for `x: [n, d]`: `[n, out]`, or `[n]` for `out=None`."""
  phi = _phi(activation)
  h = x
  for l, layer in enumerate(params):
    if l:
      h = phi(h)
    n_in = layer["W"].shape[-1]
    b = layer.get("b", 0.0)
    if parameterization == "standard":
      h = h @ layer["W"].T + b
    else:
      last = l == len(params) - 1
      scale = w_std / (n_in if last and parameterization == "mean_field" else jnp.sqrt(n_in))
      h = scale * h @ layer["W"].T + b_std * b
  return h
