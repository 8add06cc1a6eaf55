"""The diagonal linear network against its implicit bias (docs/lazy_rich.md).

    python scripts/diagonal_linear_limits.py

A sparse problem (10 measurements, 30 coordinates, a 3-sparse beta), float64:
the distance from full-batch gradient descent's limit (300k steps at lr and
600k at lr/2) to `theory.diagonal_linear.implicit_bias_solution`, and the
distance of the solution to the l1 and l2 interpolators over alpha.
"""

import jax
import jax.numpy as jnp
import numpy as np

from dynamics.models import diagonal_linear as dln
from theory import diagonal_linear as td


def main():
  jax.config.update("jax_enable_x64", True)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(10, 30))
  beta = np.zeros(30)
  beta[:3] = [2.0, -1.5, 1.0]
  y = x @ beta
  lr = 0.1 / (12 * np.linalg.eigvalsh(x.T @ x / len(x)).max())

  def gd(alpha, lr, steps):
    loss = lambda p: 0.5 * jnp.mean((dln.apply(p, x) - y) ** 2)
    step = lambda _, p: jax.tree_util.tree_map(lambda a, g: a - lr * g, p, jax.grad(loss)(p))
    p = jax.jit(lambda p: jax.lax.fori_loop(0, steps, step, p))(dln.init(30, alpha, jnp.float64))
    return np.asarray(dln.beta(p))

  print(f"gradient descent against the prediction (lr = {lr:.3g} and half of it)")
  for alpha in (0.1, 1.0):
    pred = td.implicit_bias_solution(x, y, alpha)
    gaps = [np.linalg.norm(gd(alpha, lr / k, 300_000 * k) - pred) for k in (1, 2)]
    print(f"  alpha {alpha:g}: {gaps[0]:.2e}, {gaps[1]:.2e}")
  l1, l2 = td.min_l1_solution(x, y), td.min_l2_solution(x, y)
  print("distance to the l1 interpolator:", ", ".join(
      f"alpha {a:g}: {np.linalg.norm(td.implicit_bias_solution(x, y, a) - l1):.2g}"
      for a in (1e-1, 1e-2, 1e-3, 1e-4, 1e-6, 1e-8)))
  print("distance to the l2 interpolator:", ", ".join(
      f"alpha {a:g}: {np.linalg.norm(td.implicit_bias_solution(x, y, a) - l2):.2g}"
      for a in (1.0, 3.0, 10.0, 30.0)))


if __name__ == "__main__":
  main()
