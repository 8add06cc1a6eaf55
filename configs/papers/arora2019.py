"""Arora, Cohen, Hu & Luo (2019), "Implicit regularization in deep matrix
factorization": (a) along gradient flow from a balanced init, the singular
values of the product `W = W_N ... W_1` obey
`d sigma_r/dt = -N (sigma_r^2)^(1 - 1/N) <grad L(W), u_r v_r^T>` (their
Theorem 3), which speeds up large singular values and holds back small ones
more as N grows; (b) so deeper factorizations complete a low-rank matrix from
fewer observed entries (their Fig. 2, at reduced size).

    python scripts/run.py --config=configs/papers/arora2019.py

configs/matrix_factorization.py: a 30 x 30 matrix of rank 3 (171 degrees of
freedom), depth 1, 2, 3, 200 to 500 observed entries, 4 seeds, balanced
orthogonal init of scale 0.1 per factor, full-batch gradient descent.
Runtime, peak memory and disk:
docs/reproductions.md. Expected: (a) the singular values' actual
velocity (autodiff through the SVD, at every logged step of every run)
within ~1e-3 of the formula, relative to its largest value; (b) at 250 to
300 entries depth 3 recovers M (error below 5%) where depth 2 does not
(0.3-0.5) and depth 1 (which only fills the observed entries) stays near
`sqrt(1 - m/900)`. Measured numbers: docs/reproductions.md.
"""

import os

from dynamics import load_config


def get_config(arg=None):
  config = load_config(os.path.join(os.path.dirname(__file__), "..", "matrix_factorization.py"),
                       arg=arg)
  config.output_dir = "runs/arora2019"
  return config
