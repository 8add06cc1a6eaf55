"""Deep matrix factorization at test size: the singular values follow Arora
et al.'s formula along the run, and depth 3 completes where depth 2 does not."""

import numpy as np
import pytest

from dynamics import simulate
from dynamics.experiments import matrix_factorization as mf
from tests.helpers import assert_plan_refuses, config


def test_arora2019_direction():
  # configs/papers/arora2019.py at reduced size (full size: 0.044 against 0.51)
  c = config("papers/arora2019")
  c.num_seeds = 2
  c.sweep.model.depth = (1, 2, 3)
  c.sweep.task.num_observed = (250,)
  c.train.num_steps, c.train.log_every = 10000, 500
  points, s = simulate(c)
  err = {p.summary["depth"]: p.summary["error"] for p in points}
  assert err[3] < 0.2 * err[2] and err[2] < err[1], err
  # depth 1 only fills the observed entries: the error is the unobserved part
  # of M, sqrt(1 - m / d^2) on average over which entries are observed (+-3%)
  assert abs(err[1] - np.sqrt(1 - 250 / 900)) < 0.03, err
  # the formula against autodiff through the SVD: exact for a balanced
  # factorization under gradient flow; gradient descent unbalances it by
  # O(lr^2) a step and float32 rounds the SVD (~1e-6 relative): measured 4e-4
  assert s["velocity_gap_max"] < 1e-2, s


def test_the_observed_sets_are_nested():
  c = config("matrix_factorization")
  t1, m1 = mf.task(c, 100, np.float32)
  t2, m2 = mf.task(c, 300, np.float32)
  np.testing.assert_array_equal(t1, t2)
  assert m1.sum() == 100 and m2.sum() == 300 and np.all(m2 >= m1)
  np.testing.assert_allclose(np.linalg.svd(np.asarray(t1), compute_uv=False)[:4],
                             [30 / 3 ** 0.5] * 3 + [0], atol=1e-4)


@pytest.mark.parametrize("field, value", [
    ("task.rank", 31), ("task.num_observed", 901), ("init.scale", 0.0), ("model.depth", 0),
    ("train.lr", -1.0)])
def test_bad_config(field, value):
  assert_plan_refuses("matrix_factorization", field, value)
