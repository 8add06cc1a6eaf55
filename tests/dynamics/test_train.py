"""The engine: logging schedule, minibatches, and sharding over devices."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dynamics import _rows, progress
from dynamics import train as engine
from tests.helpers import ROOT


def quadratic_run(key, lr, num_steps=20, log_every=5):
  """GD on L = |theta|^2 / 2 contracts theta by (1 - lr) per step."""
  theta0 = jax.random.normal(key, (3,))
  loss = lambda th, x: 0.5 * jnp.sum(th**2) + 0.0 * jnp.sum(x)
  return engine.trajectory(
      theta0, loss_fn=loss, data=(jnp.zeros((4, 1)),), optimizer=optax.sgd(lr),
      metrics_fn=lambda th: {"theta": th}, num_steps=num_steps,
      log_every=log_every)


def test_logs_at_steps_zero_to_num_steps():
  state, m = quadratic_run(jax.random.PRNGKey(0), 0.1)
  theta0 = m["theta"][0]
  assert m["theta"].shape == (5, 3) and int(state.step) == 20
  expected = theta0 * (0.9 ** np.arange(0, 21, 5))[:, None]
  np.testing.assert_allclose(m["theta"], expected, rtol=1e-5)


def test_progress_bar_counts_every_seed_step():
  """The engine's bar: the steps of a row are counted while it is traced, the
  ticks of every chunk of rows (one host call each, not one per seed) move it,
  and it ends at seeds x steps whatever the chunking."""
  run = lambda k, lr: quadratic_run(k, lr, num_steps=200, log_every=10)[1]["theta"]
  keys = engine.seed_keys(0, 6)
  for chunk, execs in ((0, 1), (1, 6), (3, 2)):
    with progress.bar(6 * 200, disable=True) as bar:
      engine.run_seeds(run, keys, 0.1, chunk=chunk, devices=jax.devices()[:1])
      jax.effects_barrier()
    # 20 logged intervals, a tick each, for every chunk of rows
    assert bar.ticks == 20 * execs and bar.n == 6 * 200, (chunk, bar.ticks, bar.n)
  fn = _rows.vmap_rows(run, 1, batched=False)
  assert _rows.plan_rows(fn, keys, 0.1).steps == 200


def test_minibatches_differ_by_step_and_seed():
  x = jnp.arange(10.0)[:, None]
  # The gradient of mean(x * theta) is the batch mean, so theta records the
  # batches drawn; full batch would move it by lr * 4.5 every step.
  loss = lambda th, x: jnp.mean(x[:, 0]) * th
  run = lambda key: engine.trajectory(
      jnp.zeros(()), loss_fn=loss, data=(x,), optimizer=optax.sgd(1.0),
      metrics_fn=lambda th: {"theta": th}, num_steps=6, log_every=1, key=key,
      batch_size=3)[1]["theta"]
  a, b = run(jax.random.PRNGKey(0)), run(jax.random.PRNGKey(1))
  steps = -np.diff(np.asarray(a))
  assert len(set(np.round(steps, 6))) > 1 and not np.allclose(a, b)
  np.testing.assert_array_equal(a, run(jax.random.PRNGKey(0)))


def test_bad_log_every():
  try:
    quadratic_run(jax.random.PRNGKey(0), 0.1, num_steps=7, log_every=5)
  except ValueError as e:
    assert "log_every" in str(e)
  else:
    raise AssertionError("num_steps not a multiple of log_every was accepted")


def test_four_devices_equal_one():
  """5 seeds over 4 fake CPU devices (padded to 8) equal the 1-device run."""
  script = textwrap.dedent("""
      import sys, numpy as np, jax
      sys.path.insert(0, %r)
      from tests.dynamics.test_train import quadratic_run
      from dynamics import train as engine
      assert jax.device_count() == 4, jax.devices()
      run = lambda k, lr: quadratic_run(k, lr)[1]["theta"]
      keys = engine.seed_keys(0, 5)
      four = engine.run_seeds(run, keys, 0.1)
      one = engine.run_seeds(run, keys, 0.1, devices=jax.devices()[:1])
      assert four.shape == (5, 5, 3)
      np.testing.assert_array_equal(four, one)
      print("ok")
  """ % ROOT)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


def test_cpu_devices_default_and_batched_lapack_guard():
  """`import dynamics` gives one CPU device per core (here forced to 2 by
  DYNAMICS_CPU_DEVICES); a train function with a batched LAPACK kernel runs its
  rows on one device (two devices can hang inside it: dynamics._rows.row_devices),
  one without runs on both, and the results equal a one-device run."""
  script = textwrap.dedent("""
      import sys, numpy as np
      sys.path.insert(0, %r)
      import dynamics
      import jax, jax.numpy as jnp
      from dynamics import _rows
      from dynamics import train as engine
      assert jax.device_count() == 2, jax.devices()
      def train(key, scale):
        a = jax.random.normal(key, (6, 6)) * scale
        return jnp.linalg.svd(a, compute_uv=False)
      def plain(key, scale):
        return jax.random.normal(key, (6,)) * scale
      keys, scales = engine.seed_keys(0, 64), jnp.linspace(1, 2, 64)
      for f, n in ((train, 1), (plain, 2)):
        fn = _rows.vmap_rows(f, 1)
        assert len(_rows.row_devices(fn, keys, scales)) == n, f
        got = _rows.run_rows(fn, keys, scales)
        one = _rows.run_rows(fn, keys, scales, devices=jax.devices()[:1])
        np.testing.assert_array_equal(got, one)
      # the helpers in dynamics.linalg vmap as loops of single decompositions
      from dynamics.linalg import svd
      fn = _rows.vmap_rows(lambda k, s: svd(jax.random.normal(k, (6, 6)) * s)[1], 1)
      assert len(_rows.row_devices(fn, keys, scales)) == 2
      # a row without decompositions or FFTs, or with them only inside
      # dynamics.linalg's loops, is planned without lowering it
      class NoLower:
        def __init__(self, f): self.f = f
        def __call__(self, *a, **k): return self.f(*a, **k)
        def lower(self, *a, **k): raise AssertionError("lowered")
      for f in (lambda k, s: plain(k, s) @ jnp.ones((6, 6)),
                lambda k, s: svd(jax.random.normal(k, (6, 6)) * s)[1]):
        fn = _rows.vmap_rows(f, 1)
        spy = fn._replace(fn=NoLower(fn.fn))
        assert len(_rows.row_devices(spy, keys, scales)) == 2
      print("ok")
  """ % ROOT)
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(DYNAMICS_CPU_DEVICES="2", JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]
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


def regression_run(key, lr, width=8, num_samples=24):
  """GD of a two-layer tanh net on fixed data: matmuls whose batching could
  change the result if chunking were wrong."""
  k = jax.random.split(key, 3)
  x = jax.random.normal(jax.random.PRNGKey(7), (num_samples, 5))
  y = jnp.sin(x[:, :1])
  w = (jax.random.normal(k[0], (5, width)), jax.random.normal(k[1], (width, 1)))
  loss = lambda p, x, y: 0.5 * jnp.mean((jnp.tanh(x @ p[0]) @ p[1] - y) ** 2)
  return engine.trajectory(w, loss_fn=loss, data=(x, y), optimizer=optax.sgd(lr),
                           metrics_fn=lambda p: {"loss": loss(p, x, y), "w": p[1]},
                           num_steps=30, log_every=10)[1]


def test_chunked_rows_equal_one_vmap():
  """Rows looped in chunks (even, uneven with padding, one at a time, the
  automatic choice) give what one vmap over every row gives."""
  with jax.enable_x64(True):
    fn = _rows.vmap_rows(regression_run, 1)
    keys = engine.seed_keys(0, 11)
    lrs = jnp.linspace(0.05, 0.5, 11)
    ref = _rows.run_rows(fn, keys, lrs, chunk=0, devices=jax.devices()[:1])
    for chunk in (1, 3, 4, None):
      got = _rows.run_rows(fn, keys, lrs, chunk=chunk)
      for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(ref)):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    shared = engine.run_seeds(regression_run, keys, 0.1, chunk=2)
    alone = engine.run_seeds(regression_run, keys[5:6], 0.1, chunk=0)
    np.testing.assert_allclose(shared["loss"][5], alone["loss"][0], rtol=1e-12)


def test_chunk_follows_the_largest_array():
  """A row whose largest array exceeds CHUNK_BYTES runs one at a time; small
  rows vmap in chunks that fit it; few rows are not chunked; rows sharing
  large random draws every step are not chunked."""
  keys = engine.seed_keys(0, 4096)
  big = _rows.vmap_rows(lambda k: jnp.sum(jax.random.normal(k, (512, 1024))), 0)
  small = _rows.vmap_rows(lambda k: jnp.sum(jax.random.normal(k, (64, 16))), 0)
  cpu = [d for d in jax.devices() if d.platform == "cpu"][:1]
  assert _rows.plan_rows(big, keys, devices=cpu).chunk == 1
  chunk = _rows.plan_rows(small, keys, devices=cpu).chunk
  assert chunk * 64 * 16 * 4 <= _rows.CHUNK_BYTES < 2 * chunk * 64 * 16 * 4
  assert _rows.plan_rows(small, keys[:8], devices=cpu).chunk == 0
  # a large array the rows share (a training set) does not shrink the chunks
  data = jnp.ones((512, 1024))
  with_data = _rows.vmap_rows(
      lambda k: jnp.sum(jax.random.normal(k, (64, 16))) + jnp.sum(jnp.tanh(data)), 0)
  assert _rows.plan_rows(with_data, keys, devices=cpu).chunk == chunk
  assert _rows.plan_rows(small, keys, devices=cpu, chunk=0).chunk == 0
  # a loop drawing numbers common to every row, as large as `big`'s: chunks
  # would each draw them again, so the rows vmap at once; drawn per row, they
  # run one at a time
  def steps(shared):
    def body(c, i):
      x = jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(3) if shared else c[1], i),
                            (512, 1024))
      return (c[0] + jnp.mean(x * c[0]), c[1]), None
    return _rows.vmap_rows(lambda k: jax.lax.scan(body, (1.0, k), jnp.arange(3))[0][0], 0)
  assert _rows.plan_rows(steps(True), keys, devices=cpu).chunk == 0
  assert _rows.plan_rows(steps(False), keys, devices=cpu).chunk == 1
