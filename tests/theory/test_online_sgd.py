"""theory.online_sgd.committee_error against a Monte-Carlo average over the
Gaussian fields, and against the input average of actual N-dimensional
networks; bad order parameters refused by name."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from theory import online_sgd

SAMPLES = 400_000


def order_parameters(k, m, n, seed):
  """Q, R, T of random student and teacher weights in n dimensions (valid by
  construction: Gram matrices)."""
  rng = np.random.default_rng(seed)
  w, w_star = rng.normal(size=(k, n)) * rng.uniform(0.3, 1.5, (k, 1)), rng.normal(size=(m, n))
  return w @ w.T / n, w @ w_star.T / n, w_star @ w_star.T / n


G = {"erf": lambda x: __import__("scipy.special").special.erf(x / np.sqrt(2)),
     "relu": lambda x: np.maximum(x, 0.0), "linear": lambda x: x}


@pytest.mark.parametrize("activation", online_sgd.ACTIVATIONS)
@pytest.mark.parametrize("k, m", [(2, 2), (3, 1), (1, 4)])
def test_error_against_monte_carlo_over_the_fields(activation, k, m):
  # Fields (lambda, nu) ~ N(0, [[Q, R], [R^T, T]]); eps = 1/2 E (v.g(lambda) -
  # v*.g(nu))^2 estimated from 4e5 draws with its standard error; the closed
  # form must sit within 5 standard errors (a wrong term, e.g. a missing
  # factor 2 on the cross term or erf(x) for erf(x/sqrt(2)), moves eps by
  # O(eps), hundreds of standard errors here).
  q, r, t = order_parameters(k, m, k + m + 3, seed=k * 10 + m)
  rng = np.random.default_rng(0)
  v, vt = rng.normal(size=k), rng.normal(size=m)
  c = np.block([[q, r], [r.T, t]])
  z = rng.multivariate_normal(np.zeros(k + m), c, size=SAMPLES, method="cholesky")
  g = G[activation]
  err = 0.5 * (g(z[:, :k]) @ v - g(z[:, k:]) @ vt) ** 2
  mc, se = err.mean(), err.std() / np.sqrt(SAMPLES)
  with jax.enable_x64(True):
    got = float(online_sgd.committee_error(q, r, t, v, vt, activation=activation))
  assert abs(got - mc) < 5 * se, (got, mc, se)


def test_error_of_networks_averaged_over_inputs():
  # The same quantity from the networks themselves: K = 2 student and M = 3
  # teacher erf committees (second layers ones, Saad & Solla's setting) in
  # N = 50 dimensions, the error averaged over 2e5 Gaussian inputs; tolerance
  # 5 standard errors.
  rng = np.random.default_rng(7)
  n, w, w_star = 50, rng.normal(size=(2, 50)), rng.normal(size=(3, 50))
  x = rng.normal(size=(200_000, n))
  g = G["erf"]
  err = 0.5 * (g(x @ w.T / np.sqrt(n)).sum(1) - g(x @ w_star.T / np.sqrt(n)).sum(1)) ** 2
  with jax.enable_x64(True):
    got = float(online_sgd.committee_error(w @ w.T / n, w @ w_star.T / n,
                                           w_star @ w_star.T / n))
  assert abs(got - err.mean()) < 5 * err.std() / np.sqrt(len(err)), (got, err.mean())


def test_a_student_equal_to_its_teacher_has_no_error():
  # R = Q = T (the student is the teacher): every term cancels exactly.
  q = order_parameters(3, 3, 8, seed=1)[0]
  for activation in online_sgd.ACTIVATIONS:
    with jax.enable_x64(True):
      assert abs(float(online_sgd.committee_error(q, q, q, activation=activation))) < 1e-14


def test_saad_solla_symmetric_plateau_error():
  # K = M = 2, T = I, Q = (q - c) I + c 11^T, R = r 11^T (the unspecialised
  # plateau's form): the closed form written out by hand for erf,
  # eps = (1/pi) [2 asin(q/(1+q)) + 2 asin(c/(1+q)) + 2 asin(1/2) - 8 asin(r/sqrt(2(1+q)))].
  qq, c, r = 0.6, 0.4, 0.45
  q = np.array([[qq, c], [c, qq]])
  want = (2 * np.arcsin(qq / (1 + qq)) + 2 * np.arcsin(c / (1 + qq)) + 2 * np.arcsin(0.5)
          - 8 * np.arcsin(r / np.sqrt(2 * (1 + qq)))) / np.pi
  with jax.enable_x64(True):
    got = float(online_sgd.committee_error(q, np.full((2, 2), r), np.eye(2)))
  np.testing.assert_allclose(got, want, rtol=1e-13)


@pytest.mark.parametrize("call, match", [
    (lambda: online_sgd.committee_error(-np.eye(2), np.zeros((2, 2)), np.eye(2)),
     "`q` must be positive semi-definite"),
    (lambda: online_sgd.committee_error(np.eye(2), np.zeros((2, 2)), np.array([[1.0, 2.0],
                                                                                [0.0, 1.0]])),
     "`t` must be symmetric"),
    (lambda: online_sgd.committee_error(np.eye(2), 2 * np.ones((2, 2)), np.eye(2)),
     "jointly.*positive semi-definite"),
    (lambda: online_sgd.committee_error(np.eye(2), np.zeros((2, 3)), np.eye(2)), "shapes"),
    (lambda: online_sgd.committee_error(np.eye(2), np.zeros((2, 2)), np.eye(2), v=np.ones(3)),
     "`v` must have shape"),
    (lambda: online_sgd.committee_error(np.eye(2), np.zeros((2, 2)), np.eye(2),
                                        activation="tanh"), "`activation`"),
    (lambda: online_sgd.committee_error(np.eye(2) * np.nan, np.zeros((2, 2)), np.eye(2)),
     "`q` must be finite"),
])
def test_bad_order_parameters_are_named(call, match):
  with pytest.raises(ValueError, match=match):
    call()


@pytest.mark.parametrize("call, match", [
    (lambda: online_sgd.committee_drift(np.eye(2), np.zeros((2, 2)), np.eye(2), lr=0.0),
     "`lr` must be positive"),
    (lambda: online_sgd.committee_drift(np.eye(2), np.zeros((2, 2)), np.eye(2), lr=0.1,
                                        activation="relu"), "'erf' for committee_drift"),
    (lambda: online_sgd.committee_drift(-np.eye(2), np.zeros((2, 2)), np.eye(2), lr=0.1),
     "`q` must be positive semi-definite"),
])
def test_bad_drift_arguments_are_named(call, match):
  with pytest.raises(ValueError, match=match):
    call()


@pytest.mark.parametrize("k, m, second, noise", [(2, 2, False, 0.0), (3, 2, True, 0.0),
                                                 (1, 3, True, 0.0), (2, 2, False, 0.3)])
def test_drift_against_monte_carlo_over_the_fields(k, m, second, noise):
  # The drift's averages E[delta_i l_k], E[delta_i delta_k], E[delta_i nu_n],
  # E[(tau - sigma) g(l_i)] by Monte Carlo over fields drawn from
  # [[Q, R], [R^T, T]] (2e5 draws), each entry within 5 of its standard errors
  # (propagated: lr and lr^2 times the standard errors of the two averages).
  from scipy.special import erf
  q, r, t = order_parameters(k, m, k + m + 3, seed=3 * k + m)
  rng = np.random.default_rng(1)
  v, vt, lr = rng.uniform(0.5, 1.5, k), rng.uniform(0.5, 1.5, m), 0.7
  n = SAMPLES // 2  # the lr^2 term alone is 200-300 standard errors at this size
  z = rng.multivariate_normal(np.zeros(k + m), np.block([[q, r], [r.T, t]]), size=n,
                              method="cholesky")
  lam, nu = z[:, :k], z[:, k:]
  g = lambda x: erf(x / np.sqrt(2))
  err = g(nu) @ vt - g(lam) @ v + np.sqrt(noise) * rng.normal(size=n)  # y - sigma
  delta = v * np.sqrt(2 / np.pi) * np.exp(-lam**2 / 2) * err[:, None]
  first = delta[:, :, None] * lam[:, None, :]  # delta_i l_k
  samples = {"dq": lr * (first + first.transpose(0, 2, 1))
                   + lr**2 * delta[:, :, None] * delta[:, None, :],
             "dr": lr * delta[:, :, None] * nu[:, None, :],
             "dv": lr * err[:, None] * g(lam) if second else np.zeros((n, k))}
  with jax.enable_x64(True):
    got = jax.jit(lambda *a: online_sgd.committee_drift(
        *a, lr=lr, v=v, v_teacher=vt, noise=noise, train_second_layer=second))(q, r, t)
  for key, s in samples.items():
    mean, se = s.mean(0), s.std(0) / np.sqrt(n)
    assert np.all(np.abs(np.asarray(got[key]) - mean) <= 5 * se + 1e-12), (key, got[key], mean, se)


def test_flow_against_an_ode_solver():
  # committee_flow's fixed-step RK4 (dalpha 0.01: global error ~1e-8 here)
  # against scipy's DOP853 at rtol 1e-11 on the same right-hand side, both
  # layers trained; 1e-6 absolute on O(1) order parameters.
  from scipy.integrate import solve_ivp
  q0, r0, t = order_parameters(3, 2, 9, seed=5)
  v0, lr = np.array([0.8, 1.1, 0.9]), 0.5
  alpha = np.array([0.0, 0.5, 2.0, 6.0])
  with jax.enable_x64(True):
    got = online_sgd.committee_flow(q0, r0, t, alpha, lr=lr, v0=v0, train_second_layer=True)

    @jax.jit
    def drift(y):
      q, r, v = y[:9].reshape(3, 3), y[9:15].reshape(3, 2), y[15:]
      d = online_sgd.committee_drift((q + q.T) / 2, r, t, lr=lr, v=v, train_second_layer=True)
      return jnp.concatenate([jnp.ravel(d["dq"]), jnp.ravel(d["dr"]), jnp.ravel(d["dv"])])

    rhs = lambda _, y: np.asarray(drift(y))

    sol = solve_ivp(rhs, (0, alpha[-1]), np.concatenate([q0.ravel(), r0.ravel(), v0]),
                    t_eval=alpha, method="DOP853", rtol=1e-11, atol=1e-12)
  np.testing.assert_allclose(np.asarray(got["q"]).reshape(4, -1), sol.y[:9].T, atol=1e-6)
  np.testing.assert_allclose(np.asarray(got["r"]).reshape(4, -1), sol.y[9:15].T, atol=1e-6)
  np.testing.assert_allclose(np.asarray(got["v"]), sol.y[15:].T, atol=1e-6)


def test_flow_against_online_sgd_of_networks():
  # Online SGD of actual erf committees (K = M = 2, first layer, lr 0.5) in
  # N = 1000 dimensions, 8 seeds, one fresh Gaussian input a step, to alpha =
  # 3 (3000 steps), from a student half-aligned with the teacher (no plateau).
  # The seed mean of Q, R and the error must sit on the flow from the seeds'
  # mean initial order parameters within 4 standard errors of that mean
  # (fluctuations O(1/sqrt(N)) per seed) plus 3/N (the ODE's O(1/N) bias).
  from scipy.special import erf
  n, seeds, lr, steps = 1000, 8, 0.5, 3000
  rng = np.random.default_rng(11)
  w_star = rng.normal(size=(2, n))
  w = 0.5 * w_star[None] + 0.8 * rng.normal(size=(seeds, 2, n))
  g = lambda x: erf(x / np.sqrt(2))
  order = lambda w: (w @ w.transpose(0, 2, 1) / n, w @ w_star.T / n)
  q0, r0 = order(w)
  t = w_star @ w_star.T / n
  for _ in range(steps):
    x = rng.normal(size=(seeds, n))
    lam, nu = np.einsum("skn,sn->sk", w, x) / np.sqrt(n), x @ w_star.T / np.sqrt(n)
    err = g(nu).sum(1) - g(lam).sum(1)
    delta = np.sqrt(2 / np.pi) * np.exp(-lam**2 / 2) * err[:, None]
    w += lr * delta[:, :, None] * x[:, None, :] / np.sqrt(n)
  q, r = order(w)
  with jax.enable_x64(True):
    flow = online_sgd.committee_flow(q0.mean(0), r0.mean(0), t, [steps / n], lr=lr)
    eps = np.array([float(online_sgd.committee_error(a, b, t)) for a, b in zip(q, r)])
  for sim, theory in ((q, flow["q"][-1]), (r, flow["r"][-1]), (eps, flow["error"][-1])):
    gap = np.abs(sim.mean(0) - np.asarray(theory))
    assert np.all(gap <= 4 * sim.std(0) / np.sqrt(seeds) + 3 / n), (gap, sim.std(0))


@pytest.mark.parametrize("k", [2, 3])
def test_plateau_closed_form_is_a_fixed_point_of_the_drift(k):
  # Saad & Solla's closed form (q = c = 1/(2K-1), r = 1/sqrt(K(2K-1)), derived
  # by hand) against committee_drift's own closed forms (checked by Monte Carlo
  # above): the drift is lr A + lr^2 B, and its first-order part A = 2 d(1) -
  # d(2)/2 must vanish there, to rounding of O(1) terms (1e-14). Its error
  # against committee_error at those order parameters, to rounding.
  p = online_sgd.plateau(k)
  assert p["q"] == pytest.approx(1 / (2 * k - 1), rel=1e-15)
  q = np.full((k, k), p["q"])
  r = np.full((k, k), p["r"])
  with jax.enable_x64(True):
    drift = jax.jit(lambda q, lr: online_sgd.committee_drift(q, r, np.eye(k), lr=lr))
    d1, d2 = (drift(q, lr) for lr in (1.0, 2.0))
    first = {key: 2 * np.asarray(d1[key]) - np.asarray(d2[key]) / 2 for key in ("dq", "dr")}
    assert np.abs(first["dq"]).max() < 1e-14 and np.abs(first["dr"]).max() < 1e-14, first
    assert p["error"] == pytest.approx(float(online_sgd.committee_error(q, r, np.eye(k))),
                                       rel=1e-12, abs=1e-15)
    # and a point off it is not a fixed point (the check can fail)
    d1, d2 = (drift(q * 1.01, lr) for lr in (1.0, 2.0))
  assert np.abs(2 * np.asarray(d1["dr"]) - np.asarray(d2["dr"]) / 2).max() > 1e-5


@pytest.mark.parametrize("k, m, lr", [(2, 2, 1.0), (3, 2, 0.0)])
def test_plateau_at_finite_lr_and_its_escape_rate(k, m, lr):
  # The symmetric fixed point found by the root finder is where committee_flow
  # from it stays (to 1e-9 over alpha 5: a fixed point), and a deviation off
  # the symmetric subspace grows like exp(escape_rate alpha): measured from the
  # flow between alpha 100 and 200 after a 1e-10 antisymmetric kick (still
  # linear: 1e-10 e^(0.08 x 200) ~ 1e-3), to 2%: the kick also excites
  # decaying modes (the slowest decays like exp(-0.009 alpha) at lr 1), which
  # by alpha 100 are down ~1000x relative to the growing one.
  p = online_sgd.plateau(k, m, lr=lr)
  q = np.full((k, k), p["c"] if k > 1 else 0.0) + (p["q"] - (p["c"] if k > 1 else 0.0)) * np.eye(k)
  r = np.full((k, m), p["r"])
  with jax.enable_x64(True):
    if lr > 0:
      still = online_sgd.committee_flow(q, r, np.eye(m), [5.0], lr=lr)
      assert np.abs(np.asarray(still["q"][-1]) - q).max() < 1e-9
      assert np.abs(np.asarray(still["r"][-1]) - r).max() < 1e-9
    kick = np.zeros((k, m))
    kick[0, 0], kick[-1, 0] = 1e-10, -1e-10
    unit = 1.0 if lr > 0 else 1e3  # lr = 0: time in lr x alpha, run at lr 1e-3
    flow = online_sgd.committee_flow(q, r + kick, np.eye(m), [100.0 * unit, 200.0 * unit],
                                     lr=lr if lr > 0 else 1e-3, dalpha=0.05 * unit)
  dev = np.abs(np.asarray(flow["r"])[:, 0, 0] - np.asarray(flow["r"])[:, -1, 0])
  rate = np.log(dev[1] / dev[0]) / 100.0  # per alpha, or per lr x alpha
  want = p["escape_rate"]
  assert rate == pytest.approx(want, rel=0.02), (rate, want)


@pytest.mark.parametrize("k", [2, 3])
def test_critical_lr_separates_learning_from_failing(k):
  # critical_lr comes from the Jacobian's eigenvalues at the solution; the flow
  # (a separate computation: RK4 through the nonlinear ODEs) from 1e-4 off the
  # solution (T = I) must come back to it below the critical rate and leave it above:
  # at 0.9 and 1.1 times it the slowest mode decays or grows like
  # exp(-+0.05 alpha) or faster (its slope in lr is ~1 there), so after alpha
  # 150 the error is down or up by e^7 or more.
  lr_c = online_sgd.critical_lr(k)
  rng = np.random.default_rng(k)
  n = 50  # a student 1e-4 off its teacher, as weights (valid order parameters)
  w_star = np.linalg.qr(rng.normal(size=(n, k)))[0].T * np.sqrt(n)
  w = w_star + 1e-4 * rng.normal(size=(k, n))
  q0, r0 = w @ w.T / n, w @ w_star.T / n
  with jax.enable_x64(True):
    err0 = float(online_sgd.committee_error(q0, r0, np.eye(k)))
    below, above = (float(online_sgd.committee_flow(q0, r0, np.eye(k), [150.0], lr=f * lr_c,
                                                    dalpha=0.02)["error"][-1])
                    for f in (0.9, 1.1))
  assert below < 1e-3 * err0, (below, err0)
  assert not np.isfinite(above) or above > 1e3 * err0, (above, err0)


@pytest.mark.parametrize("call, match", [
    (lambda: online_sgd.plateau(0), "`k` must be an integer >= 1"),
    (lambda: online_sgd.plateau(2, 1.5), "`m` must be an integer"),
    (lambda: online_sgd.plateau(2, activation="relu"), "'erf' for plateau"),
    (lambda: online_sgd.plateau(2, lr=-0.1), "`lr` must be a finite number >= 0"),
    (lambda: online_sgd.plateau(2, lr=float("nan")), "`lr` must be a finite number >= 0"),
    (lambda: online_sgd.critical_lr(True), "`k` must be an integer"),
    (lambda: online_sgd.committee_drift(np.eye(2), np.zeros((2, 2)), np.eye(2), lr=0.1,
                                        noise=-1.0), "`noise` must be non-negative"),
])
def test_bad_plateau_arguments_are_named(call, match):
  with pytest.raises(ValueError, match=match):
    call()


@pytest.mark.parametrize("k", [2, 3])
def test_plateau_against_the_flows_plateau_at_small_lr(k):
  # Identical students (w_i = w: q = c, r_in equal across students) stay
  # identical under the flow, which then settles on the symmetric plateau.
  # committee_flow at lr 1e-3 from a small such init, to lr x alpha = 300,
  # against plateau(k): the lr^2 term moves the fixed point by O(lr) (its
  # slope in lr is ~0.1 for these K, so ~1e-4), and the approach along the
  # symmetric subspace decays like exp(-0.05 lr alpha) or faster (3e-7 left):
  # tolerance 1e-3 on every overlap and on the error.
  p = online_sgd.plateau(k)
  rng = np.random.default_rng(k)
  n = 40
  w_star = np.linalg.qr(rng.normal(size=(n, k)))[0].T * np.sqrt(n)
  w = np.tile(0.05 * rng.normal(size=(1, n)) + 0.01 * w_star.mean(0), (k, 1))
  lr = 1e-3
  with jax.enable_x64(True):
    flow = online_sgd.committee_flow(w @ w.T / n, w @ w_star.T / n, w_star @ w_star.T / n,
                                     [300 / lr], lr=lr, dalpha=10.0)  # rates ~1e-3
  q, r = np.asarray(flow["q"][-1]), np.asarray(flow["r"][-1])
  assert np.abs(q - p["q"]).max() < 1e-3, (q, p)  # q = c here
  assert np.abs(r - p["r"]).max() < 1e-3, (r, p)
  assert abs(float(flow["error"][-1]) - p["error"]) < 1e-3
