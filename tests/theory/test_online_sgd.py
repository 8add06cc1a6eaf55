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


@pytest.mark.parametrize("k, m, second", [(2, 2, False), (3, 2, True), (1, 3, True)])
def test_drift_against_monte_carlo_over_the_fields(k, m, second):
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
  err = g(nu) @ vt - g(lam) @ v  # tau - sigma
  delta = v * np.sqrt(2 / np.pi) * np.exp(-lam**2 / 2) * err[:, None]
  first = delta[:, :, None] * lam[:, None, :]  # delta_i l_k
  samples = {"dq": lr * (first + first.transpose(0, 2, 1))
                   + lr**2 * delta[:, :, None] * delta[:, None, :],
             "dr": lr * delta[:, :, None] * nu[:, None, :],
             "dv": lr * err[:, None] * g(lam) if second else np.zeros((n, k))}
  with jax.enable_x64(True):
    got = jax.jit(lambda *a: online_sgd.committee_drift(*a, lr=lr, v=v, v_teacher=vt,
                                                        train_second_layer=second))(q, r, t)
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
