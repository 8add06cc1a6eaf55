"""scripts/run.py end to end: a run killed with SIGKILL at half its steps
resumes from a checkpoint inside its chunk (every built-in experiment with
--runslow), SIGINT and SIGTERM, an experiment from outside the package, what a
run directory records, and bad input (one line, exit 2, nothing written)."""

import contextlib
import errno
import importlib.util
import io
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from dynamics import load_arrays, load_summary, load_sweep, store
from tests.helpers import ROOT

# Every built-in config's smoke variant, lengthened so that training (not
# compiling) takes a few seconds: there is a half to kill it at.
LONGER = {
    "deep_linear": ["train.num_steps=80000", "train.log_every=800", "sweep={}"],
    "relu_ntk": ["train.num_steps=80000", "train.log_every=800", "sweep={}"],
    "lsa_icl": ["train.num_steps=16000", "train.log_every=160", "sweep={}"],
    "lsa_flow": ["train.num_steps=16000", "train.log_every=160", "sweep={}"],
    "pruning": ["train.num_steps=48000", "train.log_every=480", "sweep={}"],
    "diagonal_linear": ["train.num_steps=8000000", "train.log_every=80000", "sweep={}"],
    "two_layer_linear": ["train.num_steps=1200000", "train.log_every=12000", "sweep={}"],
    "matrix_factorization": ["train.num_steps=80000", "train.log_every=800", "sweep={}"],
    "online_sgd": ["task.n=500", "train.num_steps=100000", "train.log_every=500", "sweep={}"],
    "learning_curves": ["train.num_steps=40000", "train.log_every=400", "sweep={}"],
    "edge_of_stability": ["train.num_steps=200000", "train.log_every=2000", "sweep={}"],
    "mean_field": ["train.num_steps=200000", "train.log_every=2000", "sweep={}"],
}
QUADRATIC = ["--config=examples/quadratic/config.py", "--config.num_seeds=64",
             "--config.train.num_steps=48000000", "--config.train.log_every=240000"]


def run(args, **kwargs):
  return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=900, **kwargs)


def cached(path):
  """JAX's persistent compilation cache in `path`: the resumed run reuses the
  uninterrupted run's compilations (never the killed run's)."""
  return dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(path),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


def checkpointed(out) -> float:
  """The fraction of its steps the newest checkpoint of `out` holds (0: none)."""
  chunks = os.path.join(out, "chunks")
  best = 0.0
  for f in os.listdir(chunks) if os.path.isdir(chunks) else ():
    if f.endswith(".ckpt.npz"):
      try:
        _, meta = store.read_arrays(os.path.join(chunks, f))
      except store.Damaged:
        continue
      run = json.load(open(os.path.join(out, "run.json")))
      total = run["config"]["train"]["num_steps"] // run["config"]["train"]["log_every"]
      best = max(best, meta["done_logs"] / total)
  return best


def stop_at(args, out, sig, cache, fraction=0.5, extra=()):
  """Runs `args` into `out` and sends `sig` once a checkpoint at `fraction` of
  its steps or more exists. Returns `(exit code, stderr)`."""
  # SIGINT at its default in the run, as a terminal starts it (a process that
  # ignores SIGINT passes that on to its children)
  killed = subprocess.Popen([sys.executable, "scripts/run.py", *args, f"--out={out}",
                             "--figures=none", *extra], cwd=ROOT, env=cached(cache),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 600
  while time.time() < deadline and killed.poll() is None and checkpointed(out) < fraction:
    time.sleep(0.01)
  assert killed.poll() is None, "the run finished before it could be stopped"
  killed.send_signal(sig)
  _, err = killed.communicate(timeout=120)
  return killed.returncode, err


def resume(args, out, cache):
  done = run([sys.executable, "scripts/run.py", *args, f"--out={out}", "--figures=none"],
             env=cached(cache))
  assert done.returncode == 0, done.stderr[-3000:]
  return done.stderr


def reference(args, tmp_path):
  """The uninterrupted run (it fills the compilation cache the others read)."""
  ref = tmp_path / "ref"
  resume(args, ref, tmp_path / "cache")
  return ref


def resumed_from(stderr) -> float:
  line = next(l for l in stderr.splitlines() if "from its checkpoint at step" in l)
  return float(line.rsplit("(", 1)[1].rstrip("%)")) / 100


def test_killed_interrupted_or_terminated_resumes(tmp_path):
  """One run stopped three times inside its chunk, by SIGKILL, SIGINT and
  SIGTERM (once a checkpoint at 20%, 35% and 50% of its steps exists), each
  time rerun with the same command. SIGINT and SIGTERM end it with one line
  saying where, and exit 130 or 143. Each rerun says it resumes from a
  checkpoint at most 10% of the steps before where the run was stopped, and
  the finished table equals the uninterrupted run's bit for bit. (One run
  stopped three times: two runs' training in all, where three runs stopped
  once each and resumed would train four.)"""
  ref = reference(QUADRATIC, tmp_path)
  out, stopped = tmp_path / "run", 0.0
  for sig, code, name, at in ((signal.SIGKILL, -9, None, 0.2),
                              (signal.SIGINT, 130, "SIGINT", 0.35),
                              (signal.SIGTERM, 143, "SIGTERM", 0.5)):
    # a checkpoint after every segment: a run of seconds on a loaded machine
    # could otherwise skip from 10% to its end (a save is skipped while it
    # would cost over a tenth of the time since the last one); 48M steps, so
    # that the last signal comes seconds before the run would end. A rerun is
    # stopped past the newest checkpoint on disk: by a checkpoint it wrote
    # itself, while it trains.
    at = max(at, checkpointed(out) + 0.01)
    got, err = stop_at(QUADRATIC, out, sig, tmp_path / "cache", at,
                       extra=["--checkpoint_every_s=0"])
    assert got == code, (got, err)
    if stopped:  # a rerun of the run stopped before
      assert resumed_from(err) >= stopped - 0.1, err
    if name:
      lines = [l for l in err.splitlines() if l.strip() and "seed-step" not in l
               and "from its checkpoint at step" not in l]
      assert len(lines) == 1, err
      assert lines[0].startswith(f"interrupted ({name}) during group 1/") and \
          "rerun the same command to resume" in lines[0], lines
    stopped = at
  assert resumed_from(resume(QUADRATIC, out, tmp_path / "cache")) >= stopped - 0.1
  pd.testing.assert_frame_equal(load_sweep(str(ref)), load_sweep(str(out)))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(LONGER))
def test_every_builtin_experiment_resumes_from_inside_its_chunk(name, tmp_path):
  args = [f"--config=configs/{name}.py:smoke"] + [f"--config.{o}" for o in LONGER[name]]
  ref = reference(args, tmp_path)
  out = tmp_path / "run"
  # a checkpoint after every segment: these runs take seconds, and segments of
  # half a second (`train.SEGMENT_S`) would otherwise skip saves that cost over
  # a tenth of the time since the last one
  stop_at(args, out, signal.SIGKILL, tmp_path / "cache", 0.5, extra=["--checkpoint_every_s=0"])
  assert resumed_from(resume(args, out, tmp_path / "cache")) >= 0.4
  pd.testing.assert_frame_equal(load_sweep(str(ref)), load_sweep(str(out)))
  pd.testing.assert_frame_equal(load_summary(str(ref)), load_summary(str(out)))


HANG = '''
import time
HANG = True


def observe(config, state, data):
  if HANG:
    jax.debug.callback(lambda: time.sleep(3600))
  return {"loss": loss(config, state, data, None), "w": state["params"]}
'''


def test_a_stalled_run_says_where_and_exits(tmp_path):
  """A run whose training stops making progress (here a host callback that
  sleeps, as a deadlocked kernel would) is ended by the watchdog: one line
  saying where it stalled, every thread's stack, exit status 3."""
  exp = tmp_path / "hang.py"
  exp.write_text(open(os.path.join(ROOT, "tests", "experiments", "toy.py")).read() + HANG)
  args = [sys.executable, "scripts/run.py", f"--config={exp}", f"--out={tmp_path / 'run'}",
          "--stall_timeout_s=3", "--figures=none"]
  proc = run(args)
  assert proc.returncode == 3, proc.stderr[-3000:]
  assert "error: no progress for" in proc.stderr and "group 1/1, chunk 1" in proc.stderr
  assert "Thread" in proc.stderr and "hang.py\", line" in proc.stderr, proc.stderr[-3000:]


@pytest.mark.parametrize("form", ["file", "module"])
def test_an_experiment_from_outside_the_package(tmp_path, form):
  """examples/quadratic copied to a temporary directory: its config names the
  experiment by a file path relative to itself, or (overridden) by a dotted
  module on PYTHONPATH; run.py runs it unchanged, and its theory lands beside
  the simulation in the table."""
  lab = tmp_path / "my_lab"
  lab.mkdir()
  (lab / "__init__.py").write_text("")
  for f in ("experiment.py", "config.py"):
    shutil.copy(os.path.join(ROOT, "examples", "quadratic", f), lab / f)
  extra = [] if form == "file" else ["--config.experiment=my_lab.experiment"]
  proc = run([sys.executable, "scripts/run.py", f"--config={lab / 'config.py'}",
              f"--out={tmp_path / 'out'}", *extra], env=dict(os.environ, PYTHONPATH=str(tmp_path)))
  assert proc.returncode == 0, proc.stderr[-3000:]
  table = load_sweep(str(tmp_path / "out"))
  assert set(table["train.lr"]) == {0.1, 0.2, 0.4} and len(table) == 3 * 4 * 11
  # GD on a quadratic is the theory's geometric decay exactly: what is left is
  # float32 rounding, ~6e-8 relative per step over 50 steps, of O(1) weights
  np.testing.assert_allclose(table["w_2"], table["w_2_pred"], rtol=0, atol=1e-5)
  np.testing.assert_allclose(table["loss"], table["loss_pred"], rtol=1e-4, atol=1e-7)
  assert "loss.rel_error_max" in proc.stdout


def run_main(*argv):
  """scripts/run.py's main in this process (no JAX start-up): `(code, stderr)`."""
  spec = importlib.util.spec_from_file_location("run_script", os.path.join(ROOT, "scripts",
                                                                           "run.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  err = io.StringIO()
  with contextlib.redirect_stderr(err):
    code = module.main(list(argv))
  return code, err.getvalue()


TOY = ["--config=tests/experiments/toy.py", "--config.sweep.train.lr=(0.05,0.1)"]


def test_a_run_directory_records_and_refuses(tmp_path):
  out = tmp_path / "run"
  old = os.umask(0o022)  # the usual umask: group-readable files
  try:
    code, err = run_main(*TOY, f"--out={out}")
  finally:
    os.umask(old)
  assert code == 0, err
  assert sorted(os.listdir(out)) == [".lock", "config.json", "figure.png", "points",
                                     "provenance.json", "results.parquet", "run.json",
                                     "summary.csv", "summary.json"]
  arrays = load_arrays(str(out), 0)
  assert arrays["logged/w"].shape == (3, 5, 3) and arrays["pred/w"].shape == (3, 5, 3)
  prov = json.loads((out / "provenance.json").read_text())
  assert len(prov) == 1 and {"date", "command", "jax", "jaxlib", "dynamics", "git_commit",
                             "devices", "python"} <= set(prov[0])
  for path in (out, out / "summary.json", out / "points", out / "points" / "p00000.npz"):
    assert os.stat(path).st_mode & stat.S_IRGRP, path
  run_json = json.loads((out / "run.json").read_text())
  assert "tests/experiments/toy.py" in " ".join(run_json["code"]["files"])
  assert run_main(*TOY, f"--out={out}")[0] == 0  # finished: nothing to compute
  assert len(json.loads((out / "provenance.json").read_text())) == 2
  before = (out / "results.parquet").read_bytes()
  code, err = run_main(*TOY, f"--out={out}", "--config.dim=4")
  assert code == 2 and "dim: 3 -> 4" in err and len(err.strip().splitlines()) == 1, err
  assert (out / "results.parquet").read_bytes() == before


def test_a_diverged_run_says_so_and_claims_no_figure(tmp_path, capsys):
  code, err = run_main("--config=tests/experiments/toy.py", f"--out={tmp_path / 'run'}",
                       "--config.train.lr=1.5", "--config.train.num_steps=400",
                       "--config.train.log_every=40")
  out = capsys.readouterr().out
  assert code == 0, err
  assert "every one diverged: no aggregates" in out and "figure.png" not in out.splitlines()[-1]
  assert not (tmp_path / "run" / "figure.png").exists()
  text = (tmp_path / "run" / "summary.json").read_text()
  assert "NaN" not in text and json.loads(text)["points"][0]["diverged_seeds"] == 3


@pytest.mark.parametrize("var, value", [("DYNAMICS_CHUNK_ROWS", "-1"),
                                        ("DYNAMICS_CPU_OPT_LEVEL", "9")])
def test_bad_engine_settings_fail_before_writing(tmp_path, monkeypatch, var, value):
  monkeypatch.setenv(var, value)
  code, err = run_main("--config=tests/experiments/toy.py", f"--out={tmp_path / 'bad'}")
  assert code == 2 and var in err and len(err.strip().splitlines()) == 1, err
  assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("value", ["abc", "0"])
def test_bad_device_count_is_one_line(tmp_path, value):
  proc = run([sys.executable, "scripts/run.py", "--config=tests/experiments/toy.py",
              f"--out={tmp_path / 'bad'}"], env=dict(os.environ, DYNAMICS_CPU_DEVICES=value))
  assert proc.returncode == 2 and "DYNAMICS_CPU_DEVICES" in proc.stderr, proc.stderr
  assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_a_full_disk_is_one_line_and_resumable(tmp_path, monkeypatch):
  from dynamics import io as dio
  real = dio.write_npz

  def full(path, arrays):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

  monkeypatch.setattr(dio, "write_npz", full)
  args = [*TOY, f"--out={tmp_path / 'run'}", "--figures=none"]
  code, err = run_main(*args)
  assert code == 2 and "No space left on device" in err and "resumes" in err, err
  assert len(err.strip().splitlines()) == 1, err
  monkeypatch.setattr(dio, "write_npz", real)
  code, err = run_main(*args)
  assert code == 0, err


@pytest.mark.parametrize("args, field", [
    (["--config.train.lr=True"], "train.lr"),            # a boolean where a number goes
    (["--config.train.lr=1e300"], "train.lr"),           # not a float32
    (["--out=/proc/forbidden"], "--out"),                 # nothing can be written there
    (["--config.sweep.train.lr=(0.1,1e300)"], "train.lr")])
def test_the_command_line_keeps_its_promises(tmp_path, args, field):
  argv = ["--config=tests/experiments/toy.py", f"--out={tmp_path / 'run'}", *args]
  code, err = run_main(*argv)
  assert code == 2 and field in err and len(err.strip().splitlines()) == 1, err
  assert "chunk" not in err and not (tmp_path / "run").exists()


def test_missing_config_and_unwritable_out(tmp_path):
  code, err = run_main(f"--config={tmp_path}/nope.py")
  assert code == 2 and "does not exist" in err
  blocker = tmp_path / "file"
  blocker.write_text("")
  code, err = run_main("--config=tests/experiments/toy.py", f"--out={blocker}")
  assert code == 2 and "--out" in err and "not a directory" in err, err


def test_plot_sweep_compares_points_at_the_same_time(tmp_path):
  """lr 0.05 and 0.1 log at t = 0.25 k and 0.5 k. At --t=1.25 the first point
  is a logged row, returned as is; the second lies halfway between its rows at
  t = 1.0 and 1.5, and gets their mean (linear interpolation), where the same
  step index would have put it at t = 2.5."""
  out = tmp_path / "run"
  code, err = run_main(*TOY, f"--out={out}")
  assert code == 0, err
  spec = importlib.util.spec_from_file_location("plot_sweep", os.path.join(ROOT, "scripts",
                                                                            "plot_sweep.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  table = load_sweep(str(out)).sort_values(["train.lr", "seed"])
  at = module.at_time(table, ["w_0", "w_0_pred"], 1.25).sort_values(["train.lr", "seed"])
  rows = lambda lr, t: table[(table["train.lr"] == lr) & np.isclose(table["t"], t)]
  np.testing.assert_array_equal(at[at["train.lr"] == 0.05]["w_0"], rows(0.05, 1.25)["w_0"])
  mid = (rows(0.1, 1.0)["w_0"].to_numpy() + rows(0.1, 1.5)["w_0"].to_numpy()) / 2
  np.testing.assert_allclose(at[at["train.lr"] == 0.1]["w_0"], mid, rtol=1e-6)
  proc = run([sys.executable, "scripts/plot_sweep.py", f"--dir={out}", "--x=train.lr",
              "--metric=w_0", "--t=1.25"])
  assert proc.returncode == 0 and (out / "w_0_vs_train.lr.png").exists(), proc.stderr[-2000:]


HANG_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
import dynamics
from tests.helpers import config
for name in {names!r}:
  for _ in range(10):
    dynamics.simulate(config(name))
  print(name, flush=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("devices", ["1", "2"])
def test_every_config_ten_times_without_a_hang(devices):
  """Every built-in config's smoke variant, 10 times in a row on one and on two
  CPU devices (batched LAPACK kernels across devices once deadlocked a run):
  each finishes; a hang is the timeout."""
  names = [n for n in LONGER if n != "lsa_flow"] + ["lsa_flow"]
  proc = subprocess.run([sys.executable, "-c", HANG_SCRIPT.format(root=ROOT, names=names)],
                        cwd=ROOT, capture_output=True, text=True, timeout=3000,
                        env=dict(os.environ, DYNAMICS_CPU_DEVICES=devices))
  assert proc.returncode == 0 and proc.stdout.split() == names, proc.stderr[-3000:]
