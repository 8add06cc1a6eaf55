"""A grid under jax.distributed: two local CPU processes (coordinator on
localhost, two devices each) write the same table as one process with four
devices, bit for bit (the rows fall into the same four device blocks)."""

import os
import socket
import subprocess
import sys

import pandas as pd

from dynamics import load_summary, load_sweep
from tests.helpers import ROOT

TINY = ["--config=tests/experiments/toy.py", "--config.num_seeds=6",
        "--config.train.num_steps=200", "--config.train.log_every=20",
        "--config.sweep.train.lr=(0.05,0.1)", "--config.noise=0.1",
        "--config.precision=float64", "--figures=none"]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def launch(out, *extra, devices=2):
  env = dict(os.environ, JAX_PLATFORMS="cpu", DYNAMICS_CPU_DEVICES=str(devices))
  env.pop("XLA_FLAGS", None)
  return subprocess.Popen([sys.executable, "scripts/run.py", *TINY, f"--out={out}", *extra],
                          cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)


def test_two_processes_equal_one(tmp_path):
  port = free_port()
  procs = [launch(tmp_path / "two", f"--coordinator_address=localhost:{port}",
                  "--num_processes=2", f"--process_id={i}") for i in (0, 1)]
  one = launch(tmp_path / "one", devices=4)
  outs = [p.communicate(timeout=600) for p in procs + [one]]
  for p, (stdout, err) in zip(procs + [one], outs):
    assert p.returncode == 0, err[-3000:]
  assert "wrote" in outs[0][0] and "wrote" not in outs[1][0]  # process 0 writes and reports
  pd.testing.assert_frame_equal(load_sweep(str(tmp_path / "two")),
                                load_sweep(str(tmp_path / "one")), check_exact=True)
  pd.testing.assert_frame_equal(load_summary(str(tmp_path / "two")),
                                load_summary(str(tmp_path / "one")), check_exact=True)
  # the finished one-process run again, as two processes: nothing to compute,
  # and process 1 stops with process 0 instead of waiting
  port = free_port()
  procs = [launch(tmp_path / "one", f"--coordinator_address=localhost:{port}",
                  "--num_processes=2", f"--process_id={i}") for i in (0, 1)]
  for p in procs:
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
  # a run another process holds: process 0 refuses, and process 1 stops with it
  from dynamics import io
  port = free_port()
  with io.lock(str(tmp_path / "one")):
    procs = [launch(tmp_path / "one", f"--coordinator_address=localhost:{port}",
                    "--num_processes=2", f"--process_id={i}") for i in (0, 1)]
    for p in procs:
      _, err = p.communicate(timeout=600)
      assert p.returncode == 2 and "being written by" in err, err
