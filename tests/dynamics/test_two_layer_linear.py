"""The lambda experiment at smoke size: the network follows two_layer_flow,
and the NTK moves far near lambda = 0 and little at large lambda."""

import pytest

from dynamics import simulate
from tests.helpers import assert_plan_refuses, config


def test_flow_and_laziness():
  results, s = simulate(config("two_layer_linear", ["sweep.init.lam=(0.0,4.0)",
                                                    "sweep.init.scale=(0.1,)"]))
  rich, lazy = sorted((r.summary for r in results), key=lambda r: r["lam"])
  # O(lr) at lr 0.005 over t = 5: the map's worst relative error halves with
  # lr (3e-2 at lam 0 from a small init, the longest plateau, measured at
  # t = 15); 5% bounds it with room for the seeds
  assert s["worst_w_rel_error"] < 0.05, s
  assert rich["ntk_drift"] > 10 * lazy["ntk_drift"], (rich, lazy)
  for r in (rich, lazy):
    assert abs(r["ntk_drift"] - r["ntk_drift_pred"]) < 0.05 * r["ntk_drift_pred"], r


@pytest.mark.parametrize("field, value", [("model.hidden", 5), ("init.scale", 0.0),
                                          ("init.lam", float("nan")),
                                          ("task.singular_values", (1.0, 1.0, 1.0, 1.0))])
def test_bad_config(field, value):
  assert_plan_refuses("two_layer_linear", field, value)
