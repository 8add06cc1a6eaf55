"""The engine: the step it owns (optimizers, time, keys, divergence), segments,
chunks of rows and devices, on the toy experiment of tests/experiments/toy.py."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dynamics import _rows, simulate
from dynamics import train as engine
from dynamics.experiments import Trajectory
from tests.experiments import toy
from tests.helpers import ROOT


def run(overrides=(), **kwargs):
  from dynamics.config import set_field
  c = toy.get_config()
  for field, value in dict(overrides).items():
    set_field(c, field, value)
  results, report = simulate(c, **kwargs)
  return results


def test_logs_at_steps_zero_to_num_steps_against_exact_descent():
  """GD on the quadratic contracts w_i - 1 by (1 - lr a_i) a step: the logged
  w at steps 0, 5, ..., 20 is that to float32 rounding (a few ulp of |w|)."""
  (r,) = run()
  traj = r.traj
  assert isinstance(traj, Trajectory)
  np.testing.assert_array_equal(traj.step, [0, 5, 10, 15, 20])
  np.testing.assert_allclose(traj.t, np.tile(0.1 * traj.step, (3, 1)), rtol=1e-6)
  w0 = traj.logged["w"][:, 0]
  a = np.linspace(0.5, 2.0, 3)
  exact = 1 + (w0[:, None] - 1) * (1 - 0.1 * a) ** traj.step[None, :, None]
  np.testing.assert_allclose(traj.logged["w"], exact, rtol=2e-6, atol=2e-6)
  assert r.summary["w.rel_error_max"] < 1e-5 and r.summary["diverged_seeds"] == 0


@pytest.mark.parametrize("name, opt", [("momentum", optax.sgd(0.1, momentum=0.9)),
                                       ("adam", optax.adam(0.1))])
def test_optimizers_are_optax(name, opt):
  """The runner's step `p - lr d(g)` with `d` the direction of `train.optimizer`
  is optax's own update. The compiled scan may round a multiply-add
  differently from optax called step by step: an ulp or two a step, so 20
  steps agree to 20 x 2 x 2^-23 ~ 5e-6 relative (a wrong momentum or bias
  correction is off by O(1))."""
  (r,) = run({"train.optimizer": name, "num_seeds": 1})
  a = jnp.linspace(0.5, 2.0, 3)
  w = jnp.asarray(r.traj.logged["w"][0, 0])
  state = opt.init(w)
  grad = jax.jit(jax.grad(lambda w: 0.5 * jnp.sum(a * (w - 1.0) ** 2)))
  for k in range(20):
    u, state = opt.update(grad(w), state, w)
    w = optax.apply_updates(w, u)
  np.testing.assert_allclose(r.traj.logged["w"][0, -1], np.asarray(w), rtol=5e-6)


def test_time_accumulates_the_step_applied():
  """Per-seed step scales and a cosine decay: t is the sum of the steps
  taken, to float32 rounding (Kahan-summed, so no drift with the steps)."""
  (r,) = run({"lr_scale": 0.5, "train.decay": "cosine", "train.num_steps": 400,
              "train.log_every": 100})
  scale = r.traj.start["lr_scale"]
  cos = 0.5 * (1 + np.cos(np.pi * np.arange(400) / 400))
  want = 0.1 * scale[:, None] * np.concatenate([[0], np.cumsum(cos)[99::100]])[None]
  np.testing.assert_allclose(r.traj.t, want, rtol=2e-7)
  assert len(set(scale)) == 3  # each seed its own step


def test_step_keys_per_seed_and_shared():
  """With the init ignoring its key, seeds differ only through the keys of
  their steps: per seed they do, `train.batches='shared'` they do not; the same
  seed twice is the same."""
  base = {"noise": 0.3, "random_init": False}
  (per,) = run(base)
  (shared,) = run({**base, "train.batches": "shared"})
  w = per.traj.logged["w"][:, -1]
  assert not np.allclose(w[0], w[1])
  np.testing.assert_array_equal(shared.traj.logged["w"][0], shared.traj.logged["w"][1])
  (again,) = run(base)
  np.testing.assert_array_equal(per.traj.logged["w"], again.traj.logged["w"])


def test_divergence_is_recorded_and_masked():
  """lr 1.5 on curvatures up to 2: |1 - lr a| > 1 for a > 4/3, the loss grows
  without bound and turns inf; the step it does is recorded, values after it NaN."""
  (r,) = run({"train.lr": 1.5, "train.num_steps": 400, "train.log_every": 20})
  d = r.traj.diverged_at
  assert np.all(d > 0) and r.summary["diverged_seeds"] == 3
  for s in range(3):
    after = r.traj.step > d[s]
    assert np.all(np.isnan(r.traj.logged["loss"][s, after]))
    assert np.all(np.isfinite(r.traj.logged["loss"][s, ~after]))


def test_segments_and_chunks_do_not_change_a_row(monkeypatch):
  """One trajectory cut into segments of 1, 2 or all logged steps, or as the
  runner cuts it by time (two timed segments, then the rest at once), is the
  same bit for bit (every segment runs one compiled program); rows in chunks
  of 1 or 2 equal one vmap to rounding."""
  c = toy.get_config()
  c.train.num_steps, c.train.log_every, c.num_seeds = 40, 5, 5
  from dynamics import sweep
  p = sweep.plan(c)
  g = p.groups[0]
  outs = []
  monkeypatch.setattr(engine, "SEGMENT_S", 1e6)  # after two segments, the rest in one
  for seg, adaptive, calls in ((1, False, 8), (2, False, 4), (8, False, 1), (1, True, 3)):
    runner = engine.Runner(p.experiment, lambda row: c, lambda row, sh: sh["data"],
                           engine.Schedule.of(c), g.runner.rows,
                           {"data": p.data[0]}, seg_logs=seg, adaptive=adaptive)
    outs.append(runner.run(0, 5))
    assert runner.calls == calls
  for other in outs[1:]:
    for a, b in zip(jax.tree_util.tree_leaves(outs[0][:3]), jax.tree_util.tree_leaves(other[:3])):
      np.testing.assert_array_equal(a, b)
  for chunk in (1, 2):
    runner = engine.Runner(p.experiment, lambda row: c, lambda row, sh: sh["data"],
                           engine.Schedule.of(c), g.runner.rows, {"data": p.data[0]},
                           chunk=chunk)
    got = runner.run(0, 5)
    np.testing.assert_allclose(got[1]["w"], outs[0][1]["w"], rtol=1e-6)


def test_four_devices_equal_one():
  """5 seeds over 4 fake CPU devices (padded to 8) equal the 1-device run."""
  script = textwrap.dedent("""
      import sys, numpy as np, jax
      sys.path.insert(0, %r)
      import dynamics
      from tests.experiments import toy
      assert jax.device_count() == 4, jax.devices()
      c = toy.get_config(); c.num_seeds = 5
      four, _ = dynamics.simulate(c)
      one, _ = dynamics.simulate(c, devices=jax.devices()[:1])
      np.testing.assert_array_equal(four[0].traj.logged["w"], one[0].traj.logged["w"])
      print("ok")
  """ % ROOT)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


def test_batched_lapack_runs_on_one_device():
  """A row function with a decomposition that vmap batches runs on one CPU
  device (two devices each inside a batched LAPACK call can deadlock on the
  shared thread pool: seen with a batched QR on two cores), one without on
  every device; `dynamics.linalg`'s decompositions vmap as loops and do not count."""
  from dynamics import linalg
  rows = {"key": engine.seed_keys(0, 8)}
  cpu = [d for d in jax.devices() if d.platform == "cpu"]
  qr = _rows.vmap_rows(lambda r, s: jnp.linalg.qr(jax.random.normal(r["key"], (4, 4)))[0])
  loop = _rows.vmap_rows(lambda r, s: linalg.qr(jax.random.normal(r["key"], (4, 4)))[0])
  plain = _rows.vmap_rows(lambda r, s: jnp.sum(jax.random.normal(r["key"], (4, 4))))
  for fn, n in ((qr, 1), (loop, len(cpu)), (plain, len(cpu))):
    assert len(_rows.plan_rows(_rows.profile(fn, rows, None), 8, devices=cpu).devices) == n
  np.testing.assert_allclose(_rows.run_rows(qr, rows, devices=cpu),
                             _rows.run_rows(loop, rows, devices=cpu), atol=1e-5)


def test_cpu_devices_from_the_environment():
  """`import dynamics` gives one CPU device per core (here forced to 2 by
  DYNAMICS_CPU_DEVICES); a bad value is a ValueError naming the variable."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(DYNAMICS_CPU_DEVICES="2", JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", "import dynamics, jax; print(jax.device_count())"],
                       env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0 and out.stdout.strip() == "2", out.stderr[-2000:]
  env["DYNAMICS_CPU_DEVICES"] = "two"
  out = subprocess.run([sys.executable, "-c", "import dynamics"], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode != 0 and "DYNAMICS_CPU_DEVICES" in out.stderr


def test_cpu_compiler_options(monkeypatch):
  """The engine compiles with LLVM level 1 on a CPU; DYNAMICS_CPU_OPT_LEVEL
  overrides it, a bad value fails naming it, a user's XLA_FLAGS wins."""
  from dynamics.devices import compiler_options
  monkeypatch.delenv("DYNAMICS_CPU_OPT_LEVEL", raising=False)
  monkeypatch.setenv("XLA_FLAGS", "")
  assert compiler_options("cpu") == {"xla_backend_optimization_level": 1}
  assert compiler_options("gpu") is None
  monkeypatch.setenv("DYNAMICS_CPU_OPT_LEVEL", "3")
  assert compiler_options("cpu") == {"xla_backend_optimization_level": 3}
  monkeypatch.setenv("DYNAMICS_CPU_OPT_LEVEL", "fast")
  with pytest.raises(ValueError, match="DYNAMICS_CPU_OPT_LEVEL"):
    compiler_options("cpu")
  monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=2")
  assert compiler_options("cpu") is None


def test_chunk_follows_the_largest_array():
  """A row whose largest array exceeds CHUNK_BYTES runs one at a time; small
  rows vmap in chunks that fit it; few rows are not chunked; a large array the
  rows share does not shrink the chunks; `chunkable=False` (shared batches)
  runs every row at once."""
  rows = {"key": engine.seed_keys(0, 4096)}
  cpu = [d for d in jax.devices() if d.platform == "cpu"][:1]
  big = _rows.vmap_rows(lambda r, s: jnp.sum(jax.random.normal(r["key"], (512, 1024))))
  small = _rows.vmap_rows(lambda r, s: jnp.sum(jax.random.normal(r["key"], (64, 16))))
  plan = lambda fn, n=4096, shared=None, **kw: _rows.plan_rows(
      _rows.profile(fn, jax.tree_util.tree_map(lambda a: a[:n], rows), shared), n,
      devices=cpu, **kw)
  assert plan(big).chunk == 1
  chunk = plan(small).chunk
  assert chunk * 64 * 16 * 4 <= _rows.CHUNK_BYTES < 2 * chunk * 64 * 16 * 4
  assert plan(small, 8).chunk == 0
  data = jnp.ones((512, 1024))
  with_data = _rows.vmap_rows(
      lambda r, s: jnp.sum(jax.random.normal(r["key"], (64, 16))) + jnp.sum(jnp.tanh(s)))
  assert plan(with_data, shared=data).chunk == chunk
  assert plan(small, chunk=0).chunk == 0 and plan(big, chunkable=False).chunk == 0
