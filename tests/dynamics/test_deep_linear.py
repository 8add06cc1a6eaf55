"""Deep linear networks trained by the engine against theory.deep_linear."""

import jax
import numpy as np
import pytest

from dynamics import experiments, metrics, simulate, sweep
from dynamics import train as engine
from dynamics.experiments import deep_linear as exp
from dynamics.models import deep_linear as model
from dynamics.tasks.linear_teacher import linear_teacher
from tests.helpers import config as load_config
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


def u_errors(config):
  """Max relative error of every u_i(t) of every seed: `[seeds, modes]`."""
  pt = run(config)
  emp = np.moveaxis(pt.out["u"], 1, -1)
  u0 = np.zeros(8)
  u0[:4] = config.init.u0
  pred = theory.mode_strength(pt.t, pt.out["task_s"][0], u0, config.model.depth)
  return metrics.compare(emp, np.moveaxis(np.asarray(pred), 0, -1))["max_rel_error"]


@pytest.mark.parametrize("depth, horizon", [(2, 16.0), (3, 24.0)])
def test_aligned_init_follows_exact_solution(depth, horizon):
  with jax.enable_x64(True):
    err = u_errors(aligned_config(depth, 1e-3, horizon))
    err_coarse = u_errors(aligned_config(depth, 2e-3, horizon))
  # Gradient descent differs from the flow by O(lr) (about 1.5 lr s_max per
  # mode here); the bound is 1e-2 at small lr.
  assert err.shape == (3, 8)
  assert np.max(err) < 1e-2, err
  # ... and that is the whole discrepancy: it halves with the step size.
  top = err[:, :4]
  np.testing.assert_allclose(err_coarse[:, :4] / top, 2.0, rtol=0.1)


def test_random_init_learning_times():
  c = load_config("deep_linear")
  c.num_seeds = 16
  c.model.depth, c.model.width = 2, 128
  c.init.name, c.init.scale = "random", 0.05
  c.train.lr, c.train.num_steps, c.train.log_every = 0.01, 1200, 5
  pt = run(c)
  rows = pt.summary["modes"]
  s = pt.out["task_s"][0, :4]
  u = np.moveaxis(pt.out["u"], 1, -1)[:, :4]
  measured = metrics.time_to_fraction(pt.t, u, s)
  predicted = np.stack([theory.learning_time(s, u0[:4], 2) for u0 in pt.out["u0_eff"]])
  # Small-init approximation (effective u0, no mode coupling) plus O(lr):
  # a few percent; the bound is 10%.
  np.testing.assert_array_less(np.abs(measured / predicted - 1), 0.10)
  assert max(r["learning_time_rel_error_max"] for r in rows) < 0.10


def test_seed_independent_of_batch():
  c = aligned_config(2, 0.01, 4.0)
  c.init.name = "random"
  keys = engine.seed_keys(c.seed, 8)
  # The randomness is bitwise the same: seed i's key is fold_in(PRNGKey(seed), i)
  # whatever batch it is in, and so are its initial parameters.
  np.testing.assert_array_equal(keys[3], jax.random.fold_in(jax.random.PRNGKey(c.seed), 3))
  np.testing.assert_array_equal(engine.seed_keys(c.seed, 1, start=3)[0], keys[3])
  sizes = model.layer_sizes(8, 8, 10, 2)
  init = lambda k: model.init_random(k, sizes, 0.1)
  for alone, batched in zip(init(keys[3]), jax.vmap(init)(keys)):
    np.testing.assert_array_equal(alone, batched[3])
  with jax.enable_x64(True):
    train, hp = exp.make_train(c), experiments.hparams(exp, c)
    batch = engine.run_seeds(train, keys, hp)
    alone = engine.run_seeds(train, keys[3:4], hp)
  # Trajectories agree to rounding, not bitwise: XLA picks a different dot
  # kernel (reduction order) for a batch of 1 than of 8, a 1-ulp difference
  # (3e-7 relative in float32, checked here in float64).
  for name in ("loss", "u"):
    np.testing.assert_allclose(alone[name][0], batch[name][3], rtol=1e-12, atol=1e-14)
  assert not np.allclose(batch["loss"][0], batch["loss"][3])
  # Every seed reports the task it trained on, the one make_task draws, which
  # `analyze` reads instead of drawing it again.
  with jax.enable_x64(True):
    task = exp.make_task(c, hp)
  for name in ("s", "sigma_yx", "sigma_yy_trace"):
    for row in batch[f"task_{name}"]:
      np.testing.assert_allclose(row, getattr(task, name), rtol=1e-12, atol=1e-14)


def test_aligned_init_is_balanced_and_exact():
  with jax.enable_x64(True):
    task = linear_teacher(jax.random.PRNGKey(1), d_in=6, d_out=5, num_samples=40,
                          singular_values=np.array([2.0, 1.0, 0.5]), dtype=np.float64)
    u0 = np.array([0.1, 0.2, 0.3, 0.0, 0.0])
    params = model.init_aligned(jax.random.PRNGKey(2), [6, 7, 9, 5], u0,
                                task.u_modes, task.v_modes)
    np.testing.assert_allclose(model.end_to_end(params),
                               task.u_modes @ np.diag(u0) @ task.v_modes.T, atol=1e-12)
    for lower, upper in zip(params[:-1], params[1:]):
      np.testing.assert_allclose(upper.T @ upper, lower @ lower.T, atol=1e-12)


def test_task_is_whitened_with_prescribed_spectrum():
  with jax.enable_x64(True):
    task = linear_teacher(jax.random.PRNGKey(0), d_in=8, d_out=4, num_samples=30,
                          singular_values=np.array([3.0, 1.0]), dtype=np.float64)
    np.testing.assert_allclose(task.x.T @ task.x / 30, np.eye(8), atol=1e-12)
    np.testing.assert_allclose(task.s, [3.0, 1.0, 0.0, 0.0], atol=1e-12)
    noisy = linear_teacher(jax.random.PRNGKey(0), d_in=8, d_out=4, num_samples=30,
                           singular_values=np.array([3.0, 1.0]), noise_var=0.1,
                           dtype=np.float64)
    # SVD signs follow the teacher's, so mode i means the same direction.
    assert np.all(np.sum(noisy.u_modes[:, :2] * task.u_modes[:, :2], 0) > 0.9)


def test_minibatch_and_optimizers_run():
  for optimizer, batch in (("sgd", 16), ("momentum", 0), ("adam", 0)):
    c = aligned_config(2, 0.01, 2.0)
    c.precision = "float32"
    c.train.optimizer, c.train.batch_size = optimizer, batch
    out = run(c).out
    assert out["loss"].shape == (3, c.train.num_steps // c.train.log_every + 1)
    assert np.all(np.isfinite(out["loss"])) and out["loss"][0, -1] < out["loss"][0, 0]


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
])
def test_bad_config_names_the_field(field, value, monkeypatch):
  c = load_config("deep_linear", ["sweep={}"])
  section, _, name = field.rpartition(".")
  (c[section] if section else c)[name] = value
  monkeypatch.setattr(engine, "trajectory", lambda *a, **k: pytest.fail("compiled"))
  with pytest.raises(ValueError, match=field.replace(".", r"\.")):
    sweep.plan(c)


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
  with jax.enable_x64(True):
    out = {}
    for form in ("statistics", "samples"):
      c.train.formulation = form
      fn = exp.make_train(c)
      out[form] = jax.device_get(engine.run_seeds(fn, engine.seed_keys(0, 3),
                                                  experiments.hparams(exp, c)))
  for k in ("loss", "u"):
    np.testing.assert_allclose(out["statistics"][k], out["samples"][k], rtol=1e-9,
                               atol=1e-12)
  assert out["samples"]["loss"][:, -1].max() < 0.5 * out["samples"]["loss"][:, 0].min()
  c.train.batch_size = 10
  c.train.formulation = "auto"
  assert not exp.uses_statistics(c)  # minibatches need the samples
  c.train.formulation = "statistics"
  with pytest.raises(ValueError, match="train.formulation"):
    exp.validate(c)


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
  s = pt.out["task_s"][0]
  floor = 0.5 * (pt.out["task_sigma_yy_trace"][0] - np.sum(s[:4] ** 2))
  np.testing.assert_allclose(pt.pred["loss"][:, -1], floor, rtol=1e-6)
  assert floor > 0.1


def test_saxe2014_depth_direction():
  # configs/papers/saxe2014_depth.py at reduced size: at lr ~ 1/N the
  # aligned (u0 = 1) init learns no slower at depth 8 than at depth 1, and on
  # the theory; the scaled Gaussian's weakest mode (s = 3) is several times
  # slower (measured at full size: 0.70 at depth 1, 5.6 at depth 8).
  c = load_config("papers/saxe2014_depth")
  c.num_seeds = 4
  c.sweep.model.depth = (1, 8)
  c.sweep.init.name = ("aligned", "random")
  c.train.num_steps, c.train.log_every = 5000, 5
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
  # configs/papers/saxe2014_modes.py at reduced size: weaker modes are
  # learned later, nearly in proportion to 1/s (the log(s/u0) factor makes
  # the s = 4 to s = 0.5 ratio about 5.5 rather than 8).
  c = load_config("papers/saxe2014_modes")
  c.num_seeds = 8
  c.model.width = 16
  c.train.num_steps = 2000
  modes = run(c).summary["modes"]
  t = [m["learning_time_measured"] for m in modes]
  assert t == sorted(t), t
  assert 4 < t[-1] / t[0] < 8, t
