"""Grids: grouping, sharding, resuming, divergence, bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from dynamics import (_rows, io, load_arrays, load_summary, load_sweep, metrics, run_sweep,
                      simulate, sweep)
from dynamics.experiments import deep_linear
from tests.helpers import ROOT, config


def small_config(precision="float64"):
  c = config("deep_linear")
  c.precision = precision
  c.num_seeds = 3
  c.model.width = 16
  c.task.d_in = c.task.d_out = 4
  c.task.num_samples = 16
  c.task.singular_values = (2.0, 1.0)
  c.train.lr, c.train.num_steps, c.train.log_every = 0.02, 200, 20
  c.sweep = {"train": {"lr": (0.02, 0.04)},   # stacks
             "model": {"width": (8, 16)}}     # groups
  return c


def test_grid_equals_separate_runs(tmp_path):
  c = small_config()
  p = sweep.plan(c)
  assert len(p.points) == 4 and sorted(len(g.points) for g in p.groups) == [2, 2]
  run_sweep(c, str(tmp_path), verbose=False)
  table = load_sweep(str(tmp_path))
  for i, point in enumerate(p.points):
    single = sweep.point_config(c, point)
    one, _ = simulate(single)
    arrays = load_arrays(str(tmp_path), i)
    # Rounding only: a batch of 6 rows may reduce in another order than 3.
    for name in ("loss", "u", "u_pred"):
      ref = one[0].pred["u"] if name == "u_pred" else one[0].out[name]
      np.testing.assert_allclose(arrays[name], ref, rtol=1e-12, atol=1e-14)
    rows = table[table.point == i]
    assert set(rows["train.lr"]) == {point["train.lr"]}
    assert set(rows["model.width"]) == {point["model.width"]}
    np.testing.assert_allclose(rows["loss"].to_numpy(), one[0].out["loss"].reshape(-1),
                               rtol=1e-12)
  assert len(table) == 4 * 3 * 11
  assert {"seed", "step", "t", "u_0", "u_0_pred", "u_0_rel_error", "loss_pred",
          "loss_rel_error", "diverged", "diverged_step"} <= set(table.columns)
  summary = load_summary(str(tmp_path))
  assert len(summary) == 4 and (summary["diverged_seeds"] == 0).all()
  # one figure per point and the grid's figure
  assert sorted(f for f in os.listdir(tmp_path / "points") if f.endswith(".png")) == [
      f"p{i:05d}.png" for i in range(4)]
  assert (tmp_path / "figure.png").stat().st_size > 0


SWEEP_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
from tests.dynamics.test_sweep import small_config
from dynamics import run_sweep
c = small_config()
c.num_seeds = {seeds}
run_sweep(c, {out!r}, verbose=False)
"""


def sweep_process(out, seeds=3, devices=1):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  code = SWEEP_SCRIPT.format(root=ROOT, out=str(out), seeds=seeds)
  return subprocess.Popen([sys.executable, "-c", code], env=env, cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_four_devices_equal_one(tmp_path):
  one, four = sweep_process(tmp_path / "one"), sweep_process(tmp_path / "four", devices=4)
  for proc in (one, four):
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
  # 6 rows per group over 4 devices (padded to 8): 2 rows each instead of 6
  # on one device, so agreement is to rounding (float64).
  pd.testing.assert_frame_equal(load_sweep(str(tmp_path / "one")),
                                load_sweep(str(tmp_path / "four")),
                                check_exact=False, rtol=1e-12, atol=1e-14)


class Killed(Exception):
  pass


def dying(monkeypatch, prefix: str, after: int):
  """`io.write_npz` that raises (a kill) instead of writing its `after`-th
  file whose name starts with `prefix`."""
  real, writes = io.write_npz, []

  def write(path, arrays):
    if os.path.basename(path).startswith(prefix):
      writes.append(path)
      if len(writes) == after:
        raise Killed
    real(path, arrays)

  monkeypatch.setattr(io, "write_npz", write)
  return real


def test_resume_keeps_the_chunk_layout_it_began_with(tmp_path, monkeypatch):
  """Interrupted after two chunk files. Rerun with a setting that changes how
  rows are batched (and so how they round), it refuses with one line naming
  it and touches nothing; resumed with another memory budget, the run keeps
  its first layout (the same rows in each chunk), so the table equals an
  uninterrupted run's bit for bit, nothing is computed twice, and the
  temporary of the write the kill interrupted is gone from the start."""
  c = small_config("float32")
  budget = 0.0021  # 2 rows per chunk: 3 chunk files per group
  run_sweep(c, str(tmp_path / "ref"), memory_budget_mb=budget, verbose=False)
  real = dying(monkeypatch, "g0", after=3)
  with pytest.raises(Killed):
    run_sweep(c, str(tmp_path / "run"), memory_budget_mb=budget, verbose=False)
  monkeypatch.setattr(io, "write_npz", real)
  done = sorted(os.listdir(tmp_path / "run" / "chunks"))
  assert len([f for f in done if f.endswith(".npz")]) == 2
  stamps = {f: os.path.getmtime(tmp_path / "run" / "chunks" / f) for f in done}
  for setting, match in (("devices", "'devices': 7"),
                         ("DYNAMICS_CHUNK_ROWS", "'chunk_rows': '1'")):
    with monkeypatch.context() as m:
      if setting == "devices":
        m.setattr(sweep.jax, "device_count", lambda *a: 7)
      else:
        m.setenv(setting, "1")
      with pytest.raises(ValueError, match=match):
        run_sweep(c, str(tmp_path / "run"), memory_budget_mb=budget, verbose=False)
    assert sorted(os.listdir(tmp_path / "run" / "chunks")) == done
  stray = tmp_path / "run" / "chunks" / ".g0000_c00002.npz.tmp"
  stray.write_text("half a file")
  started = []
  real_collect = sweep._collect
  monkeypatch.setattr(sweep, "_collect", lambda *a, **k: (
      started.append(stray.exists()), real_collect(*a, **k))[1])
  run_sweep(c, str(tmp_path / "run"), memory_budget_mb=100.0, verbose=False)
  assert started == [False]
  for f, stamp in stamps.items():
    assert os.path.getmtime(tmp_path / "run" / "chunks" / f) == stamp
  pd.testing.assert_frame_equal(load_sweep(str(tmp_path / "ref")),
                                load_sweep(str(tmp_path / "run")))
  assert not [f for f in os.listdir(tmp_path / "run") if f.startswith(".") and f != io.LOCK]


def test_divergence_is_flagged_and_left_out(tmp_path):
  c = small_config(precision="float32")
  c.sweep = {"train": {"lr": (0.02, 3.0)}}
  run_sweep(c, str(tmp_path), verbose=False)
  table = load_sweep(str(tmp_path))
  bad = table[table["train.lr"] == 3.0]
  good = table[table["train.lr"] == 0.02]
  assert bad["diverged"].all() and not good["diverged"].any()
  # Independent: the first step whose loss is not finite, logged every step.
  probe = sweep.point_config(c, {"train.lr": 3.0})
  probe.train.log_every = 1
  loss = simulate(probe)[0][0].out["loss"]
  first = np.argmin(np.isfinite(loss), axis=1)
  assert np.all(~np.isfinite(loss[np.arange(3), first]))
  for seed in range(3):
    rows = bad[bad.seed == seed]
    assert set(rows["diverged_step"]) == {first[seed]}
    assert rows[rows.step > first[seed]]["u_0"].isna().all()
  summary = load_summary(str(tmp_path))
  assert list(summary["diverged_seeds"]) == [0, 3]
  # every seed diverged: no aggregates at all, in strict JSON
  assert summary["modes.0.learning_time_measured"].isna().tolist() == [False, True]
  text = (tmp_path / "summary.json").read_text()
  assert "NaN" not in text and "Infinity" not in text
  assert json.loads(text)["points"][1]["diverged_seeds"] == 3
  # The converging point is unaffected by its diverging neighbour: bit for bit
  # equal to the same sweep with a converging neighbour (same batch shapes, so
  # the same float32 rounding; a single run of 3 rows rounds differently).
  c.sweep.train.lr = (0.02, 0.01)
  run_sweep(c, str(tmp_path / "calm"), verbose=False)
  np.testing.assert_array_equal(load_arrays(str(tmp_path), 0)["loss"],
                                load_arrays(str(tmp_path / "calm"), 0)["loss"])


def test_a_diverged_seed_is_left_out_of_the_aggregates():
  """A seed that diverged after its half-learning time still has one; the
  summary is over the other seeds, and says how many it left out."""
  c = small_config("float32")
  c.sweep, c.num_seeds = {}, 4
  pt = simulate(c)[0][0]
  out = {k: v.copy() for k, v in pt.out.items()}
  out["diverged_at"][1] = 180  # the last logged step: every value before it stands
  masked = sweep.analyze(deep_linear, c, out, {})
  assert masked.summary["diverged_seeds"] == 1
  assert np.isfinite(masked.out["u"][1, :-1]).all() and np.isnan(masked.out["u"][1, -1]).all()
  t_half = lambda seeds: float(metrics.seed_stats(metrics.time_to_fraction(
      pt.t, np.moveaxis(pt.out["u"][seeds], 1, -1)[:, 0], 2.0))["mean"])
  got = masked.summary["modes"][0]["learning_time_measured"]
  assert got == pytest.approx(t_half([0, 2, 3]), rel=1e-12)
  assert got != pytest.approx(t_half([0, 1, 2, 3]), rel=1e-9)


@pytest.mark.parametrize("section, axis, values, match", [
    ("train", "learning_rate", (0.1,), r"sweep\.train\.learning_rate.*Fields of `train`: .*train\.lr"),
    ("train", "lr", (), r"sweep\.train\.lr` is empty"),
    ("model", "width", (8, "wide"), r"sweep\.model\.width.*'wide'"),
    ("model", "depth", (2, 0), r"model\.depth"),
])
def test_bad_axes_fail_and_write_nothing(tmp_path, section, axis, values, match):
  c = small_config()
  c.sweep[section] = {axis: values}
  out = tmp_path / "out"
  with pytest.raises(ValueError, match=match):
    run_sweep(c, str(out), verbose=False)
  assert not out.exists()


@pytest.mark.parametrize("kwargs, match", [
    ({"memory_budget_mb": 0}, "memory_budget_mb"), ({"memory_budget_mb": -5}, "memory_budget_mb"),
    ({"checkpoint_every_steps": 0}, "checkpoint_every_steps"),
    ({"figures": "some"}, "figures")])
def test_bad_arguments_fail_and_write_nothing(tmp_path, kwargs, match):
  with pytest.raises(ValueError, match=match):
    run_sweep(small_config(), str(tmp_path / "out"), verbose=False, **kwargs)
  assert not (tmp_path / "out").exists()


def test_unwritable_dir_and_changed_config(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("")
  with pytest.raises(ValueError, match="--out"):
    run_sweep(small_config(), str(blocker / "sweep"), verbose=False)
  c = small_config("float32")
  c.sweep = {"train": {"lr": (0.02,)}}
  run_sweep(c, str(tmp_path / "s"), verbose=False)
  before = {f: (tmp_path / "s" / f).read_bytes() for f in ("config.json", "summary.csv")}
  c.train.num_steps = 400
  with pytest.raises(ValueError, match=r"different config \(train\.num_steps: 200 -> 400\)"):
    run_sweep(c, str(tmp_path / "s"), verbose=False)
  for f, b in before.items():  # refused, not replaced
    assert (tmp_path / "s" / f).read_bytes() == b
  (tmp_path / "other").mkdir()
  (tmp_path / "other" / "notes.txt").write_text("mine")
  with pytest.raises(ValueError, match="holds no run"):
    run_sweep(c, str(tmp_path / "other"), verbose=False)


def test_resume_mid_trajectory_from_orbax_checkpoint(tmp_path, monkeypatch):
  c = small_config("float32")
  c.sweep = {"train": {"lr": (0.02, 0.04)}}
  c.train.num_steps = 400                      # 4 segments of 100 steps
  run_sweep(c, str(tmp_path / "ref"), checkpoint_every_steps=100, verbose=False)
  real = dying(monkeypatch, "seg_", after=3)   # die while writing segment 3
  # the killed and resumed sweep loops over 1-row chunks (the reference does not)
  monkeypatch.setenv("DYNAMICS_CHUNK_ROWS", "1")
  chunks = []
  real_plan = _rows.plan_rows

  def recorded_plan(*a, **k):
    plan = real_plan(*a, **k)
    chunks.append(plan.chunk)
    return plan

  monkeypatch.setattr(_rows, "plan_rows", recorded_plan)
  with pytest.raises(Killed):
    run_sweep(c, str(tmp_path / "run"), checkpoint_every_steps=100, verbose=False)
  ckpt = [d for d in os.listdir(tmp_path / "run" / "chunks") if d.endswith(".ckpt")]
  assert len(ckpt) == 1
  assert "state_00000010" in os.listdir(tmp_path / "run" / "chunks" / ckpt[0])
  monkeypatch.setattr(io, "write_npz", real)
  restored = []
  real_restore = sweep.ocp.StandardCheckpointer.restore
  monkeypatch.setattr(sweep.ocp.StandardCheckpointer, "restore",
                      lambda self, *a, **k: restored.append(a[0]) or real_restore(self, *a, **k))
  # resumed with another segment length: the run keeps the one it began with
  run_sweep(c, str(tmp_path / "run"), checkpoint_every_steps=50, verbose=False)
  assert len(restored) == 1 and restored[0].endswith("state_00000010")
  assert 1 in chunks, chunks
  a, b = load_sweep(str(tmp_path / "ref")), load_sweep(str(tmp_path / "run"))
  # float32 rounding only: 1-row chunks may reduce in another order than 3
  # rows; a few eps (1.2e-7) of the O(1) weights, also in modes near 0
  pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-5, atol=1e-6)
  assert not [d for d in os.listdir(tmp_path / "run" / "chunks") if d.endswith(".ckpt")]


HOLD_SCRIPT = """
import os, sys, time
sys.path.insert(0, {root!r})
from dynamics import io
os.makedirs({out!r}, exist_ok=True)
with io.lock({out!r}):
  print("held", flush=True)
  time.sleep(600)
"""


def test_one_writer_at_a_time_and_no_stale_lock(tmp_path):
  """A second writer is refused, naming the holder's pid, and writes nothing;
  once the holder is killed (SIGKILL: no clean-up of its own) the next run
  takes the lock and completes, equal to a run that never met another."""
  c = small_config("float32")
  out = str(tmp_path / "run")
  holder = subprocess.Popen([sys.executable, "-c", HOLD_SCRIPT.format(root=ROOT, out=out)],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(ValueError, match=f"being written by process {holder.pid} on"):
      run_sweep(c, out, verbose=False)
    assert os.listdir(out) == [io.LOCK]
  finally:
    holder.kill()
    holder.wait()
  run_sweep(c, out, verbose=False)
  run_sweep(c, str(tmp_path / "ref"), verbose=False)
  pd.testing.assert_frame_equal(load_sweep(out), load_sweep(str(tmp_path / "ref")))
  assert f"process {os.getpid()} on" in open(os.path.join(out, io.LOCK)).read()


def test_a_writer_in_the_same_process_is_refused_too(tmp_path):
  out = str(tmp_path / "run")
  os.makedirs(out)
  with io.lock(out, "--out"), pytest.raises(ValueError, match=f"--out .*process {os.getpid()}"):
    run_sweep(small_config("float32"), out, verbose=False)


def many_points(n_points, seeds, logs):
  c = small_config("float32")
  c.num_seeds = seeds
  c.train.num_steps, c.train.log_every = logs, 1
  c.sweep = {"train": {"lr": tuple(0.01 + 0.03 * i / n_points for i in range(n_points))}}
  return c


def test_analysis_memory_does_not_grow_with_the_grid(tmp_path):
  """The table is streamed a point at a time: the peak of what numpy and
  pandas hold while the results are collected (tracemalloc: numpy registers
  its buffers) is the same for 2 points as for 12, where assembling the
  whole table would hold it two to three times over."""
  import tracemalloc
  peaks = {}
  for n in (2, 12):
    c = many_points(n, seeds=16, logs=400)
    real = sweep._collect

    def measured(*a, **k):
      tracemalloc.start()
      try:
        return real(*a, **k)
      finally:
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()

    sweep._collect = measured
    try:
      run_sweep(c, str(tmp_path / str(n)), verbose=False, figures="none")
    finally:
      sweep._collect = real
  table = load_sweep(str(tmp_path / "12")).memory_usage(deep=True).sum()
  assert peaks[12] - peaks[2] < 0.1 * table, (peaks, table)


RSS_SCRIPT = """
import resource, sys
sys.path.insert(0, {root!r})
from tests.dynamics.test_sweep import many_points
from dynamics import run_sweep
run_sweep(many_points({n}, 128, 1000), {out!r}, memory_budget_mb=16, verbose=False,
          figures="none")
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


@pytest.mark.slow
def test_peak_rss_does_not_grow_with_the_table(tmp_path):
  """Peak RSS of a whole run (JAX, compiles, 16 MB chunks, one point's
  analysis) for an 8-point and a 24-point grid of 128 seeds x 1001 logs: the
  table grows by about 350 MB in memory, the peak by under a quarter of that
  (assembling the whole table held it two to three times over). Both grids
  run several chunks, so the allocator's per-thread arenas are warm in both."""
  peak, table = {}, {}
  for n in (8, 24):
    proc = subprocess.run([sys.executable, "-c", RSS_SCRIPT.format(
        root=ROOT, n=n, out=str(tmp_path / str(n)))], cwd=ROOT, capture_output=True,
        text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    peak[n] = int(proc.stdout.split()[-1])
    table[n] = load_sweep(str(tmp_path / str(n))).memory_usage(deep=True).sum()
  assert peak[24] - peak[8] < 0.25 * (table[24] - table[8]), (peak, table)
