"""theory.stability: the exact quadratic trajectories against optax's own
iterations, and each threshold against the optimizer's behaviour at 0.99x and
1.01x of it."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from theory import stability

LAM = np.array([3.0, 1.0, 0.2, -0.05])  # a negative direction too: it grows for every lr


def iterate(opt, lam, x0, steps):
  """optax's updates on L = 1/2 sum lam x^2, float64: x at each of `steps`."""
  x, state, out = jnp.asarray(x0), opt.init(jnp.asarray(x0)), {}
  for k in range(max(steps) + 1):
    if k in steps:
      out[k] = np.asarray(x)
    updates, state = opt.update(jnp.asarray(lam) * x, state, x)
    x = optax.apply_updates(x, updates)
  return np.stack([out[k] for k in steps])


@pytest.mark.parametrize("optimizer, beta", [("gd", 0.0), ("momentum", 0.9),
                                             ("nesterov", 0.7)])
def test_trajectory_is_optax_iteration(optimizer, beta):
  # The exact iterates against optax.sgd's, at 0, 1, 7 and 60 steps, to 1e-10
  # relative (float64): the recurrences of the module docstring are optax's.
  steps, lr, x0 = [0, 1, 7, 60], 0.3, np.array([1.0, -0.5, 0.25, 2.0])
  opt = optax.sgd(lr, momentum=None if optimizer == "gd" else beta,
                  nesterov=optimizer == "nesterov")
  with jax.enable_x64(True):
    want = iterate(opt, LAM, x0, steps)
    got = np.asarray(stability.quadratic_trajectory(LAM, x0, lr, np.array(steps), optimizer,
                                                    beta)["x"])
  np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def frozen_adam(lam, precond, x0, lr, b1, steps):
  """Adam's step with its preconditioner frozen: m' = b1 m + (1 - b1) g,
  x' = x - lr m' / P (no bias correction: its factor tends to 1)."""
  x, m = np.array(x0, np.float64), np.zeros_like(x0)
  with np.errstate(over="ignore", invalid="ignore"):  # above the threshold it overflows
    for _ in range(steps):
      m = b1 * m + (1 - b1) * lam * x
      x = x - lr * m / precond
  return x


@pytest.mark.parametrize("name", ["gd", "momentum", "nesterov", "adam"])
def test_stable_below_the_threshold_and_not_above(name):
  # One mode at 0.99x and at 1.01x of the optimizer's threshold, iterated by
  # the optimizer itself (optax's sgd, or Adam's frozen-preconditioner step):
  # below, every root of the mode's recurrence is inside the unit circle (GD:
  # -0.98; heavy ball 0.9: a complex pair of modulus 0.95; Nesterov: -0.97; Adam
  # as heavy ball), so |x| < 1e-3
  # after 6000 steps; above, a real root lies beyond -1 (GD: -1.02, heavy ball:
  # -1.17), so |x| passes 1e3 or overflows (NaN counts as not bounded).
  lr, beta, steps = 0.1, 0.9, 6000
  if name == "adam":
    precond = 0.5  # P^{-1/2} H P^{-1/2} = lam / P
    edge = float(stability.adam_threshold(lr, beta))
    run = lambda c: frozen_adam(np.array([c * edge * precond]), np.array([precond]),
                                np.array([1.0]), lr, beta, steps)[0]
    assert edge == pytest.approx(38 / lr)
  else:
    edge = float(stability.gd_threshold(lr) if name == "gd" else
                 stability.momentum_threshold(lr, beta, nesterov=name == "nesterov"))
    opt = optax.sgd(lr, momentum=None if name == "gd" else beta, nesterov=name == "nesterov")
    run = lambda c: iterate(opt, np.array([c * edge]), np.array([1.0]), [steps])[0, 0]
  with jax.enable_x64(True):
    assert abs(run(0.99)) < 1e-3, (name, run(0.99))
    assert not abs(run(1.01)) <= 1e3, (name, run(1.01))


def test_the_trajectory_knows_the_thresholds():
  # The exact trajectory of a mode at 0.99x / 1.01x of each threshold decays /
  # grows over 6000 steps as the iteration does, under jit and vmap over lr.
  with jax.enable_x64(True):
    for opt, beta, edge in (("gd", 0.0, stability.gd_threshold),
                            ("momentum", 0.9, lambda lr: stability.momentum_threshold(lr, 0.9)),
                            ("nesterov", 0.9, lambda lr: stability.momentum_threshold(
                                lr, 0.9, nesterov=True))):
      f = jax.jit(jax.vmap(lambda lr, c: stability.quadratic_trajectory(
          jnp.array([c * edge(lr)]), jnp.array([1.0]), lr, jnp.array([6000]), opt,
          beta)["x"][0, 0], (0, None)))
      lrs = jnp.array([0.01, 0.1, 1.0])
      assert np.all(np.abs(np.asarray(f(lrs, 0.99))) < 1e-3), opt
      assert not np.any(np.abs(np.asarray(f(lrs, 1.01))) <= 1e3), opt


@pytest.mark.parametrize("call, match", [
    (lambda: stability.gd_threshold(0.0), "`lr` must be positive"),
    (lambda: stability.momentum_threshold(0.1, 1.0), "`beta` must lie in"),
    (lambda: stability.adam_threshold(0.1, -0.1), "`b1` must be non-negative"),
    (lambda: stability.quadratic_trajectory([1.0], [1.0, 2.0], 0.1, [3]), "`x0` must have"),
    (lambda: stability.quadratic_trajectory([1.0], [1.0], 0.1, [3], "adam"), "`optimizer`"),
    (lambda: stability.quadratic_trajectory([1.0], [1.0], 0.1, [-1]), "`steps` must be"),
    (lambda: stability.gradient_flow(_quad, {"w": jnp.ones(3)}, [0.0, 2.0, 1.0], A),
     "`t` must be non-decreasing"),
    (lambda: stability.gradient_flow(_quad, {"w": jnp.ones(3)}, [[1.0]], A), "`t` must"),
    (lambda: stability.gradient_flow(_quad, {"w": jnp.ones(3)}, [1.0], A, rtol=0.0), "`rtol`"),
    (lambda: stability.gradient_flow(_quad, {"w": jnp.ones(3)}, [1.0], A, max_steps=0),
     "`max_steps`"),
])
def test_bad_input_is_named(call, match):
  with pytest.raises(ValueError, match=match):
    call()


A = jnp.array([0.5, 2.0, 30.0])


def _quad(p, a):
  return 0.5 * jnp.sum(a * p["w"] ** 2)


def test_gradient_flow_is_the_quadratic_closed_form():
  """`w_i(t) = w_i(0) exp(-a_i t)` on `1/2 sum a_i w_i^2`, stiff (a ratio of 60).
  Tsit5's global error is about the local tolerance times the number of
  steps' error growth: with rtol 1e-9 a relative error below 1e-6 of
  `max |w|` is ample and an O(1) mistake (a sign, a missing step) far above it."""
  with jax.enable_x64(True):
    t = jnp.array([0.0, 0.01, 0.1, 0.5, 1.0, 1.0, 3.0])  # a repeated time included
    w0 = jnp.array([1.0, -2.0, 0.5])
    got = stability.gradient_flow(_quad, {"w": w0}, t, A, rtol=1e-9, atol=1e-12)["w"]
    np.testing.assert_allclose(got, w0 * jnp.exp(-A * t[:, None]), rtol=0, atol=1e-6 * 2.0)
    cut = stability.gradient_flow(_quad, {"w": w0}, t, A, max_steps=2)["w"]
    assert np.isnan(cut).all()  # past the step cap: NaN, never a stand-in


def test_gradient_descent_reaches_the_flow_at_first_order():
  """GD on a small tanh network, at t = lr x steps, differs from the flow by
  `e(lr) = c lr + d lr^2` (Euler's global error), so `e(lr) / e(lr/2) = 2 (1 +
  d lr) / (1 + d lr / 2) = 2 + O(lr)`. At lr 0.02 and 0.01 (the sharpness is
  about 2, so lr lam ~ 0.04) the ratio lies within 2 +- 0.15; a flow off by
  any fixed amount would give a ratio near 1."""
  with jax.enable_x64(True):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    x, y = jax.random.normal(k1, (16, 3)), jnp.sin(jax.random.normal(k2, (16,)))
    p0 = {"w": jax.random.normal(k3, (3, 8)) / jnp.sqrt(3.0), "a": jnp.ones(8) / jnp.sqrt(8.0)}
    loss = lambda p: 0.5 * jnp.mean((jnp.tanh(x @ p["w"]) @ p["a"] - y) ** 2)
    T = 2.0
    flow = stability.gradient_flow(loss, p0, jnp.array([0.0, T]), rtol=1e-10, atol=1e-13)

    def gd(lr):
      def step(p, _):
        return jax.tree_util.tree_map(lambda a, g: a - lr * g, p, jax.grad(loss)(p)), None
      return jax.lax.scan(step, p0, None, length=round(T / lr))[0]

    dist = lambda p: float(jnp.sqrt(sum(jnp.sum((p[k] - flow[k][1]) ** 2) for k in p)))
    e1, e2 = dist(gd(0.02)), dist(gd(0.01))
    assert e1 > 1e-6  # GD is visibly off the flow at this lr: the ratio measures something
    assert abs(e1 / e2 - 2.0) < 0.15, (e1, e2)
