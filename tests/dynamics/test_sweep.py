"""The sweep engine: grouping, sharding, kill-and-resume, divergence, bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
import pandas as pd
import pytest

from dynamics import load_sweep, run_sweep, sweep
from dynamics import train as engine
from dynamics.experiments import deep_linear as exp
from tests.helpers import ROOT, load_config


def small_config(precision="float64"):
  c = load_config("deep_linear")
  c.precision = precision
  c.num_seeds = 3
  c.model.width = 16
  c.task.d_in = c.task.d_out = 4
  c.task.num_samples = 16
  c.task.singular_values = (2.0, 1.0)
  c.train.lr, c.train.num_steps, c.train.log_every = 0.02, 200, 20
  c.sweep = ml_collections.ConfigDict()
  c.sweep.train = ml_collections.ConfigDict({"lr": (0.02, 0.04)})        # stacks
  c.sweep.model = ml_collections.ConfigDict({"width": (8, 16)})           # groups
  return c


def test_grid_equals_separate_runs(tmp_path):
  c = small_config()
  points, groups = sweep.plan(c)
  assert len(points) == 4 and sorted(len(g.points) for g in groups) == [2, 2]
  with jax.enable_x64(True):
    run_sweep(c, str(tmp_path), verbose=False)
    table, arrays = load_sweep(str(tmp_path))
    for p, point in enumerate(points):
      single = exp.run(sweep.point_config(c, point))["arrays"]
      # Rounding only: a batch of 6 rows may reduce in another order than 3.
      for name in ("loss", "u", "u_pred"):
        np.testing.assert_allclose(arrays[p][name], single[name], rtol=1e-12, atol=1e-14)
      rows = table[table.point == p]
      assert set(rows["train.lr"]) == {point["train.lr"]}
      assert set(rows["model.width"]) == {point["model.width"]}
      np.testing.assert_allclose(rows["loss"].to_numpy(), single["loss"].reshape(-1),
                                 rtol=1e-12)
  assert len(table) == 4 * 3 * 11
  assert {"seed", "step", "t", "u_0", "u_0_pred", "u_0_rel_error", "loss_pred",
          "loss_rel_error",
          "diverged", "diverged_step"} <= set(table.columns)
  summary = pd.read_csv(tmp_path / "summary.csv")
  assert len(summary) == 4 and (summary["diverged_seeds"] == 0).all()


SWEEP_SCRIPT = """
import sys, jax, ml_collections
sys.path.insert(0, {root!r})
jax.config.update("jax_enable_x64", True)
from tests.dynamics.test_sweep import small_config
from dynamics import run_sweep
c = small_config()
c.num_seeds = {seeds}
c.train.num_steps, c.train.log_every = {steps}, {steps} // 10
run_sweep(c, {out!r}, memory_budget_mb={budget}, verbose=False)
"""


def sweep_process(out, seeds=3, budget=2048.0, devices=1, steps=200):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  code = SWEEP_SCRIPT.format(root=ROOT, out=str(out), seeds=seeds, budget=budget,
                             steps=steps)
  return subprocess.Popen([sys.executable, "-c", code], env=env, cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_four_devices_equal_one(tmp_path):
  one, four = sweep_process(tmp_path / "one"), sweep_process(tmp_path / "four", devices=4)
  for proc in (one, four):
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
  t1, _ = load_sweep(str(tmp_path / "one"))
  t4, _ = load_sweep(str(tmp_path / "four"))
  # 12 rows per group padded to 12 over 4 devices: 3 rows each instead of 12
  # on one device, so agreement is to rounding (float64).
  pd.testing.assert_frame_equal(t1, t4, check_exact=False, rtol=1e-12, atol=1e-14)


def test_kill_and_resume_gives_the_same_table(tmp_path):
  # A tiny memory budget splits every group into 1-row chunks: many files,
  # each long enough (20000 steps) for the kill to land mid-sweep.
  budget, steps = 0.02, 20000
  reference = sweep_process(tmp_path / "ref", budget=budget, steps=steps)
  _, err = reference.communicate(timeout=600)
  assert reference.returncode == 0, err[-3000:]
  chunks = tmp_path / "killed" / "chunks"
  proc = sweep_process(tmp_path / "killed", budget=budget, steps=steps)
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if chunks.exists() and len([f for f in os.listdir(chunks) if f.endswith(".npz")]) >= 2:
      break
    time.sleep(0.05)
  assert proc.poll() is None, "sweep finished before it could be killed"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  done = sorted(f for f in os.listdir(chunks) if f.endswith(".npz"))
  total = sum(len(json.load(open(tmp_path / "ref" / "grid.json"))["groups"][g]) * 3
              for g in range(2))
  assert 2 <= len(done) < total
  assert not (tmp_path / "killed" / "results.parquet").exists()
  resumed = sweep_process(tmp_path / "killed", budget=budget, steps=steps)
  _, err = resumed.communicate(timeout=600)
  assert resumed.returncode == 0, err[-3000:]
  # Chunks finished before the kill were not recomputed.
  for f in done:
    assert os.path.getmtime(chunks / f) <= os.path.getmtime(tmp_path / "killed" / "results.parquet")
  a, _ = load_sweep(str(tmp_path / "ref"))
  b, _ = load_sweep(str(tmp_path / "killed"))
  pd.testing.assert_frame_equal(a, b)


def test_divergence_is_flagged_at_the_right_step(tmp_path):
  c = small_config(precision="float32")
  c.sweep.model.width = (16,)
  c.sweep.train.lr = (0.02, 3.0)
  run_sweep(c, str(tmp_path), verbose=False)
  table, arrays = load_sweep(str(tmp_path))
  bad = table[table["train.lr"] == 3.0]
  good = table[table["train.lr"] == 0.02]
  assert bad["diverged"].all() and not good["diverged"].any()
  # Independent: the first step whose loss is not finite, logged every step.
  probe = sweep.point_config(c, {"train.lr": 3.0, "model.width": 16})
  probe.train.log_every = 1
  loss = exp.run(probe)["arrays"]["loss"]
  first = np.argmin(np.isfinite(loss), axis=1)
  assert np.all(~np.isfinite(loss[np.arange(3), first]))
  for seed in range(3):
    rows = bad[bad.seed == seed]
    assert set(rows["diverged_step"]) == {first[seed]}
    assert rows[rows.step > first[seed]]["u_0"].isna().all()
  summary = pd.read_csv(tmp_path / "summary.csv")
  assert list(summary["diverged_seeds"]) == [0, 3]
  # The converging point is unaffected by its diverging neighbour: bit for bit
  # equal to the same sweep with a converging neighbour (same batch shapes, so
  # the same float32 rounding; a single run of 3 rows rounds differently).
  c.sweep.train.lr = (0.02, 0.01)
  run_sweep(c, str(tmp_path / "calm"), verbose=False)
  np.testing.assert_array_equal(arrays[0]["loss"],
                                load_sweep(str(tmp_path / "calm"))[1][0]["loss"])


@pytest.mark.parametrize("section, axis, values, match", [
    ("train", "learning_rate", (0.1,), r"sweep\.train\.learning_rate.*valid fields: .*train\.lr"),
    ("train", "lr", (), r"sweep\.train\.lr` is empty"),
    ("model", "width", (8, "wide"), r"sweep\.model\.width.*'wide'"),
    ("model", "depth", (2, 0), r"model\.depth"),
])
def test_bad_axes_fail_and_write_nothing(tmp_path, section, axis, values, match):
  c = small_config()
  c.sweep[section] = ml_collections.ConfigDict({axis: values})
  out = tmp_path / "out"
  with pytest.raises(ValueError, match=match):
    run_sweep(c, str(out), verbose=False)
  assert not out.exists()


def test_unwritable_dir_and_changed_config(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("")
  with pytest.raises(ValueError, match="output_dir"):
    run_sweep(small_config(), str(blocker / "sweep"), verbose=False)
  c = small_config("float32")
  c.sweep.model.width = (8,)
  c.sweep.train.lr = (0.02,)
  run_sweep(c, str(tmp_path / "s"), verbose=False)
  c.train.num_steps = 400
  with pytest.raises(ValueError, match="different config"):
    run_sweep(c, str(tmp_path / "s"), verbose=False)


def test_resume_mid_trajectory_from_orbax_checkpoint(tmp_path, monkeypatch):
  c = small_config("float32")
  c.sweep.model.width = (8,)
  c.train.num_steps = 400                      # 4 segments of 100 steps
  run_sweep(c, str(tmp_path / "ref"), checkpoint_every_steps=100, verbose=False)

  class Killed(Exception):
    pass

  writes = []
  real_npz = sweep._atomic_npz

  def dying_npz(path, arrays):
    if os.path.basename(path).startswith("seg_"):
      writes.append(path)
      if len(writes) == 3:                     # die while writing segment 3
        raise Killed
    real_npz(path, arrays)

  monkeypatch.setattr(sweep, "_atomic_npz", dying_npz)
  # the killed and resumed sweep loops over 1-row chunks (the reference does not)
  monkeypatch.setenv("DYNAMICS_CHUNK_ROWS", "1")
  chunks = []
  real_plan = engine.plan_rows

  def recorded_plan(*a, **k):
    plan = real_plan(*a, **k)
    chunks.append(plan.chunk)
    return plan

  monkeypatch.setattr(engine, "plan_rows", recorded_plan)
  with pytest.raises(Killed):
    run_sweep(c, str(tmp_path / "run"), checkpoint_every_steps=100, verbose=False)
  ckpt = [d for d in os.listdir(tmp_path / "run" / "chunks") if d.endswith(".ckpt")]
  assert len(ckpt) == 1
  assert "state_00000010" in os.listdir(tmp_path / "run" / "chunks" / ckpt[0])
  monkeypatch.setattr(sweep, "_atomic_npz", real_npz)
  restored = []
  real_restore = sweep.ocp.StandardCheckpointer.restore
  monkeypatch.setattr(sweep.ocp.StandardCheckpointer, "restore",
                      lambda self, *a, **k: restored.append(a[0]) or real_restore(self, *a, **k))
  run_sweep(c, str(tmp_path / "run"), checkpoint_every_steps=100, verbose=False)
  assert len(restored) == 1 and restored[0].endswith("state_00000010")
  assert 1 in chunks, chunks
  a, _ = load_sweep(str(tmp_path / "ref"))
  b, _ = load_sweep(str(tmp_path / "run"))
  # float32 rounding only: 1-row chunks may reduce in another order than 3
  # rows; a few eps (1.2e-7) of the O(1) weights, also in modes near 0
  pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-5, atol=1e-6)
  assert not [d for d in os.listdir(tmp_path / "run" / "chunks") if d.endswith(".ckpt")]
