"""Deep linear networks trained by the runner against theory.deep_linear."""

import jax
import numpy as np
import pytest

from dynamics import metrics, simulate, sweep
from dynamics import train as engine
from dynamics.experiments import deep_linear as exp
from dynamics.models import deep_linear as model
from dynamics.tasks.linear_teacher import linear_teacher
from tests.helpers import assert_plan_refuses, config as load_config
from theory import deep_linear as theory


def run(c):
  """One point (the base config), in memory."""
  c.sweep = {}
  return simulate(c)[0][0]


def aligned_config(depth, lr, horizon=16.0):
  c = load_config("deep_linear")
  c.precision = "float64"
  c.num_seeds = 3
  c.init.name, c.init.u0 = "aligned", 1e-3
  c.model.depth, c.model.width = depth, 10
  c.train.lr = lr
  c.train.num_steps = int(round(horizon / lr))
  c.train.log_every = c.train.num_steps // 160
  return c


def u_errors(pt):
  """Max relative error of every teacher mode's u_i(t) of every seed against
  `theory.mode_strength` called here: `[seeds, modes]`."""
  emp = np.moveaxis(pt.traj.logged["u"], 1, -1)
  s = pt.data["s"]
  u0 = np.where(np.arange(len(s)) < 4, pt.config.init.u0, 0.0)
  pred = theory.mode_strength(pt.traj.t[0], s, u0, pt.config.model.depth)[:, :4]
  return metrics.compare(emp, np.moveaxis(np.asarray(pred), 0, -1))["max_rel_error"]


@pytest.mark.parametrize("depth, horizon", [(2, 16.0), (3, 24.0)])
def test_aligned_init_follows_exact_solution(depth, horizon):
  err = u_errors(run(aligned_config(depth, 1e-3, horizon)))
  err_coarse = u_errors(run(aligned_config(depth, 2e-3, horizon)))
  # Gradient descent differs from the flow by O(lr) (about 1.5 lr s_max per
  # mode here); the bound is 1e-2 at small lr.
  assert err.shape == (3, 4)
  assert np.max(err) < 1e-2, err
  # ... and that is the whole discrepancy: it halves with the step size.
  np.testing.assert_allclose(err_coarse / err, 2.0, rtol=0.1)


def test_random_init_learning_times():
  c = load_config("deep_linear")
  c.num_seeds = 16
  c.model.depth, c.model.width = 2, 128
  c.init.name, c.init.scale = "random", 0.05
  c.train.lr, c.train.num_steps, c.train.log_every = 0.01, 1200, 5
  pt = run(c)
  s = pt.data["s"][:4]
  u = np.moveaxis(pt.traj.logged["u"], 1, -1)
  measured = metrics.time_to_fraction(pt.traj.t[0], u, s)
  predicted = np.stack([theory.learning_time(s, u0[:4], 2) for u0 in pt.traj.start["u0_eff"]])
  # Small-init approximation (effective u0, no mode coupling) plus O(lr):
  # a few percent; the bound is 10%.
  np.testing.assert_array_less(np.abs(measured / predicted - 1), 0.10)
  assert max(r["learning_time_rel_error_max"] for r in pt.summary["modes"]) < 0.10


def test_seed_independent_of_batch():
  c = aligned_config(2, 0.01, 4.0)
  c.init.name = "random"
  c.num_seeds = 8
  c.sweep = {}
  keys = engine.seed_keys(c.seed, 8)
  # The randomness is bitwise the same: seed i's key is fold_in(PRNGKey(seed), i)
  # whatever batch it is in, and so are its initial parameters.
  np.testing.assert_array_equal(keys[3], jax.random.fold_in(jax.random.PRNGKey(c.seed), 3))
  np.testing.assert_array_equal(engine.seed_keys(c.seed, 1, start=3)[0], keys[3])
  sizes = model.layer_sizes(8, 8, 10, 2)
  init = lambda k: model.init_random(k, sizes, 0.1)
  for alone, batched in zip(jax.jit(init)(keys[3]), jax.jit(jax.vmap(init))(keys)):
    np.testing.assert_array_equal(alone, batched[3])
  with jax.enable_x64(True):
    p = sweep.plan(c)
    runner = p.groups[0].runner
    batch, alone = runner.run(0, 8), runner.run(3, 4)
  # Trajectories agree to rounding, not bitwise: XLA picks a different dot
  # kernel (reduction order) for a batch of 1 than of 8, a 1-ulp difference
  # (3e-7 relative in float32, checked here in float64).
  for name in ("loss", "u"):
    np.testing.assert_allclose(alone[0][name][0], batch[0][name][3], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(alone[1][name][0], batch[1][name][3], rtol=1e-12, atol=1e-14)
  assert not np.allclose(batch[1]["loss"][0], batch[1]["loss"][3])
  # Every seed trains on the task setup drew once for the point, the one
  # linear_teacher draws from task.seed, which the theory reads from `data`.
  with jax.enable_x64(True):
    task = teacher(jax.random.PRNGKey(c.task.seed), d_in=8, d_out=8, num_samples=64,
                   singular_values=np.array(c.task.singular_values))
  for name in ("s", "u_modes", "v_modes", "sigma_yy_trace"):
    np.testing.assert_allclose(p.data[0][name], getattr(task, name), rtol=1e-12, atol=1e-14)


def teacher(key, **kwargs):
  """`linear_teacher` as one compiled call (not ~50 op by op), in float64."""
  return jax.jit(lambda k: linear_teacher(k, dtype=np.float64, **kwargs))(key)


def test_aligned_init_is_balanced_and_exact():
  with jax.enable_x64(True):
    task = teacher(jax.random.PRNGKey(1), d_in=6, d_out=5, num_samples=40,
                   singular_values=np.array([2.0, 1.0, 0.5]))
    u0 = np.array([0.1, 0.2, 0.3, 0.0, 0.0])
    params = jax.jit(lambda k, u, v: model.init_aligned(k, [6, 7, 9, 5], u0, u, v))(
        jax.random.PRNGKey(2), task.u_modes, task.v_modes)
    np.testing.assert_allclose(model.end_to_end(params),
                               task.u_modes @ np.diag(u0) @ task.v_modes.T, atol=1e-12)
    for lower, upper in zip(params[:-1], params[1:]):
      np.testing.assert_allclose(upper.T @ upper, lower @ lower.T, atol=1e-12)


def test_task_is_whitened_with_prescribed_spectrum():
  with jax.enable_x64(True):
    task = teacher(jax.random.PRNGKey(0), d_in=8, d_out=4, num_samples=30,
                   singular_values=np.array([3.0, 1.0]))
    np.testing.assert_allclose(task.x.T @ task.x / 30, np.eye(8), atol=1e-12)
    np.testing.assert_allclose(task.s, [3.0, 1.0, 0.0, 0.0], atol=1e-12)
    noisy = teacher(jax.random.PRNGKey(0), d_in=8, d_out=4, num_samples=30,
                    singular_values=np.array([3.0, 1.0]), noise_var=0.1)
    # SVD signs follow the teacher's, so mode i means the same direction.
    assert np.all(np.sum(noisy.u_modes[:, :2] * task.u_modes[:, :2], 0) > 0.9)


def test_minibatch_and_optimizers_run():
  for optimizer, batch in (("sgd", 16), ("momentum", 0), ("adam", 0)):
    c = aligned_config(2, 0.01, 2.0)
    c.precision = "float32"
    c.train.optimizer, c.train.batch_size = optimizer, batch
    loss = run(c).traj.logged["loss"]
    assert loss.shape == (3, c.train.num_steps // c.train.log_every + 1)
    assert np.all(np.isfinite(loss)) and loss[0, -1] < loss[0, 0]


def test_minibatches_differ_by_step_and_seed():
  """`train.batch_size` draws from the step's key: a minibatch run leaves the
  full-batch trajectory, and two seeds from the same (aligned) init differ."""
  c = aligned_config(2, 0.01, 2.0)
  full = run(c).traj.logged["u"]
  c.train.batch_size = 16
  mini = run(c).traj.logged["u"]
  np.testing.assert_allclose(full[0], full[1], rtol=1e-6)  # same init: u0 on the modes
  assert not np.allclose(mini[0], full[0], rtol=1e-3) and not np.allclose(mini[0], mini[1])


@pytest.mark.parametrize("field, value", [
    ("train.lr", -0.1),
    ("model.width", 0),
    ("model.depth", 0),
    ("task.singular_values", (3.0, 2.0, 1.0, 0.5, 0.2, 0.1, 0.1, 0.1, 0.1)),
    ("experiment", "dynamics.experiments.transformer"),
    ("train.num_steps", 1001),
    ("init.name", "sideways"),
    ("precision", "float16"),
    ("task.num_samples", 4),
    ("num_seeds", 0),
    ("train.batch_size", 65),
])
def test_bad_config_names_the_field(field, value, monkeypatch):
  monkeypatch.setattr(engine, "Runner", lambda *a, **k: pytest.fail("traced"))
  assert_plan_refuses("deep_linear", field, value)


def test_aligned_width_must_hold_the_modes():
  c = load_config("deep_linear", ["sweep={}"])
  c.init.name, c.model.width = "aligned", 4
  with pytest.raises(ValueError, match=r"model\.width"):
    sweep.plan(c)


def test_statistics_formulation_trains_the_same_trajectories():
  """`train.formulation`: the default ('auto') trains full-batch runs on the
  sufficient statistics; every logged loss and mode strength equals the
  sample formulation's (noisy teacher, random init, float64)."""
  c = load_config("deep_linear")
  c.precision, c.num_seeds = "float64", 3
  c.model.depth, c.model.width = 3, 12
  c.task.noise_var, c.task.num_samples = 0.3, 40
  c.init.scale = 0.5
  c.train.lr, c.train.num_steps, c.train.log_every = 0.05, 400, 40
  assert exp.uses_statistics(c)
  out = {}
  for form in ("statistics", "samples"):
    c.train.formulation = form
    pt = run(c)
    assert ("w_star" in pt.data) == (form == "statistics")
    out[form] = pt.traj.logged
  for k in ("loss", "u"):
    np.testing.assert_allclose(out["statistics"][k], out["samples"][k], rtol=1e-9,
                               atol=1e-12)
  assert out["samples"]["loss"][:, -1].max() < 0.5 * out["samples"]["loss"][:, 0].min()
  c.train.batch_size = 10
  c.train.formulation = "auto"
  assert not exp.uses_statistics(c)  # minibatches need the samples
  c.train.formulation = "statistics"
  with pytest.raises(ValueError, match="train.formulation"):
    sweep.plan(c)


def test_theory_loss_has_no_rounding_floor():
  """Without label noise the irreducible loss is exactly 0, and the theory is
  float64 whatever the run's precision: the aligned theory loss falls to
  `0.5 sum (s - u)^2`, below 1e-12 by t = 32 (e^{-2 * 0.5 * 32} ~ 1e-14 for
  the slowest mode, s = 0.5), not to the ~1e-6 a float32 `tr Sigma_yy - sum
  s^2` would leave. With noise the floor is the noise's share, > 0."""
  c = aligned_config(2, 0.02, horizon=40.0)
  c.precision, c.num_seeds, c.train.log_every = "float32", 2, 100
  pt = run(c)
  assert pt.pred["loss"].dtype == np.float64
  assert pt.pred["loss"][:, -1].max() < 1e-12, pt.pred["loss"][:, -1]
  c.task.noise_var = 0.1
  pt = run(c)
  # the aligned init starts the noise's own modes of Sigma_yx (i >= 4) at 0,
  # where they stay: what remains is tr Sigma_yy minus the 4 learned s_i^2
  s = np.asarray(pt.data["s"], np.float64)
  floor = 0.5 * (float(pt.data["sigma_yy_trace"]) - np.sum(s[:4] ** 2))
  np.testing.assert_allclose(pt.pred["loss"][:, -1], floor, rtol=1e-6)
  assert floor > 0.1


@pytest.mark.slow  # experiment-scale: --runslow
def test_saxe2014_depth_direction():
  # configs/papers/saxe2014_depth.py at reduced size (its smoke variant, 4
  # seeds to t = 5, over depth 1 and 8): at lr ~ 1/N the aligned (u0 = 1)
  # init learns no slower at depth 8 than at depth 1, and on the theory; the
  # scaled Gaussian's weakest mode (s = 3) is several times slower (measured
  # at full size: 0.70 at depth 1, 5.6 at depth 8).
  c = load_config("papers/saxe2014_depth")
  c.sweep.model.depth = (1, 8)
  c.sweep.init.name = ("aligned", "random")
  _, s = simulate(c)
  rows = {(r["init"], r["depth"], r["mode"]): r for r in s["depth_table"]}
  weak = lambda init, n: rows[(init, n, 3)]["depth_time_measured"]
  assert weak("random", 8) > 3 * weak("random", 1), s["depth_table"]
  assert weak("aligned", 8) <= weak("aligned", 1)
  for r in s["depth_table"]:
    if r["init"] == "aligned":
      # exact for gradient flow; O(lr) and the logging interval (5 steps,
      # a fifth of depth 8's half-learning time, linearly interpolated) leave ~1%
      assert abs(r["depth_time_measured"] / r["depth_time_predicted"] - 1) < 0.03, r


def test_saxe2014_modes_direction():
  # configs/papers/saxe2014_modes.py at reduced size (its smoke variant: 8
  # seeds of width 16 to t = 10): weaker modes are learned later, nearly in
  # proportion to 1/s (the log(s/u0) factor makes the s = 4 to s = 0.5 ratio
  # about 5.5 rather than 8).
  modes = run(load_config("papers/saxe2014_modes")).summary["modes"]
  t = [m["learning_time_measured"] for m in modes]
  assert t == sorted(t), t
  assert 4 < t[-1] / t[0] < 8, t


@pytest.mark.parametrize("p, sizes, weights_first", [
    (64, [8, 16, 8], True),         # deep_linear_small: 10,240 against 32,768 FLOPs
    (256, [16, 32, 32, 16], True),  # deep_linear
    (4, [16, 32, 32, 16], False),   # few samples: layer by layer is cheaper
])
def test_apply_associates_the_cheaper_way(p, sizes, weights_first):
  """`apply` is `x W_1^T ... W_N^T` in either association: equal to the
  layer-by-layer product to float64 rounding (1e-12 relative), and it forms the
  weights' product first exactly when that costs fewer multiply-adds."""
  with jax.enable_x64(True):
    x = jax.random.normal(jax.random.PRNGKey(0), (p, sizes[0]), np.float64)
    ws = model.init_random(jax.random.PRNGKey(1), sizes, 1.0, np.float64)
    layers = x
    for w in ws:
      layers = layers @ w.T
    out = model.apply(ws, x)
    np.testing.assert_allclose(out, layers, rtol=1e-12, atol=1e-12 * float(np.abs(layers).max()))
    dots = [e for e in jax.make_jaxpr(model.apply)(ws, x).jaxpr.eqns
            if e.primitive.name == "dot_general"]
  # the first product computed is W_2 W_1 when the weights go first (no
  # operand with the P samples), W_1 x^T otherwise
  first = tuple(v.aval.shape for v in dots[0].invars)
  assert (p not in first[0] + first[1]) == weights_first, first
