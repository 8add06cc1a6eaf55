"""The lambda experiment at test size: the network follows two_layer_flow,
and the NTK moves far near lambda = 0 and little at large lambda."""

import pytest

from dynamics import simulate
from tests.helpers import assert_plan_refuses, config


def test_flow_and_laziness():
  c = config("two_layer_linear")
  c.num_seeds = 2
  c.sweep.init = {"lam": (0.0, 4.0), "scale": (0.1,)}
  c.train.num_steps, c.train.log_every = 1000, 100
  points, s = simulate(c)
  rich, lazy = sorted((p.summary for p in points), key=lambda r: r["lam"])
  # O(lr) at lr 0.005: measured 3.0e-2 (lam 0, small init: the longest
  # plateau) and 5.4e-3 (lam 4) over t = 15, halving with lr
  assert s["worst_w_rel_error"] < 0.05, s
  assert rich["ntk_drift"] > 10 * lazy["ntk_drift"], (rich, lazy)
  for r in (rich, lazy):
    assert abs(r["ntk_drift"] - r["ntk_drift_pred"]) < 0.05 * r["ntk_drift_pred"], r


@pytest.mark.parametrize("field, value", [("model.hidden", 5), ("init.scale", 0.0),
                                          ("init.lam", float("nan")),
                                          ("task.singular_values", (1.0, 1.0, 1.0, 1.0))])
def test_bad_config(field, value):
  assert_plan_refuses("two_layer_linear", field, value)
