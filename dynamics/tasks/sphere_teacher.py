"""Inputs on the sphere and a random two-layer ReLU teacher.

`x: [P, d]` uniform on the sphere of radius `sqrt(d)` (so `x.x / d = 1`), labels
`y: [P]` from a fixed random ReLU network of `teacher_width` units
(`dynamics.models.relu_net`, no biases), standardised to mean 0 and variance 1
over the `P` samples. Conventions: `docs/conventions.md`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dynamics.models import relu_net


def sphere_teacher(key: jax.Array, *, d: int, num_samples: int, teacher_width: int,
                   dtype=jnp.float32) -> tuple[jax.Array, jax.Array]:
  """`(x, y)` as in the module docstring; `key` draws the inputs and the teacher."""
  k_x, k_t = jax.random.split(key)
  x = jax.random.normal(k_x, (num_samples, d), dtype)
  x = x / jnp.linalg.norm(x, axis=1, keepdims=True) * jnp.sqrt(d)
  y = relu_net.apply(relu_net.init(k_t, d, teacher_width, bias=False, dtype=dtype), x)
  return x, (y - y.mean()) / y.std()
