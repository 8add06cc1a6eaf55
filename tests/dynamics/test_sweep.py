"""The grid runner and its store: grouping, theory on the arrays training
used, resuming, and every kind of file damaged, swapped or emptied (named and
recomputed, or a one-line refusal; never other rows at exit 0)."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pandas as pd
import pytest

from dynamics import io, load_arrays, load_summary, load_sweep, run_sweep, simulate, sweep
from dynamics.config import set_field
from tests.experiments import toy
from tests.helpers import ROOT


def toy_config(**fields):
  c = toy.get_config()
  for k, v in fields.items():
    set_field(c, k.replace("__", "."), v)
  return c


def test_grid_equals_separate_runs():
  """Three lrs (a float: traced) and two labels (a string the program never
  reads) train as one group; each point equals the point run alone."""
  c = toy_config(sweep__train__lr=(0.05, 0.1, 0.2), sweep__label=("a", "b"))
  p = sweep.plan(c)
  assert len(p.groups) == 1 and p.groups[0].batched == ("train.lr",)
  results, _ = simulate(c)
  for r in results:
    alone, _ = simulate(toy_config(train__lr=r.config.train.lr))
    np.testing.assert_allclose(r.traj.logged["w"], alone[0].traj.logged["w"], rtol=1e-6)
    np.testing.assert_allclose(r.traj.t, alone[0].traj.t, rtol=1e-7)


EXPERIMENT = '''
import jax, jax.numpy as jnp
from dynamics import config as cfg

def setup(config):
  cfg.one_of(config, "kind", ("plain", "shifted"))
  # drawn with the default dtype: float32 here, float64 under x64
  return {"x": jax.random.normal(jax.random.PRNGKey(0), (16, 3))}

def init(config, key, data):
  shift = 1.0 if READ_KIND and config.kind == "shifted" else 0.0
  return {"params": jnp.zeros(3) + shift}

def loss(config, state, data, key):
  return 0.5 * jnp.mean((data["x"] @ state["params"] - data["x"][:, 0]) ** 2)

def observe(config, state, data):
  return {"loss": loss(config, state, data, None), "x_sum": jnp.sum(data["x"]) + 0 * state["params"][0]}

def theory(config, data, start, t):
  x = jax.random.normal(jax.random.PRNGKey(0), (16, 3)) if REDRAW else data["x"]
  return {"x_sum": jnp.full(t.shape, jnp.sum(x))}
'''


def write_experiment(tmp_path, read_kind=False, redraw=False, name="exp.py"):
  path = tmp_path / name
  path.write_text(f"READ_KIND = {read_kind}\nREDRAW = {redraw}\n" + EXPERIMENT)
  c = toy_config(experiment=str(path))
  c.kind = "plain"
  c.sweep = {"kind": ("plain", "shifted")}
  return c


def test_a_swept_string_read_only_in_setup_shares_the_call(tmp_path):
  """`kind` read in `setup` only: one group; read in `init` too: the planner
  sees it (the traced program reads a swept value) and splits the group."""
  assert len(sweep.plan(write_experiment(tmp_path, name="a.py")).groups) == 1
  p = sweep.plan(write_experiment(tmp_path, read_kind=True, name="b.py"))
  assert len(p.groups) == 2
  results, _ = simulate(write_experiment(tmp_path, read_kind=True, name="b.py"))
  assert results[1].traj.logged["loss"][0, 0] != results[0].traj.logged["loss"][0, 0]


def test_theory_sees_the_arrays_training_used(tmp_path):
  """The x64 trap: theory runs in float64, where `jax.random.normal(key, shape)`
  draws other numbers than in the float32 run. Handed `setup`'s arrays, it
  agrees with training to float32 rounding (a 48-term sum: ~1e-6 relative);
  a theory that draws its data again sees other points and is off by O(1)."""
  c = write_experiment(tmp_path)
  (r, _), _ = simulate(c)
  assert r.summary["x_sum.rel_error_max"] < 1e-5, r.summary
  (bad, _), _ = simulate(write_experiment(tmp_path, redraw=True, name="redraw.py"))
  assert bad.summary["x_sum.rel_error_max"] > 1e-2, bad.summary


def test_divergence_is_flagged_and_left_out(tmp_path):
  """A point whose every seed diverges has no aggregates and no figure; the
  table flags the seeds; the other point is summarised as usual."""
  c = toy_config(sweep__train__lr=(0.1, 1.5), train__num_steps=400, train__log_every=40)
  out = run_sweep(c, str(tmp_path / "run"), verbose=False)
  table, summary = load_sweep(out), load_summary(out)
  assert table.groupby("train.lr")["diverged"].all().to_dict() == {0.1: False, 1.5: True}
  assert list(summary["diverged_seeds"]) == [0, 3]
  assert np.isfinite(summary.loc[0, "w.rel_error_max"])
  assert pd.isna(summary.loc[1].get("w.rel_error_max"))
  assert os.path.exists(os.path.join(out, "points", "p00000.png"))
  assert not os.path.exists(os.path.join(out, "points", "p00001.png"))


@pytest.mark.parametrize("sweep_, match", [
    ({"train": {"lrr": (0.1,)}}, "sweep.train.lrr"),
    ({"train": {"lr": ()}}, "sweep.train.lr"),
    ({"dim": (2, 0)}, "dim"),
    ({"train": {"lr": ("fast",)}}, "sweep.train.lr")])
def test_bad_axes_fail_and_write_nothing(tmp_path, sweep_, match):
  c = toy_config()
  c.sweep = sweep_
  with pytest.raises(ValueError, match=match.replace(".", r"\.")):
    run_sweep(c, str(tmp_path / "out"), verbose=False)
  assert not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("kwargs, match", [
    ({"memory_budget_mb": 0}, "--memory_budget_mb"), ({"figures": "some"}, "--figures"),
    ({"checkpoint_every_s": -1}, "--checkpoint_every_s"), ({"memory_budget_mb": True},
                                                             "--memory_budget_mb")])
def test_bad_arguments_fail_and_write_nothing(tmp_path, kwargs, match):
  with pytest.raises(ValueError, match=match):
    run_sweep(toy_config(), str(tmp_path / "out"), verbose=False, **kwargs)
  assert not os.path.exists(tmp_path / "out")


def chunked(tmp_path, name="run", **kw):
  """A two-point grid in chunks of one device's worth of rows: several chunk
  files, and checkpoints inside each."""
  c = toy_config(sweep__train__lr=(0.05, 0.1), num_seeds=8, train__num_steps=400,
                 train__log_every=10, **kw)
  return c, str(tmp_path / name)


@pytest.fixture
def forty_segments():
  """`chunked`'s 400 steps in 40 segments of 10 (the default would make 4 of
  `MIN_SEGMENT_STEPS`, or fewer as long as `SEGMENT_S`): the interrupt points
  below count them."""
  from dynamics import train
  with pytest.MonkeyPatch.context() as m:
    m.setattr(train, "MIN_SEGMENT_STEPS", 1)
    m.setattr(train, "SEGMENTS", 40)
    m.setattr(train, "SEGMENT_S", 0.0)
    yield


def interrupt_after(monkeypatch, segments: int):
  """KeyboardInterrupt once `segments` segments have run (a kill between two
  segments, in this process: what SIGINT does)."""
  from dynamics import train
  real, count = train.Runner.run, {"n": 0}

  def run(self, a, b, resume=None, on_segment=None):
    def hook(*args):
      on_segment(*args)
      if args[0] == 0:  # the start
        return
      count["n"] += 1
      if count["n"] == segments:
        raise KeyboardInterrupt
    return real(self, a, b, resume=resume, on_segment=hook)

  monkeypatch.setattr(train.Runner, "run", run)


def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, monkeypatch, capsys,
                                                    forty_segments):
  """Interrupted inside a chunk, the run says where; the same call resumes
  from the checkpoint it saved (said on the console) and its table equals an
  uninterrupted run's bit for bit."""
  c, out = chunked(tmp_path)
  ref = run_sweep(c, str(tmp_path / "ref"), verbose=False, memory_budget_mb=1e-4)
  interrupt_after(monkeypatch, 50)
  with pytest.raises(sweep.Interrupted, match="chunk 2, step 100 of 400"):
    run_sweep(c, out, verbose=False, memory_budget_mb=1e-4, checkpoint_every_s=0)
  monkeypatch.undo()
  assert any(f.endswith(".ckpt.npz") for f in os.listdir(os.path.join(out, "chunks")))
  run_sweep(c, out, verbose=True, memory_budget_mb=1e-4)
  assert "from its checkpoint at step" in capsys.readouterr().err
  pd.testing.assert_frame_equal(load_sweep(ref), load_sweep(out))


def test_resuming_on_other_devices_is_refused(tmp_path, monkeypatch, forty_segments):
  """An unfinished run resumed on another number of devices would round its
  remaining rows differently: refused in one line naming both settings."""
  c, out = chunked(tmp_path)
  interrupt_after(monkeypatch, 45)
  with pytest.raises(sweep.Interrupted):
    run_sweep(c, out, verbose=False, memory_budget_mb=1e-4)
  monkeypatch.undo()
  if jax.device_count() == 1:
    pytest.skip("one device: nothing to change")
  with pytest.raises(ValueError, match="'devices': 1") as e:
    run_sweep(c, out, verbose=False, memory_budget_mb=1e-4, devices=jax.devices()[:1])
  assert "\n" not in str(e.value)


def damage(path, offset=200):
  with open(path, "r+b") as f:
    f.seek(offset)
    byte = f.read(1)
    f.seek(offset)
    f.write(bytes([byte[0] ^ 0xFF]))


def test_damaged_swapped_and_foreign_chunks_are_named_and_recomputed(tmp_path, monkeypatch,
                                                                      capsys, forty_segments):
  """Chunk files of an unfinished run: one damaged (a flipped byte), two
  swapped, one copied from another run. The rerun names each, sets it aside
  and recomputes it; the table equals the uninterrupted run's."""
  c, out = chunked(tmp_path)
  ref = run_sweep(c, str(tmp_path / "ref"), verbose=False, memory_budget_mb=1e-4)
  other, other_out = chunked(tmp_path, "other", seed=7)
  # runs stopped in their fifth chunk (40 segments a chunk)
  interrupt_after(monkeypatch, 4 * 40 + 1)
  with pytest.raises(sweep.Interrupted):
    run_sweep(c, out, verbose=False, memory_budget_mb=1e-4)
  monkeypatch.undo()
  interrupt_after(monkeypatch, 4 * 40 + 1)
  with pytest.raises(sweep.Interrupted):
    run_sweep(other, other_out, verbose=False, memory_budget_mb=1e-4)
  monkeypatch.undo()
  chunks = os.path.join(out, "chunks")
  names = sorted(f for f in os.listdir(chunks) if f.endswith(".npz") and ".ckpt" not in f)
  assert len(names) == 4, os.listdir(chunks)
  damage(os.path.join(chunks, names[0]))
  a, b = os.path.join(chunks, names[1]), os.path.join(chunks, names[2])
  os.rename(a, a + ".tmp"), os.rename(b, a), os.rename(a + ".tmp", b)
  os.replace(os.path.join(other_out, "chunks", names[3]), os.path.join(chunks, names[3]))
  capsys.readouterr()
  run_sweep(c, out, verbose=True, memory_budget_mb=1e-4)
  err = capsys.readouterr().err
  for n in names:
    assert f"{n} is damaged or foreign" in err, err
  pd.testing.assert_frame_equal(load_sweep(ref), load_sweep(out))


@pytest.mark.parametrize("name, how", [("run.json", "empty"), ("run.json", "byte"),
                                       ("config.json", "byte"), ("config.json", "truncate")])
def test_a_damaged_record_is_a_refusal_naming_it(tmp_path, monkeypatch, name, how, forty_segments):
  """An emptied or damaged run.json or config.json: the rerun refuses in one
  line naming the file (never a new run mixing rows) and changes nothing."""
  c, out = chunked(tmp_path)
  interrupt_after(monkeypatch, 45)
  with pytest.raises(sweep.Interrupted):
    run_sweep(c, out, verbose=False, memory_budget_mb=1e-4)
  monkeypatch.undo()
  path = os.path.join(out, name)
  if how == "empty":
    open(path, "w").close()
  elif how == "truncate":
    os.truncate(path, os.path.getsize(path) // 2)
  else:
    damage(path, 40)
  before = {f: os.path.getmtime(os.path.join(out, "chunks", f))
            for f in os.listdir(os.path.join(out, "chunks"))}
  with pytest.raises(ValueError, match=name) as e:
    run_sweep(c, out, verbose=False, memory_budget_mb=1e-4)
  assert "\n" not in str(e.value) and "--restart" in str(e.value)
  assert before == {f: os.path.getmtime(os.path.join(out, "chunks", f))
                    for f in os.listdir(os.path.join(out, "chunks"))}


def test_finished_files_are_verified(tmp_path, capsys):
  """A flipped byte in results.parquet or a points file of a finished run:
  the readers refuse naming the file; rerunning the command rebuilds it."""
  c = toy_config(sweep__train__lr=(0.05, 0.1))
  out = run_sweep(c, str(tmp_path / "run"), verbose=False)
  table = load_sweep(out)
  for rel in ("results.parquet", os.path.join("points", "p00001.npz")):
    damage(os.path.join(out, rel), os.path.getsize(os.path.join(out, rel)) // 2)
    with pytest.raises(ValueError, match=os.path.basename(rel)):
      load_sweep(out) if rel.endswith("parquet") else load_arrays(out, 1)
    capsys.readouterr()
    run_sweep(c, out, verbose=True)
    assert f"{rel} is damaged or missing" in capsys.readouterr().err
    pd.testing.assert_frame_equal(table, load_sweep(out))
    load_arrays(out, 1)


def test_a_run_by_other_code_is_refused(tmp_path):
  """The experiment's code changed between two runs of the same command: the
  second refuses, naming the file, instead of returning the old table;
  `restart=True` recomputes it with the new code."""
  c = write_experiment(tmp_path)
  out = run_sweep(c, str(tmp_path / "run"), verbose=False)
  old = load_sweep(out)["loss"].to_numpy()
  path = c.experiment
  with open(path) as f:
    text = f.read()
  with open(path, "w") as f:
    f.write(text.replace("jnp.zeros(3) + shift", "jnp.ones(3) + shift"))
  with pytest.raises(ValueError, match=r"was run by other code: .*exp\.py"):
    run_sweep(c, out, verbose=False)
  run_sweep(c, out, verbose=False, restart=True)
  assert not np.allclose(load_sweep(out)["loss"].to_numpy(), old)


def test_a_different_config_or_a_foreign_directory_is_refused(tmp_path):
  c = toy_config()
  out = run_sweep(c, str(tmp_path / "run"), verbose=False)
  with pytest.raises(ValueError, match=r"different config \(train.lr: 0.1 -> 0.2"):
    run_sweep(toy_config(train__lr=0.2), out, verbose=False)
  (tmp_path / "mine").mkdir()
  (tmp_path / "mine" / "notes.txt").write_text("keep")
  with pytest.raises(ValueError, match="holds no run"):
    run_sweep(c, str(tmp_path / "mine"), verbose=False)
  assert os.listdir(tmp_path / "mine") == ["notes.txt"]


HOLD_SCRIPT = """
import sys, time
sys.path.insert(0, {root!r})
from dynamics import io
import os
os.makedirs({out!r}, exist_ok=True)
with io.lock({out!r}):
  print("held", flush=True)
  time.sleep(600)
"""


def test_one_writer_at_a_time_and_no_stale_lock(tmp_path):
  """A second writer is refused, naming the holder's pid, and writes nothing;
  once the holder is killed (SIGKILL: no clean-up of its own) the next run
  takes the lock and completes."""
  c = toy_config()
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
  assert f"process {os.getpid()} on" in open(os.path.join(out, io.LOCK)).read()


def test_report_numbers_reach_the_summary_and_the_console(tmp_path, capsys):
  """`report`'s per-point entries join each point's row of summary.csv, its
  other entries summary.json and the console."""
  c = toy_config(sweep__train__lr=(0.05, 0.1))
  path = tmp_path / "rep.py"
  src = open(toy.__file__).read() + textwrap.dedent('''
      def report(config, results):
        return {"points": [{"final_w0": float(r.traj.logged["w"][:, -1, 0].mean())}
                           for r in results], "headline": 42.0}
  ''')
  path.write_text(src)
  c.experiment = str(path)
  out = run_sweep(c, str(tmp_path / "run"), verbose=True)
  assert "headline: 42" in capsys.readouterr().out
  assert "final_w0" in load_summary(out).columns
  assert json.load(open(os.path.join(out, "summary.json")))["grid"]["headline"] == 42.0


def test_replay_is_the_table_bit_for_bit(tmp_path):
  """One seed of a finished run, trained again: its trajectory equals its rows
  of the table bit for bit, and the state at a logged step is the one that
  produced that step's observations (`w` is the parameters)."""
  c, out = chunked(tmp_path)
  run_sweep(c, out, verbose=False, memory_budget_mb=1e-4)
  arrays = load_arrays(out, 1)
  got = sweep.replay(out, point=1, seed=5, step=200)
  np.testing.assert_array_equal(got["traj"].logged["w"][0], arrays["logged/w"][5])
  np.testing.assert_array_equal(got["traj"].t[0], arrays["t"][5])
  np.testing.assert_array_equal(got["state"].params, arrays["logged/w"][5, 20])
  assert got["rows"] < 16 and got["seconds"] > 0
  with pytest.raises(ValueError, match="`step`"):
    sweep.replay(out, point=1, seed=5, step=7)


def test_zipped_axes_move_together():
  """`sweep_zip` ties axes: `dim` and `train.num_steps` pair up, `train.lr`
  multiplies them; each point runs its own number of steps and equals that
  point run alone."""
  c = toy_config(sweep__train__lr=(0.05, 0.1), sweep__dim=(2, 3),
                 sweep__train__num_steps=(10, 20))
  c.sweep_zip = (("dim", "train.num_steps"),)
  points = sweep.grid(c)
  assert points == [{"train.lr": lr, "train.num_steps": s, "dim": d}  # axes in name order
                    for d, s in ((2, 10), (3, 20)) for lr in (0.05, 0.1)]
  results, _ = simulate(c)
  for r in results:
    assert r.traj.step[-1] == r.config.train.num_steps == {2: 10, 3: 20}[r.config.dim]
    alone, _ = simulate(toy_config(train__lr=r.config.train.lr, dim=r.config.dim,
                                   train__num_steps=r.config.train.num_steps))
    np.testing.assert_allclose(r.traj.logged["w"], alone[0].traj.logged["w"], rtol=1e-6)
  c.sweep = {}  # one point: nothing to zip
  assert sweep.grid(c) == [{}]


@pytest.mark.parametrize("zip_, match", [
    ((("dim", "train.lrr"),), "`sweep_zip` names `train.lrr`"),
    ((("dim", "train.lr"),), r"unequal lengths: sweep\.dim \(2 values\), sweep\.train\.lr"),
    ((("dim",),), "groups of two or more"),
    ((("dim", "train.num_steps"), ("dim", "train.lr")), "`dim` in two groups")])
def test_bad_zips_fail_and_write_nothing(tmp_path, zip_, match):
  c = toy_config(sweep__train__lr=(0.05, 0.1, 0.2), sweep__dim=(2, 3),
                 sweep__train__num_steps=(10, 20))
  c.sweep_zip = zip_
  with pytest.raises(ValueError, match=match):
    run_sweep(c, str(tmp_path / "out"), verbose=False)
  assert not os.path.exists(tmp_path / "out")
