"""Masked training and the pruning experiment at test size."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dynamics import train as engine
from dynamics.experiments import pruning as experiment
from dynamics.models import deep_linear
from tests.helpers import load_config
from theory import pruning


def setup():
  k = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.normal(k[0], (32, 6))
  y = x @ jax.random.normal(k[1], (6, 4))
  params = deep_linear.init_random(k[2], [6, 8, 4], 1.0)
  loss = lambda p, x_, y_: 0.5 * jnp.mean(jnp.sum((deep_linear.apply(p, x_) - y_) ** 2, -1))
  return params, loss, (x, y)


@pytest.mark.parametrize("name", engine.OPTIMIZERS)
def test_masked_weights_stay_exactly_zero(name):
  params, loss, data = setup()
  # momentum / Adam state built up before the prune must not leak into it
  opt = engine.make_optimizer(name, 0.01)
  state, _ = engine.trajectory(params, loss_fn=loss, data=data, optimizer=opt,
                               metrics_fn=lambda p: {}, num_steps=20, log_every=20)
  mask = pruning.prune_mask(pruning.importance(lambda p: loss(p, *data), state.params,
                                               "magnitude"), 0.6)
  pruned = jax.tree_util.tree_map(lambda p, m: p * m, state.params, mask)
  masked = engine.masked(opt, mask)
  st = engine.init_state(pruned, masked)._replace(opt_state=state.opt_state)
  adv = engine.make_advance(loss_fn=loss, data=data, optimizer=masked,
                            metrics_fn=lambda p: {"loss": loss(p, *data)}, log_every=50)
  st, logged = adv(st, 4)
  for p, m, p0 in zip(st.params, mask, pruned):
    assert np.all(np.asarray(p)[np.asarray(m) == 0] == 0.0)          # exactly zero
    assert np.any(np.asarray(p)[np.asarray(m) == 1] != np.asarray(p0)[np.asarray(m) == 1])
  assert logged["loss"][-1] < logged["loss"][0]


def test_masked_sgd_is_projected_gradient_descent():
  params, loss, data = setup()
  mask = pruning.prune_mask(jax.tree_util.tree_map(jnp.abs, params), 0.3)
  p = jax.tree_util.tree_map(lambda a, m: a * m, params, mask)
  state, _ = engine.trajectory(p, loss_fn=loss, data=data,
                               optimizer=engine.masked(engine.make_optimizer("sgd", 0.05), mask),
                               metrics_fn=lambda q: {}, num_steps=10, log_every=10)
  q = p
  for _ in range(10):
    g = jax.grad(loss)(q, *data)
    q = jax.tree_util.tree_map(lambda a, b, m: a - 0.05 * b * m, q, g, mask)
  for a, b in zip(state.params, q):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def small():
  c = load_config("pruning")
  c.num_seeds = 2
  c.fractions = (0.05, 0.5)
  c.prune_steps = (20,)  # the default's step 0 skips the pre-prune phase only
  for fam in experiment.FAMILIES:
    c[fam].num_steps, c[fam].log_every = 100, 10
  c.deep_linear.width = c.relu.width = 16
  return c


def test_experiment_small():
  with jax.enable_x64(True):  # the config's precision
    out = experiment.run(small())
  frame, summary = out["frame"], out["summary"]
  assert len(frame) == 3 * 1 * 2 * (1 + 5 * 2)  # families x steps x seeds x rows
  assert summary["max_pruned_weight_after_training"] == 0.0
  assert summary["diverged_rows"] == 0
  # removing 5% of the weights: the order-2 Taylor prediction beats order 1
  small_cut = frame[(frame.fraction == 0.05) & (frame.measure != "random")]
  err = lambda o: np.median(np.abs(small_cut[f"pred{o}_d_loss"] - small_cut.d_loss))
  assert err(2) < 0.5 * err(1), (err(1), err(2))
  # the dense rows lose nothing at the prune
  dense = frame[frame.measure == "dense"]
  assert np.all(dense.d_loss == 0) and np.all(dense.pred2_d_loss == 0)
  assert set(summary["claims"]["verdicts"]) == {"i", "ii", "iii"}
  # GraSP's removal raises ||g||^2 to first order by construction: the
  # prediction is positive for it (it removes the most negative theta (Hg))
  grasp = frame[(frame.measure == "gradient_norm") & (frame.fraction == 0.05)]
  assert np.all(grasp.pred1_d_grad_norm > 0)


@pytest.mark.parametrize("field, value", [
    ("families", ("deep_linear", "cnn")), ("measures", ("snip",)), ("fractions", (0.5, 1.0)),
    ("prune_steps", (0, 2000)), ("target_gap", 1.5), ("scope", "row"), ("relu.lr", 0.0)])
def test_bad_config(field, value):
  c = load_config("pruning")
  section, _, name = field.rpartition(".")
  (c[section] if section else c)[name] = value
  with pytest.raises(ValueError, match=field):
    experiment.validate(c)
