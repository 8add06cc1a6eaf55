"""The online-SGD experiment (dynamics/experiments/online_sgd.py) against
theory.online_sgd: one step of its loss moves the order parameters by the
drift, and a run through the runner follows committee_flow from each seed's
init."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dynamics import load_config, simulate
from dynamics.experiments import online_sgd as exp
from tests.helpers import ROOT
from theory import online_sgd


def config(**fields):
  c = load_config(f"{ROOT}/configs/online_sgd.py", arg="smoke")
  c.sweep = {}
  for k, v in fields.items():
    section, name = k.split("__")
    c[section][name] = v
  return c


@pytest.mark.parametrize("second, noise", [(False, 0.0), (True, 0.3)])
def test_one_step_of_the_loss_moves_the_order_parameters_by_the_drift(second, noise):
  # The runner's step is params - lr grad(loss). Over 20000 fresh samples the
  # mean change of Q, R (and v) times N must equal committee_drift at the
  # current order parameters, each entry within 5 standard errors: the drift
  # is exact in expectation up to the correlation of |x|^2 / N with the fields
  # in the lr^2 term, O(1/N) = 2e-3 relative, below the standard errors here
  # (the lr^2 term itself is ~70 of them in Q: dropping it fails).
  n, lr, samples = 500, 0.8, 20_000
  c = config(task__n=n, model__train_second_layer=second, task__noise=noise,
             init__scale=0.7, train__lr=lr)
  data = jax.tree_util.tree_map(jnp.asarray, exp.setup(c))
  state = exp.init(c, jax.random.PRNGKey(3), data)
  if second:
    state["params"]["u"] = state["params"]["u"] * jnp.array([0.8, 1.3])
  before = exp.observe(c, state, data)

  def change(key):
    g = jax.grad(lambda p: exp.loss(c, {**state, "params": p}, data, key))(state["params"])
    after = exp.observe(c, {**state, "params": jax.tree_util.tree_map(
        lambda p, d: p - lr * d, state["params"], g)}, data)
    return {k: (after[k] - before[k]) * n for k in ("q", "r", "v")}

  keys = jax.random.split(jax.random.PRNGKey(0), samples)
  d = jax.jit(jax.vmap(change))(keys)
  with jax.enable_x64(True):
    want = online_sgd.committee_drift(np.asarray(before["q"], np.float64),
                                      np.asarray(before["r"], np.float64),
                                      np.asarray(data["t"], np.float64), lr=lr,
                                      v=np.asarray(before["v"], np.float64), noise=noise,
                                      train_second_layer=second)
  for k, w in (("q", "dq"), ("r", "dr"), ("v", "dv")):
    x = np.asarray(d[k], np.float64)
    mean, se = x.mean(0), x.std(0) / np.sqrt(samples)
    assert np.all(np.abs(mean - np.asarray(want[w])) <= 5 * se + 1e-6), (k, mean, want[w], se)


def test_a_run_follows_the_flow_from_each_seeds_init():
  # 8 seeds at N = 400 to alpha 10 (the drop onto the plateau, before any
  # escape): the seed mean of sim - theory (theory from each seed's own init)
  # within 4 standard errors of that mean plus 3/N (the ODE's O(1/N) bias),
  # at every logged alpha, for Q, R and the error.
  c = config(task__n=400)
  c.num_seeds, c.train.num_steps, c.train.log_every = 8, 4000, 200
  (r,), out = simulate(c)
  assert r.traj.kept.all()
  for name in ("q", "r", "error"):
    diff = np.asarray(r.traj.logged[name], np.float64) - r.pred[name]
    mean, se = diff.mean(0), diff.std(0) / np.sqrt(8)
    assert np.all(np.abs(mean) <= 4 * se + 3 / 400), (name, np.abs(mean).max())
  point = r.summary
  assert point["plateau_error_pred"] == pytest.approx(online_sgd.plateau(2, lr=1.0)["error"])
  # on the plateau by alpha 10: within 10% of the fixed point (the flow from a
  # small init is there to ~2% by alpha 8; 8 seeds at N = 400 add ~3%)
  assert abs(r.traj.logged["error"][:, -1].mean() / point["plateau_error_pred"] - 1) < 0.1


def test_bad_config_fields_are_named():
  for fields, match in (({"task__n": 3}, "task.n"), ({"model__activation": "tanh"},
                                                     "model.activation"),
                        ({"task__noise": -0.1}, "task.noise"), ({"init__scale": 0.0},
                                                                "init.scale")):
    with pytest.raises(ValueError, match=match.replace(".", r"\.")):
      simulate(config(**fields))
  c = config()
  c.train.num_steps = 2001
  with pytest.raises(ValueError, match=r"train\.num_steps"):
    simulate(c)


@pytest.mark.slow  # ~50 s each: six compiled groups; by default the one-step and run tests above
@pytest.mark.parametrize("name", ["papers/saad1995", "papers/goldt2019"])
def test_paper_configs_follow_the_flow(name):
  # Each paper config's smoke grid (saad1995: K = M = 3 at lr 0.5 and 2.5, past
  # critical_lr(3) = 1.62; goldt2019: K = 2, 4 over M = 2 with label noise, one
  # layer or both trained), 8 seeds, N = 200, alpha 20: the seed mean of the
  # error's difference from each seed's flow within 4 standard errors plus 3/N
  # at every logged alpha, at every point.
  c = load_config(f"{ROOT}/configs/{name}.py", arg="smoke")
  c.num_seeds = 8
  results, out = simulate(c)
  for r in results:
    diff = np.asarray(r.traj.logged["error"], np.float64) - r.pred["error"]
    mean, se = diff.mean(0), diff.std(0) / np.sqrt(8)
    assert np.all(np.abs(mean) <= 4 * se + 3 / 200), (r.fields, np.abs(mean).max())
  if name == "papers/saad1995":
    assert out["critical_lr"] == pytest.approx(online_sgd.critical_lr(3))
