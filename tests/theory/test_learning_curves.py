"""theory.learning_curves: the eigenlearning identities to rounding, the
learning curve against Monte-Carlo kernel ridge regression on a Gaussian
design, the sphere's Funk-Hecke spectrum against a kernel matrix's, bad input
named."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from theory import learning_curves as lc
from theory import ntk


def power_law(p, a):
  lam = np.arange(1, p + 1, dtype=np.float64) ** -a
  return lam / lam.sum()


@pytest.mark.parametrize("n", [1, 7, 100, 499])
@pytest.mark.parametrize("ridge", [0.0, 1e-4, 0.3])
def test_identities_to_rounding(n, ridge):
  # sum_k m_k L_k = n - ridge / kappa (the defining equation), and with the
  # target's power per mode equal to the spectrum at ridge 0, excess = n kappa
  # (E0 sum m (1-L)^2 lam = n kappa when sum m L = n): both to 1e-12 relative.
  lam = power_law(250, 1.3)
  mult = np.arange(1, 251) % 3 + 1.0  # 500 modes in all
  with jax.enable_x64(True):
    out = lc.test_error(lam, np.sqrt(lam), n, ridge, multiplicities=mult)
    kappa = float(out["kappa"])
    total = float(jnp.sum(mult * out["learnability"]))
  assert kappa > 0
  assert total == pytest.approx(n - ridge / kappa, rel=1e-12, abs=1e-12)
  if ridge == 0:
    assert float(out["excess"]) == pytest.approx(n * kappa, rel=1e-12)
    assert float(out["train"]) == 0.0
  else:  # train = (ridge / (n kappa))^2 test
    assert float(out["train"]) == pytest.approx((ridge / (n * kappa))**2 * float(out["test"]),
                                                rel=1e-12)


def test_past_the_number_of_modes_at_ridge_zero():
  # 100 modes, n = 150: kappa = 0, every mode learned, E0 = n / (n - 100) = 3:
  # excess = (E0 - 1) noise exactly; at n = 100 with noise the peak is infinite.
  lam = power_law(100, 1.0)
  with jax.enable_x64(True):
    out = lc.test_error(lam, np.sqrt(lam), 150, 0.0, noise=0.1)
    peak = lc.test_error(lam, np.sqrt(lam), 100, 0.0, noise=0.1)
  assert float(out["kappa"]) == 0.0 and np.all(np.asarray(out["learnability"]) == 1.0)
  assert float(out["excess"]) == pytest.approx(2 * 0.1, rel=1e-12)
  assert np.isinf(float(peak["excess"]))


def test_vmap_over_n_and_ridge_equals_one_at_a_time():
  lam = power_law(300, 1.5)
  ns, ridges = jnp.array([3.0, 30.0, 290.0]), jnp.array([0.0, 1e-3, 1.0])
  with jax.enable_x64(True):
    grid = jax.jit(jax.vmap(jax.vmap(lambda n, r: lc.test_error(lam, np.sqrt(lam), n, r)["test"],
                                     (None, 0)), (0, None)))(ns, ridges)
    for i, n in enumerate(ns):
      for j, r in enumerate(ridges):
        one = lc.test_error(lam, np.sqrt(lam), float(n), float(r))["test"]
        assert float(grid[i, j]) == pytest.approx(float(one), rel=1e-12)


@pytest.mark.parametrize("n, ridge", [(50, 0.0), (200, 1e-2), (400, 0.0), (800, 1e-3)])
def test_against_kernel_ridge_regression_on_a_gaussian_design(n, ridge):
  # Features z ~ N(0, I_P), P = 600 modes with power-law eigenvalues; kernel
  # K(x, x') = sum_k lam_k z_k z'_k, target f = sum_k v_k z_k, labels with noise
  # variance 0.01. The excess error of each draw is exact (sum (v - v_hat)^2);
  # over draws its mean must match test_error within 4 standard errors plus
  # 2/n relative (the theory is the leading order in 1/n; the corrections
  # measured at these sizes are 1-3% at n = 50, 1% at 200). The same band for
  # the residual's power in the first 50 modes and in the rest (mode_residuals:
  # the learned coefficients' mean misses (1 - L) v, their spread adds L^2
  # test / n per mode; Canatar et al.'s mode_errors, which put the spread in
  # proportion to the bias, fail it: the first modes' bias is ~0; 50 modes, not
  # fewer: a few modes' sum is chi-square-like with few degrees of freedom).
  p, noise = 600, 0.01
  lam = power_law(p, 1.5)
  v = np.arange(1, p + 1) ** -0.6
  v /= np.linalg.norm(v)
  rng = np.random.default_rng(n + int(1e4 * ridge))
  draws = 30 if n < 400 else 12
  ex, head = [], []
  for _ in range(draws):
    z = rng.normal(size=(n, p))
    y = z @ v + np.sqrt(noise) * rng.normal(size=n)
    alpha = np.linalg.solve((z * lam) @ z.T + ridge * np.eye(n), y)
    r2 = (v - lam * (z.T @ alpha)) ** 2
    ex.append(r2.sum())
    head.append(r2[:50].sum())
  ex, head = np.array(ex), np.array(head)
  with jax.enable_x64(True):
    out = lc.test_error(lam, v, n, ridge, noise)
  theory = float(out["excess"])
  res = np.asarray(out["mode_residuals"])
  assert res.sum() == pytest.approx(theory, rel=1e-10)
  for sim, pred in ((ex, theory), (head, res[:50].sum()), (ex - head, res[50:].sum())):
    se = sim.std(ddof=1) / np.sqrt(draws)
    assert abs(sim.mean() - pred) <= 4 * se + 2 / n * pred, (sim.mean(), se, pred)


@pytest.mark.parametrize("d", [3, 8])
def test_sphere_spectrum_against_a_kernel_matrix(d):
  # The depth-2 relu NTK on the sphere of radius sqrt(d) (mlp_kernel's |x|^2 =
  # d): the eigenvalues of K / M on M = 1000 uniform points fall in groups of
  # the degrees' multiplicities (1, d, ...); each group's mean against
  # Funk-Hecke's eigenvalue within 3 sqrt(2 / (M m_l)) relative (a group's
  # eigenvalues each fluctuate by ~sqrt(2/M) relative, their mean by that over
  # sqrt(m_l)), for the degrees 0, 1, 2 (the largest, separated); M = 1000.
  kf = ntk.mlp_kernel(2, "relu", 1.0, 0.1)
  sp = lc.sphere_spectrum(kf, d, 4, radius=np.sqrt(d))
  m = 1000
  rng = np.random.default_rng(d)
  x = rng.normal(size=(m, d))
  x *= np.sqrt(d) / np.linalg.norm(x, axis=1, keepdims=True)
  with jax.enable_x64(True):
    k = np.asarray(jax.jit(lambda a: kf(a)["ntk"])(jnp.asarray(x)))
  emp = lc.empirical_spectrum(k)["eigenvalues"]
  start = 0
  for lam, mult in zip(sp["eigenvalues"][:3], sp["multiplicities"][:3].astype(int)):
    group = emp[start:start + mult]
    assert group.mean() == pytest.approx(lam, rel=3 * np.sqrt(2 / (m * mult))), (lam, group)
    start += mult
  assert sp["multiplicities"][1] == d


@pytest.mark.parametrize("d", [2, 3, 5, 8])
def test_gegenbauer_against_scipy(d):
  # The recurrence against scipy's C_l^{(d-2)/2} / C_l^{(d-2)/2}(1) (Chebyshev
  # cos(l arccos t) at d = 2, Legendre at d = 3), degrees 0-12, to 1e-12.
  from scipy.special import eval_gegenbauer, eval_legendre
  t = np.linspace(-1, 1, 41)
  with jax.enable_x64(True):
    p = np.asarray(lc.gegenbauer(t, 12, d))
  for l in range(13):
    want = (np.cos(l * np.arccos(t)) if d == 2 else eval_legendre(l, t) if d == 3 else
            eval_gegenbauer(l, (d - 2) / 2, t) / eval_gegenbauer(l, (d - 2) / 2, 1.0))
    np.testing.assert_allclose(p[l], want, atol=1e-12)


@pytest.mark.parametrize("d, low, high", [(3, 60, 240), (8, 10, 40)])
def test_the_spectrum_tail_acts_as_a_ridge(d, low, high):
  # The degrees above max_degree, folded into the ridge as `tail`, give the
  # curve of a spectrum cut far higher: the ridgeless depth-2 relu NTK curve
  # (degrees 1-4 of the target, n 4-1024) with degrees up to `low` and
  # ridge = tail within 2% of that with degrees up to `high` (where the tail is
  # 4x smaller); without the tail the cut at `low` is off by more than 10% at
  # n = 1024 (the test can fail). The relu kernel is jitted: its closed forms
  # are exact either way.
  kf = jax.jit(ntk.mlp_kernel(2, "relu", 1.0, 0.5))
  curves = {}
  for deg in (low, high):
    sp = lc.sphere_spectrum(kf, d, deg, radius=np.sqrt(d), quadrature=10 * high)
    lam, m = sp["eigenvalues"], sp["multiplicities"]
    v = np.where((sp["degree"] >= 1) & (sp["degree"] <= 4), np.sqrt(0.25 / m), 0.0)
    with jax.enable_x64(True):
      curve = jax.jit(jax.vmap(lambda n, r: lc.test_error(lam, v, n, r, multiplicities=m)[
          "excess"], (0, None), 0))
      curves[deg] = [np.asarray(curve(jnp.array([4.0, 64.0, 1024.0]), r))
                     for r in (sp["tail"], 0.0)]
  np.testing.assert_allclose(curves[low][0], curves[high][0], rtol=0.02)
  assert abs(curves[low][1][-1] / curves[high][0][-1] - 1) > 0.1


def test_sphere_spectrum_of_a_polynomial_kernel_is_exact():
  # h(t) = t^2 on S^2 (d = 3): t^2 = (1/3) P_0 + (2/3) P_2, so lambda_0 = 1/3,
  # lambda_2 = (2/3) / 5 (Funk-Hecke: the coefficient over 2l + 1), others 0.
  sp = lc.sphere_spectrum(lambda a, b: (a @ b.T) ** 2, 3, 3)
  np.testing.assert_allclose(sp["eigenvalues"], [1 / 3, 0.0, 2 / 15, 0.0], atol=1e-14)
  np.testing.assert_array_equal(sp["multiplicities"], [1, 3, 5, 7])
  assert abs(sp["tail"]) < 1e-13  # h(1) = 1 = 1/3 + 5 x 2/15: none above degree 3 (rounding)


@pytest.mark.parametrize("call, match", [
    (lambda: lc.effective_regularization([1.0, -0.1], 10), "`eigenvalues` must be non-negative"),
    (lambda: lc.effective_regularization([1.0, 0.5], 0), "`n` must be positive"),
    (lambda: lc.effective_regularization([1.0, 0.5], 10, ridge=-1.0),
     "`ridge` must be non-negative"),
    (lambda: lc.test_error([1.0, 0.5], [1.0], 10), "`target_coefficients` must have the shape"),
    (lambda: lc.learnability([1.0, 0.5], 10, multiplicities=[1.0]), "`multiplicities` must"),
    (lambda: lc.test_error([1.0, 0.5], [1.0, 0.2], 10, noise=-0.1), "`noise` must be"),
    (lambda: lc.sphere_spectrum(lambda a, b: a @ b.T, 1, 3), "`d` must be an integer >= 2"),
    (lambda: lc.sphere_spectrum("relu", 3, 3), "`kernel_fn` must be callable"),
    (lambda: lc.sphere_spectrum(ntk.mlp_kernel(2), 3, 3, which="nngpp"), "`which` must be"),
    (lambda: lc.empirical_spectrum(np.ones((3, 2))), "`kernel_matrix` must be square"),
])
def test_bad_input_is_named(call, match):
  with pytest.raises(ValueError, match=match):
    call()
