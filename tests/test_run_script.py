"""scripts/run.py end to end: what a newcomer runs, what it writes."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd

from tests.helpers import ROOT

SMALL = ["--config.num_seeds=4", "--config.train.num_steps=600",
         "--config.train.log_every=20", "--config.train.lr=0.02"]


def run(*args):
  return subprocess.run(
      [sys.executable, "scripts/run.py", "--config=configs/deep_linear.py", *args],
      cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_writes_a_complete_run_directory(tmp_path):
  out_dir = tmp_path / "run"
  proc = run(*SMALL, f"--config.output_dir={out_dir}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "t_half theory" in proc.stdout
  assert sorted(os.listdir(out_dir)) == [
      "config.json", "figure.png", "summary.json", "trajectories.npz",
      "trajectories.parquet"]
  with np.load(out_dir / "trajectories.npz", allow_pickle=False) as z:
    assert z["u"].shape == (4, 31, 8) and z["u_pred"].shape == (4, 31, 8)
  table = pd.read_parquet(out_dir / "trajectories.parquet")
  assert len(table) == 4 * 31 and {"seed", "step", "t", "loss", "u_0", "u_0_pred"} <= set(table)
  summary = json.loads((out_dir / "summary.json").read_text())
  assert len(summary["modes"]) == 4
  # The printed table and summary.json carry the same number.
  assert f"{summary['modes'][0]['learning_time_predicted']:.4g}" in proc.stdout
  assert json.loads((out_dir / "config.json").read_text())["train"]["lr"] == 0.02


def test_bad_override_fails_before_compiling_and_writes_nothing(tmp_path):
  out_dir = tmp_path / "bad"
  proc = run(*SMALL, "--config.model.width=0", f"--config.output_dir={out_dir}")
  assert proc.returncode == 2
  assert "model.width" in proc.stderr
  assert not out_dir.exists() and os.listdir(tmp_path) == []


def test_unwritable_output_dir(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("")
  proc = run(*SMALL, f"--config.output_dir={blocker}/run")
  assert proc.returncode == 2 and "output_dir" in proc.stderr
