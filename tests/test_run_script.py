"""scripts/run.py end to end: every built-in config (tiny sizes, a two-axis
override of its grid) killed with SIGKILL and resumed, an experiment from
outside the package, what a run directory records, and bad input."""

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

from dynamics import load_arrays, load_summary, load_sweep
from tests.helpers import ROOT

# Each built-in config at a tiny size, and two of its grid axes overridden.
CASES = {
    "deep_linear": (["num_seeds=3", "model.width=8", "task.d_in=4", "task.d_out=4",
                     "task.num_samples=16", "task.singular_values=(2.0,1.0)",
                     "train.num_steps=200", "train.log_every=20"],
                    ["sweep.model.depth=(2,3)", "sweep.train.lr=(0.01,0.02)"]),
    "relu_ntk": (["num_seeds=2", "task.num_train=8", "task.num_test=8",
                  "train.num_steps=40", "train.log_every=10", "sweep.model.depth=(2,)"],
                 ["sweep.model.width=(16,64)", "sweep.train.lr=(0.5,1.0)"]),
    "lsa_icl": (["num_seeds=2", "eval.num_prompts=64", "train.num_steps=40",
                 "train.log_every=10", "train.batch_size=16"],
                ["sweep.task.n_context=(4,8)", "sweep.train.lr=(0.04,0.065)"]),
    "lsa_flow": (["eval.num_prompts=64", "train.num_steps=40", "train.log_every=10",
                  "train.batch_size=64"],
                 ["sweep.task.covariance=('isotropic','skewed')", "sweep.train.lr=(0.005,0.01)"]),
    "pruning": (["num_seeds=2", "sweep.prune.fraction=(0.5,)", "sweep.prune.step=(20,)"] +
                [f"{f}.{k}={v}" for f in ("deep_linear", "relu", "lsa")
                 for k, v in (("num_steps", 40), ("log_every", 10))],
                ["sweep.model.family=('deep_linear','lsa')",
                 "sweep.prune.measure=('magnitude','gradient_norm')"]),
    "diagonal_linear": (["num_seeds=4", "task.d=12", "task.num_train=6", "task.num_test=10",
                         "train.num_steps=2000", "train.log_every=500"],
                        ["sweep.model.alpha=(0.1,1.0)", "sweep.train.lr=(0.005,0.01)"]),
    "two_layer_linear": (["num_seeds=4", "train.num_steps=400", "train.log_every=100"],
                         ["sweep.init.lam=(0.0,1.0)", "sweep.init.scale=(0.1,0.5)"]),
    "matrix_factorization": (["num_seeds=2", "task.d=10", "task.rank=2", "train.num_steps=400",
                              "train.log_every=100"],
                             ["sweep.model.depth=(2,3)", "sweep.task.num_observed=(40,60)"]),
}


def command(name, out, *extra):
  tiny, axes = CASES[name]
  return [sys.executable, "scripts/run.py", f"--config=configs/{name}.py", f"--out={out}",
          *[f"--config.{o}" for o in tiny + axes], *extra]


def run(args, **kwargs):
  return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600, **kwargs)


def cached(path):
  """JAX's persistent compilation cache in `path`: the resumed run reuses the
  uninterrupted run's compilations (never the killed run's, whose writes a
  kill can cut short)."""
  return dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(path),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


@pytest.mark.parametrize("name", [n for n in CASES if n != "lsa_flow"])  # one per experiment
def test_killed_and_resumed_equals_uninterrupted(name, tmp_path):
  """SIGKILL once a chunk file exists; the same command resumes, recomputes
  none of the finished chunks, and the table equals an uninterrupted run's
  bit for bit. Chunks of two rows make several files to kill between."""
  flags = ["--memory_budget_mb=0.0001", "--figures=none"]
  ref = subprocess.Popen(command(name, tmp_path / "ref", *flags), cwd=ROOT,
                         env=cached(tmp_path / "cache"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  killed = subprocess.Popen(command(name, tmp_path / "run", *flags), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  chunks = tmp_path / "run" / "chunks"
  deadline = time.time() + 300
  while time.time() < deadline and killed.poll() is None:
    if chunks.exists() and any(f.endswith(".npz") for f in os.listdir(chunks)):
      break
    time.sleep(0.02)
  assert killed.poll() is None, "the run finished before it could be killed"
  killed.send_signal(signal.SIGKILL)
  killed.wait()
  done = {f: os.path.getmtime(chunks / f) for f in os.listdir(chunks) if f.endswith(".npz")}
  grid = json.loads((tmp_path / "run" / "grid.json").read_text())
  total = sum(len(g["chunks"]) for g in grid["groups"])
  assert 1 <= len(done) < total and not (tmp_path / "run" / "results.parquet").exists()
  _, err = ref.communicate(timeout=600)
  assert ref.returncode == 0, err[-3000:]
  resumed = run(command(name, tmp_path / "run", *flags), env=cached(tmp_path / "cache"))
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  for f, stamp in done.items():  # finished chunks were not recomputed
    assert os.path.getmtime(chunks / f) == stamp
  a, b = load_sweep(str(tmp_path / "ref")), load_sweep(str(tmp_path / "run"))
  pd.testing.assert_frame_equal(a, b)
  pd.testing.assert_frame_equal(load_summary(str(tmp_path / "ref")),
                                load_summary(str(tmp_path / "run")))
  # both axes of the override are in the grid
  swept = [o.split("=")[0][len("sweep."):] for o in CASES[name][1]]
  assert set(swept) <= set(a.columns)
  assert all(a[f].nunique() == 2 for f in swept)
  leftovers = [f for d in ("", "chunks", "points") for f in os.listdir(tmp_path / "run" / d)
               if f.startswith(".") and f != ".lock"]  # the lock file stays
  assert not leftovers


def test_lsa_flow_with_two_axes_overridden(tmp_path):
  """The aligned-init config of the lsa_icl experiment (killed and resumed
  above) through run.py, here in this process."""
  code, err = run_main(*command("lsa_flow", tmp_path / "out", "--figures=none")[2:])
  assert code == 0, err[-3000:]
  summary = load_summary(str(tmp_path / "out"))
  assert len(summary) == 4 and set(summary["task.covariance"]) == {"isotropic", "skewed"}
  assert summary["t_half_theory"].notna().all()


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
  assert "loss_max_rel_error" in proc.stdout


def test_the_tanh_ntk_example(tmp_path):
  """examples/tanh_ntk, tiny, as the README's install leaves it: it writes its
  table, figures and slope, and its theory is the network's linearization: at
  step 0 they coincide, and the distance to it falls with width (1/sqrt(m) at
  least; here 16 against 1024)."""
  code, err = run_main("--config=examples/tanh_ntk/config.py", f"--out={tmp_path / 'run'}",
                       "--config.num_seeds=2", "--config.train.num_steps=40",
                       "--config.sweep.model.width=(16,1024)", "--config.sweep.train.lr=(0.5,)")
  assert code == 0, err
  table = load_sweep(str(tmp_path / "run"))
  start = table[table.step == 0]
  np.testing.assert_allclose(start["f_test_0"], start["f_test_0_pred"], rtol=1e-5, atol=1e-6)
  summary = load_summary(str(tmp_path / "run")).sort_values("model.width")
  assert summary["distance"].iloc[0] > 4 * summary["distance"].iloc[1], summary["distance"]
  assert (tmp_path / "run" / "figure.png").exists() and (tmp_path / "run" / "points" /
                                                         "p00000.png").exists()


TINY_DL = [f"--config.{o}" for o in CASES["deep_linear"][0]] + ["--config.sweep={}"]


def run_dl(out, *extra):
  old = os.umask(0o022)  # the child inherits it: the usual umask, group-readable files
  try:
    return run([sys.executable, "scripts/run.py", "--config=configs/deep_linear.py",
                f"--out={out}", *TINY_DL, *extra])
  finally:
    os.umask(old)


def test_a_run_directory_records_and_refuses(tmp_path):
  out = tmp_path / "run"
  proc = run_dl(out)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "t_half theory" in proc.stdout
  assert sorted(os.listdir(out)) == [".lock", "chunks", "config.json", "figure.png", "grid.json",
                                     "points", "provenance.json", "results.parquet",
                                     "summary.csv", "summary.json"]
  arrays = load_arrays(str(out), 0)
  assert arrays["u"].shape == (3, 11, 4) and arrays["u_pred"].shape == (3, 11, 4)
  summary = json.loads((out / "summary.json").read_text())
  # the printed table and summary.json carry the same number
  assert f"{summary['points'][0]['modes'][0]['learning_time_predicted']:.4g}" in proc.stdout
  prov = json.loads((out / "provenance.json").read_text())
  assert len(prov) == 1 and {"date", "command", "jax", "jaxlib", "dynamics", "git_commit",
                             "devices", "python"} <= set(prov[0])
  assert "--config.sweep={}" in prov[0]["command"]
  for path in (out, out / "summary.json", out / "points", out / "points" / "p00000.npz"):
    assert os.stat(path).st_mode & stat.S_IRGRP, path  # readable by the group
  # the same command again: resumed (nothing to train), provenance appended
  assert run_dl(out).returncode == 0
  assert len(json.loads((out / "provenance.json").read_text())) == 2
  # another config into it: refused, nothing replaced
  before = (out / "results.parquet").read_bytes()
  proc = run_dl(out, "--config.train.lr=0.03")
  assert proc.returncode == 2 and "train.lr: 0.005 -> 0.03" in proc.stderr, proc.stderr
  assert (out / "results.parquet").read_bytes() == before


def test_a_diverged_run_says_so(tmp_path):
  proc = run_dl(tmp_path / "run", "--config.train.lr=3.0")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "every seed (3) diverged" in proc.stdout and "%" not in proc.stdout.split("diverged")[1]
  text = (tmp_path / "run" / "summary.json").read_text()
  assert "NaN" not in text and json.loads(text)["points"][0]["diverged_seeds"] == 3
  assert load_sweep(str(tmp_path / "run"))["diverged"].all()


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


@pytest.mark.parametrize("var, value", [("DYNAMICS_CHUNK_ROWS", "-1"),
                                        ("DYNAMICS_CPU_OPT_LEVEL", "9")])
def test_bad_engine_settings_fail_before_writing(tmp_path, monkeypatch, var, value):
  monkeypatch.setenv(var, value)
  code, err = run_main("--config=configs/deep_linear.py", f"--out={tmp_path / 'bad'}")
  assert code == 2 and var in err, err
  assert not (tmp_path / "bad").exists()


def test_a_full_disk_is_one_line_and_resumable(tmp_path, monkeypatch):
  from dynamics import io
  real = io.write_npz

  def full(path, arrays):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

  monkeypatch.setattr(io, "write_npz", full)
  args = ["--config=configs/deep_linear.py", f"--out={tmp_path / 'run'}", *TINY_DL,
          "--figures=none"]
  code, err = run_main(*args)
  assert code == 2 and "No space left on device" in err and "resumes" in err, err
  assert len(err.strip().splitlines()) == 1, err
  monkeypatch.setattr(io, "write_npz", real)
  code, err = run_main(*args)
  assert code == 0, err


def test_missing_config_and_unwritable_out(tmp_path):
  code, err = run_main(f"--config={tmp_path}/nope.py")
  assert code == 2 and "does not exist" in err
  blocker = tmp_path / "file"
  blocker.write_text("")
  code, err = run_main("--config=configs/deep_linear.py", f"--out={blocker}")
  assert code == 2 and "--out" in err and "not a directory" in err, err
  code, err = run_main("--config=configs/deep_linear.py", f"--config.output_dir={blocker}")
  assert code == 2 and "config.output_dir" in err, err


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_every_config_runs_its_default_grid(name, tmp_path):
  """The README's commands, at full size."""
  proc = run([sys.executable, "scripts/run.py", f"--config=configs/{name}.py",
              f"--out={tmp_path / name}"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert len(load_summary(str(tmp_path / name))) > 1


def test_plot_sweep_compares_points_at_the_same_time(tmp_path):
  """lr 0.01 and 0.02 log at t = 0.2 k and 0.4 k. At --t=2.6 the first point
  is a logged row, returned as is; the second lies halfway between its rows at
  t = 2.4 and 2.8, and gets their mean (linear interpolation), where the
  same step index would have put it at t = 5.2."""
  out = tmp_path / "run"
  assert run_dl(out, "--config.init.name=aligned", "--config.sweep.train.lr=(0.01,0.02)",
                "--config.train.num_steps=300").returncode == 0
  spec = importlib.util.spec_from_file_location("plot_sweep", os.path.join(ROOT, "scripts",
                                                                            "plot_sweep.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  table = load_sweep(str(out)).sort_values(["train.lr", "seed"])
  at = module.at_time(table, ["u_0", "u_0_pred"], 2.6).sort_values(["train.lr", "seed"])
  rows = lambda lr, t: table[(table["train.lr"] == lr) & np.isclose(table["t"], t)]
  np.testing.assert_array_equal(at[at["train.lr"] == 0.01]["u_0"], rows(0.01, 2.6)["u_0"])
  mid = (rows(0.02, 2.4)["u_0"].to_numpy() + rows(0.02, 2.8)["u_0"].to_numpy()) / 2
  np.testing.assert_allclose(at[at["train.lr"] == 0.02]["u_0"], mid, rtol=1e-12)
  proc = run([sys.executable, "scripts/plot_sweep.py", f"--dir={out}", "--x=train.lr",
              "--metric=u_0", "--t=2.6"])
  assert proc.returncode == 0 and (out / "u_0_vs_train.lr.png").exists(), proc.stderr[-2000:]
