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


def ntk(params: list, x1: jax.Array, x2: jax.Array | None = None, *,
        activation: str | Callable = "relu", parameterization: str = "ntk",
        w_std: float = 1.0, b_std: float = 0.0) -> jax.Array:
  """The empirical NTK `J(x1) J(x2)^T` of this network (`out=None`) without
  the parameter Jacobian. A layer `h^{l+1} = s_l W^l a^l + c_l b^l` has
  gradients `s_l delta^{l+1} (a^l)^T` and `c_l delta^{l+1}`, with
  `delta^{l+1} = df/dh^{l+1}`, so

      Theta(x, x') = sum_l (s_l^2 a^l.a'^l + c_l^2) (delta^{l+1}.delta'^{l+1})

  (`s_l = w_std / sqrt(n_l)`, `c_l = b_std` in `'ntk'`; `1` and `1` in
  `'standard'`; the last `s` is `w_std / n_{L-1}` in `'mean_field'`).
  `O(n1 n2 sum n_l)` work and `O((n1 + n2) sum n_l)` memory against the
  Jacobian's `O((n1 + n2) P)`; equal to `theory.ntk.empirical_ntk(apply,
  ...)` to rounding (tests/dynamics/test_mlp.py)."""
  phi = _phi(activation)
  _check((), parameterization)
  if params[-1]["W"].ndim != 1:
    raise ValueError("`mlp.ntk` needs a scalar output (`out=None` at init).")

  def features(x):
    """Each layer's input `a^l` and the output's gradient `delta^{l+1}`
    with respect to its pre-activation, `[n, n_{l+1}]` (`[n]` at the end)."""
    def forward(eps):
      h, inputs = x, []
      for l, layer in enumerate(params):
        a = phi(h) if l else h
        inputs.append(a)
        if parameterization == "standard":
          h = a @ layer["W"].T + layer.get("b", 0.0)
        else:
          n_in = layer["W"].shape[-1]
          last = l == len(params) - 1
          scale = w_std / (n_in if last and parameterization == "mean_field" else n_in**0.5)
          h = scale * a @ layer["W"].T + b_std * layer.get("b", 0.0)
        h = h + eps[l]
      return h.sum(), inputs

    x = jnp.asarray(x)
    zeros = [jnp.zeros((x.shape[0],) + layer["W"].shape[:-1], x.dtype) for layer in params]
    deltas, inputs = jax.grad(forward, has_aux=True)(zeros)
    return inputs, deltas

  (a1, d1) = features(x1)
  (a2, d2) = (a1, d1) if x2 is None else features(x2)
  theta = 0.0
  for l, layer in enumerate(params):
    n_in = layer["W"].shape[-1]
    last = l == len(params) - 1
    if parameterization == "standard":
      s2, c2 = 1.0, 1.0 if "b" in layer else 0.0
    else:
      s2 = w_std**2 / (n_in**2 if last and parameterization == "mean_field" else n_in)
      c2 = b_std**2 if "b" in layer else 0.0
    dd = d1[l] @ d2[l].T if d1[l].ndim == 2 else jnp.outer(d1[l], d2[l])
    theta = theta + (s2 * a1[l] @ a2[l].T + c2) * dd
  return theta
