"""Process 0's decisions, on every process (`jax.distributed`)."""

from __future__ import annotations

import json

import numpy as np


def share(obj, once: bool = False):
  """Process 0's JSON-able `obj` on every process (the others pass None).
  `once`: process 0 is sending a refusal; the others are waiting for it."""
  from jax.experimental import multihost_utils
  data = np.frombuffer(json.dumps(obj).encode(), np.uint8) if obj is not None else \
      np.zeros(0, np.uint8)
  n = int(multihost_utils.broadcast_one_to_all(np.int32(data.size)))
  buf = np.zeros(n, np.uint8)
  buf[:data.size] = data[:n]
  return json.loads(np.asarray(multihost_utils.broadcast_one_to_all(buf)).tobytes())
