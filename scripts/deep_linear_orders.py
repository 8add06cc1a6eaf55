"""One device, one chunk: seed-steps per second of `vmap(grad)` steps of the
`deep_linear_small` network (64 samples through 8-16-8) in four forms: layer by
layer, the weights' product first, `deep_linear.apply` (the same order computed
transposed, `(W_2 W_1 x^T)^T`), and the sufficient statistics
(`deep_linear.stats_loss`). docs/performance.md.

    python scripts/deep_linear_orders.py [SEEDS ...]     # default 128 1024
"""

import sys
import time

import jax
import jax.numpy as jnp

jax.config.update("jax_num_cpu_devices", 1)

from dynamics.models import deep_linear  # noqa: E402


def rate(loss, ws, steps=100, repeats=5):
  def step(w, _):
    g = jax.vmap(jax.grad(loss))(w)
    return jax.tree_util.tree_map(lambda a, b: a - 0.05 * b, w, g), None
  run = jax.jit(lambda w: jax.lax.scan(step, w, None, length=steps)[0])
  jax.block_until_ready(run(ws))
  best = min(_timed(run, ws) for _ in range(repeats))
  return ws[0].shape[0] * steps / best


def _timed(run, ws):
  t = time.perf_counter()
  jax.block_until_ready(run(ws))
  return time.perf_counter() - t


def main(seeds):
  x = jax.random.normal(jax.random.PRNGKey(0), (64, 8))
  y = x @ jax.random.normal(jax.random.PRNGKey(1), (8, 8))
  stats = deep_linear.statistics(x, y)
  sample_loss = lambda f: lambda w: 0.5 * jnp.mean(jnp.sum((f(w) - y) ** 2, -1))
  forms = {"layers": sample_loss(lambda w: x @ w[0].T @ w[1].T),
           "weights_first": sample_loss(lambda w: x @ (w[1] @ w[0]).T),
           "apply": sample_loss(lambda w: deep_linear.apply(w, x)),
           "statistics": lambda w: deep_linear.stats_loss(w, *stats)}
  for s in seeds:
    ws = jax.vmap(lambda k: deep_linear.init_random(k, [8, 16, 8], 0.5))(
        jax.random.split(jax.random.PRNGKey(2), s))
    print(f"{s} seeds: " + ", ".join(f"{n} {rate(f, ws):,.0f}" for n, f in forms.items())
          + " seed-steps/s")


if __name__ == "__main__":
  main([int(a) for a in sys.argv[1:]] or [128, 1024])
