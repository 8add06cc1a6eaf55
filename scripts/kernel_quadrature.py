"""Error of the quadrature in `theory.ntk.mlp_kernel` (docs/ntk.md).

    python scripts/kernel_quadrature.py

Depth-3 NTK and NNGP, `b_std = 0.3`, six inputs in d = 5 with `|x|^2 = d` (with
an identical and an antipodal pair, and a zero input), float64: the maximum
relative error of the trapezoidal rule (the default) and of Gauss-Hermite at
several node counts, against the closed form (erf, relu) or the same rule at
400 (trapezoidal) or 200 (Gauss-Hermite) nodes (tanh, gelu).
"""

import functools

import jax
import numpy as np

from theory import ntk


def main():
  jax.config.update("jax_enable_x64", True)
  x = np.random.default_rng(0).normal(size=(6, 5))
  x *= np.sqrt(5) / np.linalg.norm(x, axis=1, keepdims=True)  # |x|^2 = d
  x[2], x[4], x[5] = x[1], -x[3], 0.0
  dual = ntk._quadrature_dual
  print(f"{'activation':>10} {'w_std':>5} {'rule':>14} {'nodes':>5} {'nngp':>9} {'ntk':>9}")
  for act in ("erf", "relu", "tanh", "gelu"):
    for w in (1.0, 2.0, 3.0):
      for rule in ("trapezoid", "gauss_hermite"):
        ntk._quadrature_dual = functools.partial(dual, rule=rule)
        fine = 400 if rule == "trapezoid" else 200  # numpy's Gauss-Hermite stops near 300
        ref = ntk.mlp_kernel(3, act, w, 0.3, quadrature=None if act in ("erf", "relu")
                             else fine)(x)
        for order in (48, 64, 96, 128):
          q = ntk.mlp_kernel(3, act, w, 0.3, quadrature=order)(x)
          e = [float(np.max(np.abs(q[k] - ref[k])) / np.max(np.abs(ref[k])))
               for k in ("nngp", "ntk")]
          print(f"{act:>10} {w:5.1f} {rule:>14} {order:5d} {e[0]:9.1e} {e[1]:9.1e}")
  ntk._quadrature_dual = dual


if __name__ == "__main__":
  main()
