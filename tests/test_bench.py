"""scripts/bench.py at tiny size: every workload runs, rows carry the keys, and
the sufficient-statistics formulation trains the same trajectories."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dynamics.models import deep_linear
from tests.helpers import ROOT

KEYS = {"workload", "seeds", "steps", "seed_steps_per_s", "compile_s", "run_s", "gflops",
        "peak_fraction", "peak_rss_mb", "machine"}
MACHINE = {"cpu_model", "cpu_flags", "cpu_cores", "cpu_caches", "backend", "device_kind",
           "jax", "jaxlib", "xla_flags", "compiler_options"}


def test_stats_loss_equals_sample_loss_and_trains_the_same():
  with jax.enable_x64(True):
    k = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(k[0], (50, 6)) * jnp.array([1, 2, 0.5, 1, 3, 1])  # not whitened
    y = x @ jax.random.normal(k[1], (6, 4)) + 0.1 * jax.random.normal(k[2], (50, 4))
    stats = deep_linear.statistics(x, y)
    sample = lambda w: 0.5 * jnp.mean(jnp.sum((deep_linear.apply(w, x) - y) ** 2, -1))
    w = deep_linear.init_random(jax.random.PRNGKey(3), [6, 7, 7, 4], 0.7, jnp.float64)
    np.testing.assert_allclose(deep_linear.stats_loss(w, *stats), sample(w), rtol=1e-12)
    gd = lambda loss: jax.jit(lambda w_: jax.lax.fori_loop(
        0, 200, lambda _, q: jax.tree_util.tree_map(lambda p, g: p - 0.01 * g, q,
                                                    jax.grad(loss)(q)), w_))
    a = gd(sample)(w)
    b = gd(lambda q: deep_linear.stats_loss(q, *stats))(w)
    for p, q in zip(a, b):
      np.testing.assert_allclose(p, q, rtol=1e-10, atol=1e-12)


def test_stats_loss_keeps_relative_precision_near_the_minimum():
  """float32, noiseless teacher, W within 1e-4 of W*: the loss (~1e-8) is far
  below eps tr Sigma_yy (~1e-6), where `1/2 tr Sigma_yy - tr(W Sigma_yx^T) + ...`
  has nothing left; the form around W* keeps it to float32 rounding."""
  k = jax.random.split(jax.random.PRNGKey(1), 3)
  x = jax.random.normal(k[0], (64, 8))
  w_t = jax.random.normal(k[1], (8, 8))
  y = x @ w_t.T
  w = [w_t + 1e-4 * jax.random.normal(k[2], (8, 8))]
  with jax.enable_x64(True):
    exact = 0.5 * np.mean(np.sum((np.asarray(x, np.float64) @ np.asarray(w[0], np.float64).T
                                  - np.asarray(y, np.float64)) ** 2, -1))
  got = deep_linear.stats_loss(w, *deep_linear.statistics(x, y))
  assert exact < 1e-6
  np.testing.assert_allclose(got, exact, rtol=2e-2)


def bench(*workloads):
  proc = subprocess.run(
      [sys.executable, "scripts/bench.py", *workloads, "--seeds", "2", "--steps", "20",
       "--repeats", "1", "--json", "--in_process", "--ntk_size", "8", "64", "32"],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [json.loads(l) for l in proc.stdout.strip().splitlines()]
  assert [r["workload"] for r in rows] == list(workloads)
  for r in rows:
    assert KEYS <= set(r) and r["seeds"] == 2, r
    assert MACHINE <= set(r["machine"]) and r["machine"]["cpu_cores"] >= 1, r["machine"]
    if r["workload"] == "empirical_ntk":
      assert r["seconds"] > 0
    elif r["workload"] == "sweep":
      assert r["overhead"] > -1
    else:
      assert r["seed_steps_per_s"] > 0 and r["loop_speedup"] > 0, r
  return rows


def test_a_workload_runs_tiny():
  """A workload through the engine's runner, as every row runs (all of them:
  --runslow); a training row's rate is the seed-steps it ran (2 seeds x 20
  steps) over its measured run time."""
  row, = bench("deep_linear")
  assert (row["seeds"], row["steps"]) == (2, 20), row
  assert row["seed_steps_per_s"] * row["run_s"] == pytest.approx(2 * 20, rel=1e-9), row


@pytest.mark.slow
def test_every_workload_runs_tiny():
  rows = bench("deep_linear", "deep_linear_stats", "deep_linear_small",
               "deep_linear_small_stats", "relu_train", "relu_train_sharpness", "lsa_icl",
               "lsa_icl_shared", "lsa_icl_tokens", "empirical_ntk", "sweep")
  trained = [r for r in rows if r["workload"] not in ("empirical_ntk", "sweep")]
  assert len(trained) == 9
  for r in trained:
    assert r["seed_steps_per_s"] * r["run_s"] == pytest.approx(2 * 20, rel=1e-9), r


def test_unknown_workload_is_an_error():
  proc = subprocess.run([sys.executable, "scripts/bench.py", "resnet"], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2 and "resnet" in proc.stderr
