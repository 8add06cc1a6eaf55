"""Lubana & Dick (2021), "A gradient flow framework for analyzing network
pruning": (i) magnitude-based pruning converges fastest, being tied to
`d||theta||^2/dt = -2 theta.g`; (ii) loss-preservation (SNIP-like) pruning
keeps the loss change smallest and suits pruning early; (iii) gradient-norm
pruning that raises `||g||^2` (GraSP) can produce poor models.

    python scripts/run.py --config=configs/papers/lubana2021.py

Our experiment configs/pruning.py as it stands: a deep linear network, a
two-layer ReLU network and linear self-attention, pruned at init and after 50
steps by every measure of `theory.pruning` and by random scores, removing 20%,
50% or 80% of the weights, 8 seeds, trained on beside the dense run. Runtime, peak memory and disk:
docs/reproductions.md. Expected verdicts (printed, per setting): (i) holds in
1 of 12 settings (magnitude beats random in 8); (ii) in 10 of 18; (iii)
GraSP raises `||g||^2` in 17 of 18 and ends worse than the others in 6 of
18. docs/pruning.md explains each; the table: docs/reproductions.md.
"""

import os

from dynamics import load_config


def get_config(arg=None):
  config = load_config(os.path.join(os.path.dirname(__file__), "..", "pruning.py"), arg=arg)
  config.output_dir = "runs/lubana2021"
  return config
