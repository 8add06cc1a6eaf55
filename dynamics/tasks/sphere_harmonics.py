"""Inputs uniform on the sphere and a target of chosen spectral content.

`x: [n, d]` uniform on the sphere of radius `sqrt(d)` (`|x|^2 = d`,
`theory.ntk.mlp_kernel`'s convention). The target is a sum of degree-`l`
spherical harmonics, `l` in `degrees`, each a combination of zonal functions
around `P` random unit directions `u_j` (shared by the degrees):

    f(x) = sum_l sum_j c_lj sqrt(m_l) P_l(u_j . x / sqrt(d)),

`P_l` the Gegenbauer polynomial with `P_l(1) = 1` (`theory.learning_curves.
gegenbauer`), `m_l` the degree's multiplicity. By the addition theorem
(`E_x[P_l(x.u) P_l(x.w)] = P_l(u.w) / m_l`) the degree-`l` part has power
`E_x f_l(x)^2 = c_l^T P_l(U U^T) c_l`; the Gaussian `c_l` are scaled so that it
is exactly `powers[l]` (the theory's target power per degree). Conventions:
`docs/conventions.md`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from theory import ntk
from theory.learning_curves import gegenbauer, multiplicity, sphere_spectrum


def sphere(key: jax.Array, n: int, d: int, dtype=jnp.float32) -> jax.Array:
  """`[n, d]` uniform on the sphere of radius `sqrt(d)`."""
  x = jax.random.normal(key, (n, d), dtype)
  return x / jnp.linalg.norm(x, axis=1, keepdims=True) * jnp.sqrt(jnp.asarray(d, dtype))


def draw_target(key: jax.Array, d: int, degrees, powers, num_directions: int,
                dtype=jnp.float32) -> dict:
  """`{"u": [P, d] unit directions, "c": [max_degree + 1, P]}`: the target of
  the module docstring with power `powers[i]` in degree `degrees[i]` (zero
  rows for the other degrees)."""
  top = max(degrees)
  k_u, k_c = jax.random.split(key)
  with jax.enable_x64(True):  # the normalisation in float64, then cast
    u = np.array(jax.random.normal(k_u, (num_directions, d), jnp.float64))
    u = u / np.linalg.norm(u, axis=1, keepdims=True)
    g = np.asarray(jax.random.normal(k_c, (len(degrees), num_directions), jnp.float64))
    gram = np.asarray(gegenbauer(u @ u.T, top, d))
  c = np.zeros((top + 1, num_directions))
  for i, (l, p) in enumerate(zip(degrees, powers)):
    c[l] = g[i] * np.sqrt(p / (g[i] @ gram[l] @ g[i]))
  return {"u": jnp.asarray(u, dtype), "c": jnp.asarray(c, dtype)}


def evaluate(target: dict, x: jax.Array) -> jax.Array:
  """`f(x)` for `x: [n, d]` on the sphere of radius `sqrt(d)`: `[n]`."""
  u, c = target["u"], target["c"]
  d = x.shape[-1]
  top = c.shape[0] - 1
  t = (x @ u.T) / jnp.sqrt(jnp.asarray(d, x.dtype))  # [n, P]
  scale = jnp.sqrt(jnp.asarray([multiplicity(d, l) for l in range(top + 1)], x.dtype))
  return jnp.einsum("lnp,lp->n", gegenbauer(t, top, d), scale[:, None] * c)


def degree_residuals(target: dict, x: jax.Array, alpha: jax.Array, eigenvalues, multiplicities,
                     power, top: int) -> jax.Array:
  """`E_x (f_hat_l - f_l)^2` for degrees `0..top`, exactly, for `f_hat = sum_i
  alpha_i k(., x_i)` with a dot-product kernel `k(s) = sum_l lambda_l m_l
  P_l(s)` (Mercer; `eigenvalues`, `multiplicities` from `sphere_spectrum`)
  and `f` the target (`c` padded to `top + 1` degrees, `power` its power per
  degree). By the addition theorem `|f_hat_l|^2 = lambda_l^2 m_l alpha^T
  P_l(G) alpha` and `<f_hat_l, f_l> = lambda_l sqrt(m_l) alpha^T P_l(X U^T)
  c_l`."""
  d = x.shape[1]
  xs = x / jnp.sqrt(jnp.asarray(d, x.dtype))
  lam, mult = eigenvalues[:top + 1], multiplicities[:top + 1]
  cross = jnp.einsum("lnp,n,lp->l", gegenbauer(xs @ target["u"].T, top, d), alpha, target["c"])
  quad = jnp.einsum("lij,i,j->l", gegenbauer(xs @ xs.T, top, d), alpha, alpha)
  return lam**2 * mult * quad - 2 * lam * jnp.sqrt(mult) * cross + power[:top + 1]


@functools.lru_cache(maxsize=16)
def ntk_spectrum(depth: int, activation: str, w_std: float, b_std: float, d: int,
                 max_degree: int, quadrature: int) -> dict:
  """`theory.learning_curves.sphere_spectrum` of `mlp_kernel`'s NTK on the sphere
  of radius `sqrt(d)`, computed once per kernel and sphere (a grid's points
  share it; the quadrature's kernel calls take seconds). Read-only arrays."""
  kernel = ntk.mlp_kernel(depth, activation, w_std, b_std, "ntk")
  sp = sphere_spectrum(kernel, d, max_degree, radius=np.sqrt(d), quadrature=quadrature)
  for v in sp.values():
    if isinstance(v, np.ndarray):
      v.setflags(write=False)
  return sp


def check_target(config, reported: int = 0) -> tuple:
  """The config fields of a target on the sphere, each refused by name:
  `task.d` (>= 2), `task.degrees` (distinct non-negative integers), `task.powers`
  (one non-negative power per degree) and `task.max_degree` (reaching
  `max(task.degrees) + reported`). Returns `(d, degrees, powers, max_degree)`."""
  from dynamics import config as cfg
  d = cfg.integer(config, "task.d", minimum=2)
  degrees = cfg.get(config, "task.degrees")
  degrees = tuple(degrees) if isinstance(degrees, (tuple, list)) else (degrees,)
  powers = cfg.numbers(config, "task.powers", minimum=0.0)
  if not degrees or len(set(degrees)) != len(degrees) or any(
      not isinstance(l, int) or isinstance(l, bool) or l < 0 for l in degrees):
    cfg.fail("task.degrees", f"must be distinct non-negative integers, got {degrees!r}.")
  if len(powers) != len(degrees):
    cfg.fail("task.powers", f"must give one power per degree of task.degrees "
             f"({len(degrees)}), got {len(powers)}.")
  top = cfg.integer(config, "task.max_degree", minimum=0)
  if top < max(degrees) + reported:
    cfg.fail("task.max_degree", f"must reach the reported degrees (max(task.degrees) + "
             f"{reported} = {max(degrees) + reported}), got {top}.")
  return d, degrees, powers, top
