"""The diagonal-network experiment at smoke size: the learned beta at the
predicted interpolator, and the move from l1 to l2 with alpha."""

import pytest

from dynamics import simulate
from tests.helpers import assert_plan_refuses, config


def test_rich_to_lazy():
  results, s = simulate(config("diagonal_linear", ["sweep.model.alpha=(0.01,0.1,1.0)"]))
  rows = sorted((r.summary for r in results), key=lambda r: r["alpha"])
  # within 2% of the prediction: the finite time t = 100 at alpha 0.01 (the
  # flow has not quite reached its limit), O(lr) = O(0.005) elsewhere
  assert s["worst_to_prediction"] < 0.02, s
  to_l1, to_l2 = [r["to_l1"] for r in rows], [r["to_l2"] for r in rows]
  assert to_l1 == sorted(to_l1) and to_l2 == sorted(to_l2, reverse=True), rows
  assert rows[0]["test_error"] < rows[-1]["test_error"]


@pytest.mark.parametrize("field, value", [("model.alpha", 0.0), ("task.num_train", 100),
                                          ("task.sparsity", 100), ("train.lr", -1.0)])
def test_bad_config(field, value):
  assert_plan_refuses("diagonal_linear", field, value)


def test_woodworth2020_direction():
  # configs/papers/woodworth2020.py at smoke size: small alpha recovers the
  # sparse beta* (near the l1 interpolator, low test error), alpha = 1 does not.
  c = config("papers/woodworth2020", ["sweep.model.alpha=(0.003,1.0)"])
  results, _ = simulate(c)
  rich, lazy = sorted((r.summary for r in results), key=lambda r: r["alpha"])
  assert rich["test_error"] < 0.2 * lazy["test_error"], (rich, lazy)
  assert rich["to_l1"] < rich["to_l2"] and lazy["to_l2"] < lazy["to_l1"], (rich, lazy)
