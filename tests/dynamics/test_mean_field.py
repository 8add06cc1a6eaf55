"""The mean-field experiment (dynamics/experiments/mean_field.py): its step is
the mean-field flow's (a network follows the kernel equations from its own init
up to GD's O(lr)), and its finite-width gap to the infinite-width solution falls
like 1/sqrt(width) per seed."""

import jax
import numpy as np
import pytest

from dynamics import simulate
from tests.helpers import assert_plan_refuses
from tests.helpers import config as load


def config(overrides=()):
  return load("mean_field", ["sweep={}", *overrides])


@pytest.mark.slow  # experiment-scale; the same law at the theory level: tests/theory/test_dmft.py
def test_the_step_is_the_mean_field_flow():
  """Width 256, gamma0 2, 4 seeds, t = 4 (float64): the logged outputs against
  `theory.dmft` from each seed's own step-0 `(f, H, A)`. The equations are exact
  at every width, so the gap is GD's O(lr) alone: halving lr (0.02 -> 0.01)
  halves it (ratio 2 +- 0.2), and it is below 0.05 of |y| (~2.8). A step off by
  any factor (gamma0^2 N missing, or t counted with it) would put the gap at
  O(1) and the ratio near 1."""
  gaps = []
  for lr, steps in ((0.02, 200), (0.01, 400)):
    c = config(["model.width=256", "model.gamma0=2.0", "precision=float64",
                f"train.lr={lr}", f"train.num_steps={steps}", "train.log_every=20"])
    (r,), _ = simulate(c)
    gaps.append(r.summary["gap_own"])
    y_norm = float(np.linalg.norm(r.data["y"]))
  assert gaps[1] < 0.05 * y_norm, gaps
  assert abs(gaps[0] / gaps[1] - 2.0) < 0.2, gaps


@pytest.mark.slow  # experiment-scale; the same law at the theory level: tests/theory/test_dmft.py
def test_finite_width_gap_falls_like_one_over_sqrt_width():
  """gamma0 1, widths 64, 256, 1024, 16 seeds, t = 4: the RMS over seeds of
  `max_t |f_N - f_inf|` has a log-log slope in [-0.7, -0.3] against width
  (the init's overlaps fluctuate by O(1/sqrt(N)); configs/mean_field.py
  measured -0.50 at 32 seeds; 16 seeds leave about 0.1 of noise on it)."""
  c = config(["num_seeds=16", "model.gamma0=1.0", "train.num_steps=160",
              "train.log_every=20", "sweep.model.width=(64, 256, 1024)"])
  _, rep = simulate(c)
  assert -0.7 <= rep["slopes"]["1.0"]["seed"] <= -0.3, rep["slopes"]


@pytest.mark.parametrize("field, value", [("model.gamma0", 0.0), ("model.width", 0),
                                          ("task.n", 0), ("task.d", 0), ("model.depth", 1),
                                          ("model.activation", "sigmoid"),
                                          ("train.optimizer", "adam"),
                                          ("train.decay", "cosine")])
def test_bad_fields_are_named(field, value):
  assert_plan_refuses("mean_field", field, value)


def test_deep_network_kernels_follow_the_march():
  """Depth 3, width 1024, gamma0 1.5, 8 seeds, 30 steps at lr 0.05 (float32):
  the experiment's logged per-layer kernels against `theory.dmft.deep_linear_gd`
  at the same steps. Each seed's kernels fluctuate by O(1/sqrt(N)) ~ 0.03 of
  their size; the mean over 8 seeds by ~0.011; asserted within 0.06 (5x) of
  the largest entry at every logged step. The test can fail: the kernels move
  from their start by more than 0.3 of it (asserted > 4x the tolerance), and a
  wrong `g^l` recursion or layer order shows as an O(1) error."""
  c = config(["model.depth=3", "model.width=1024", "model.gamma0=1.5", "num_seeds=8",
              "train.lr=0.05", "train.num_steps=30", "train.log_every=5"])
  (r,), _ = simulate(c)
  for name in ("H_layers", "G_layers"):
    sim = np.asarray(r.traj.logged[name]).mean(0)
    th = np.asarray(r.pred[name][0])
    scale = np.abs(th).max()
    assert np.abs(sim - th).max() < 0.06 * scale, (name, np.abs(sim - th).max(), scale)
    assert np.abs(th[-1] - th[0]).max() > 4 * 0.06 * scale, name


@pytest.mark.slow  # experiment-scale; the same law at the theory level: tests/theory/test_dmft.py
def test_nonlinear_network_follows_the_single_site_process():
  """tanh, width 1024, gamma0 2, 8 seeds, 80 steps at lr 0.025 (t = 2): the seed
  mean of the outputs against `theory.dmft.single_site_flow` on 8192 sampled
  units. Each seed's `f` fluctuates by ~1/(gamma0 sqrt(N)) = 0.016 and the
  mean of 8 by 0.006; the sampled theory errs by about as much as one network of
  8192 units, 0.006; GD's O(lr) gap is ~0.003 (the theory test's rate at this
  lr). 4.5 combined standard errors and the lr gap: 0.04, asserted at every
  logged step. The rich-lazy difference at t = 2 exceeds it 3x (asserted)."""
  c = config(["model.activation=tanh", "model.width=1024", "model.gamma0=2.0",
              "model.samples=8192", "num_seeds=8", "train.num_steps=80", "train.log_every=10"])
  (r,), _ = simulate(c)
  f = np.asarray(r.traj.logged["f"]).mean(0)
  th = np.asarray(r.pred["f"][0])
  assert np.abs(f - th).max() < 0.04, np.abs(f - th).max()
  from theory import dmft
  lazy = np.asarray(dmft.single_site_flow("tanh", 0.0, r.data["x"], r.data["y"],
                                          np.asarray(r.traj.t[0], np.float64),
                                          key=jax.random.PRNGKey(1), samples=8192)["f"])
  assert np.abs(th[-1] - lazy[-1]).max() > 3 * 0.04


@pytest.mark.slow  # experiment-scale: the paper config at a smaller size
def test_bordelon2022_direction():
  """configs/papers/bordelon2022_deep_linear.py at widths 64 and 512, gamma0 0.5
  and 2, 16 seeds, 60 steps (t = 3): the claims of the paper's deep linear figure.
  Richer networks reach a lower loss; each hidden layer's kernel aligns with
  `y y^T` more than the one below it and more at larger gamma0, in theory and in
  the simulation; at width 512 the simulated alignments are within 0.02 of the
  DMFT's (width 2048 measured 0.003; the seed mean's alignment moves by
  O(1/sqrt(N S)) ~ 0.01); one seed's gap falls with width (slope in [-0.75,
  -0.25], 16 seeds over two widths leave about 0.15 of noise on -0.5)."""
  c = load("papers/bordelon2022_deep_linear",
           ["num_seeds=16", "train.num_steps=60", "sweep.model.width=(64, 512)",
            "sweep.model.gamma0=(0.5, 2.0)"])
  results, rep = simulate(c)
  layers = rep["layers"]
  for source in ("theory", "simulation"):
    for g in ("0.5", "2.0"):
      assert np.all(np.diff(layers[g][source]) > 0), (source, g, layers[g][source])
    assert np.all(np.array(layers["2.0"][source]) > np.array(layers["0.5"][source]))
  for g in ("0.5", "2.0"):
    assert np.abs(np.array(layers[g]["simulation"]) - layers[g]["theory"]).max() < 0.02
  loss = {float(r.config.model.gamma0): float(np.median(r.traj.logged["loss"][:, -1]))
          for r in results if r.config.model.width == 512}
  assert loss[2.0] < loss[0.5] / 10, loss
  for g in ("0.5", "2.0"):
    assert -0.75 <= rep["slopes"][g]["seed"] <= -0.25, rep["slopes"]
