"""Feature learning at infinite width: the kernel dynamics of mean-field (muP)
networks with richness `gamma0` (Bordelon & Pehlevan 2022).

The network, depth 2 (one hidden layer of width N, inputs `x: [P, D]`):

    h(x) = W x / sqrt(D),    f(x) = a . h(x) / (gamma0 N),    W_ij, a_i ~ N(0, 1)

trained on `L = 1/(2P) sum_mu (f_mu - y_mu)^2` by the flow `dtheta/dt = -gamma0^2
N grad L` (docs/conventions.md: time `t = lr x steps` for the step `gamma0^2 N
lr` on every parameter). `gamma0 -> 0` is the NTK limit; at larger `gamma0` the
hidden features move by O(gamma0). With `Delta = y - f` and `K = x x^T / D`, the
gradients give, for every width,

    df/dt = (1/P) (H + A K) Delta                       the NTK is H + A K
    dH/dt = (gamma0^2/P) [(K Delta) f^T + f (K Delta)^T]   H = h h^T / N  [P, P]
    dA/dt = (2 gamma0^2/P) Delta . f                      A = |a|^2 / N

closed in `(f, H, A)`: the dynamics are deterministic given their values at
init, which at infinite width are `f = 0`, `H = K`, `A = 1` (the law of large
numbers over the N units). A finite network follows the same equations from its
own `(f, H, A)(0)`, which differ from the limit by O(1/sqrt(N)) per seed. The
memory is that of the state, `P^2 + P + 1` numbers, at every saved time.

One point with `|x|^2 / D = 1`, `y = 1`: `H - A` is conserved, and `s = H + A`
obeys `ds/df = 4 gamma0^2 f / s`, so `s = 2 sqrt(1 + gamma0^2 f^2)` and

    df/dt = 2 (1 - f) sqrt(1 + gamma0^2 f^2)

(tests/theory/test_dmft.py checks the solver against it). Deeper networks and
the nonlinear single-site process are not implemented here yet.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from theory import _checks, _ode


def _field(t, state, args):
  k, y, g2 = args
  f, h, a = state["f"], state["H"], state["A"]
  p = y.shape[0]
  delta = y - f
  kd = k @ delta
  return {"f": (h @ delta + a * kd) / p,
          "H": g2 / p * (jnp.outer(kd, f) + jnp.outer(f, kd)),
          "A": 2 * g2 / p * jnp.dot(delta, f)}


def deep_linear_flow(depth: int, gamma0: ArrayLike, x: ArrayLike, y: ArrayLike,
                     t: ArrayLike, *, init: dict | None = None, rtol: float = 1e-10,
                     atol: float = 1e-12) -> dict:
  """The kernel dynamics of the module docstring's network at richness
  `gamma0`, at the times `t`, by diffrax's Tsit5 (adaptive).

  Args:
    depth: weight layers; 2 (one hidden layer) is implemented.
    gamma0: the richness (>= 0; 0 is the NTK limit). Traceable: vmap over it.
    x: `[P, D]` inputs (the first layer divides by sqrt(D)). y: `[P]` targets.
    t: `[L]` non-decreasing times from 0 (`lr x steps`, docs/conventions.md).
    init: the state at t = 0, `{"f": [P], "H": [P, P], "A": []}` (a finite
      network's own); default the infinite-width one, `f = 0, H = K, A = 1`.
    rtol, atol: the step-size controller's tolerances.

  Returns:
    `{"f": [L, P], "H": [L, P, P], "A": [L], "ntk": [L, P, P]}`: the outputs on
    the training points, the hidden features' kernel `h h^T / N`, the readout's
    `|a|^2 / N` and the NTK `H + A K`. NaN where the solver failed (past 1e6
    steps), never a stand-in.
  """
  if depth != 2:
    raise ValueError(f"`depth` must be 2 (one hidden layer); deeper networks are not "
                     f"implemented yet, got {depth!r}.")
  _checks.check_finite_nonnegative("gamma0", gamma0)
  _checks.check_finite("x", x)
  _checks.check_ndim("x", x, (2,))
  _checks.check_finite("y", y)
  _checks.check_ndim("y", y, (1,))
  if np.shape(y)[0] != np.shape(x)[0]:
    raise ValueError(f"`y` must have one target per row of `x` ({np.shape(x)[0]}), "
                     f"got {np.shape(y)[0]}.")
  _ode.check_times(t)
  dtype = jnp.result_type(float)
  x, y = jnp.asarray(x, dtype), jnp.asarray(y, dtype)
  k = x @ x.T / x.shape[1]
  p = y.shape[0]
  if init is None:
    init = {"f": jnp.zeros(p, dtype), "H": k, "A": jnp.ones((), dtype)}
  else:
    shapes = {"f": (p,), "H": (p, p), "A": ()}
    if not isinstance(init, dict) or set(init) != set(shapes):
      raise ValueError(f"`init` must be a dict with keys {sorted(shapes)}, got {init!r}.")
    for name, shape in shapes.items():
      if np.shape(init[name]) != shape:
        raise ValueError(f"`init['{name}']` must have shape {shape}, got "
                         f"{np.shape(init[name])}.")
    init = {n: jnp.asarray(v, dtype) for n, v in init.items()}
  t = jnp.asarray(t, dtype)
  g2 = jnp.asarray(gamma0, dtype) ** 2
  out = _ode.solve(_field, init, t, (k, y, g2), rtol=rtol, atol=atol)
  return {**out, "ntk": out["H"] + out["A"][:, None, None] * k}


def single_point_time(f: ArrayLike, gamma0: ArrayLike) -> jax.Array:
  """The time at which the one-point network (`|x|^2/D = 1`, `y = 1`, module
  docstring) reaches output `f` in `[0, 1)`: the closed form of

      t(f) = int_0^f du / (2 (1 - u) sqrt(1 + gamma0^2 u^2)),

  by the antiderivative in `primitive` below (`c = sqrt(1 + gamma0^2)`); at
  `gamma0 = 0` it is `-log(1 - f) / 2`. jit- and vmap-able."""
  f = jnp.asarray(f, jnp.result_type(float))
  g = jnp.asarray(gamma0, f.dtype)
  c = jnp.sqrt(1 + g**2)
  # int du / ((1 - u) sqrt(1 + g^2 u^2)): with v = 1 - u, the standard form
  # int dv / (v sqrt(a v^2 + b v + c^2)) = -(1/c) log[(2c^2 + b v + 2c sqrt(.)) / v],
  # a = g^2, b = -2 g^2, sqrt(.) = sqrt(1 + g^2 (1 - v)^2)
  def primitive(v):
    root = jnp.sqrt(1 + g**2 * (1 - v) ** 2)
    return -jnp.log((2 * c**2 - 2 * g**2 * v + 2 * c * root) / v) / c
  return (primitive(jnp.ones_like(f)) - primitive(1 - f)) / 2
