"""theory.pruning against finite differences along real trajectories, a
hand-written gradient with a finite-difference HVP, and Taylor orders."""

import functools

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from dynamics.models import deep_linear, linear_attention
from dynamics.tasks import icl_regression
from theory import pruning

@pytest.fixture(autouse=True)
def x64():  # float64 for every test here, restored after each
  with jax.enable_x64(True):
    yield


# Eagerly, every primitive compiles anew for each shape it meets (seconds on 2
# CPU cores): the data are drawn, and each test's computation runs, as jitted
# programs.
@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def tanh_data(key, d, m, p):
  k = jax.random.split(jax.random.PRNGKey(key), 4)
  x = jax.random.normal(k[0], (p, d))
  y = jax.random.normal(k[1], (p,))
  params = {"W": jax.random.normal(k[2], (m, d)) / 2, "v": jax.random.normal(k[3], (m,))}
  return x, y, params


def tanh_net(key=0, d=4, m=6, p=12):
  """A two-layer tanh network with its gradient written out by hand."""
  x, y, params = tanh_data(key, d, m, p)

  def loss(q):
    return 0.5 * jnp.mean((jnp.tanh(x @ q["W"].T) @ q["v"] - y) ** 2)

  def grad(q):  # explicit backprop, independent of jax.grad
    a = jnp.tanh(x @ q["W"].T)
    r = (a @ q["v"] - y) / p
    return {"W": ((r[:, None] * (1 - a**2)) * q["v"]).T @ x, "v": a.T @ r}

  return loss, grad, params


def dot(a, b):
  return sum(jnp.vdot(x, y) for x, y in zip(jax.tree_util.tree_leaves(a),
                                            jax.tree_util.tree_leaves(b)))


def lin(a, b, s=1.0):
  return jax.tree_util.tree_map(lambda x, y: x + s * y, a, b)


@functools.partial(jax.jit, static_argnums=0)
def family_data(which):
  k = jax.random.split(jax.random.PRNGKey(1), 6)
  if which == 0:
    x = jax.random.normal(k[0], (20, 4))
    y = x @ jax.random.normal(k[1], (4, 3))
    return (x, y), deep_linear.init_random(k[2], [4, 5, 5, 3], 0.8, jnp.float64)
  pr = icl_regression.sample(k[3], 64, 6, jnp.eye(3))
  return pr, linear_attention.init(k[4], 3, scale=1.0, dtype=jnp.float64)


def families(which):
  """`(loss_fn, params)` of two model families of the repo (smooth losses)."""
  data, params = family_data(which)
  if which == 0:
    x, y = data
    return lambda q: 0.5 * jnp.mean(jnp.sum((deep_linear.apply(q, x) - y) ** 2, -1)), params
  return lambda q: linear_attention.loss(q, *data), params

@pytest.mark.parametrize("family", [0, 1])
def test_flow_identities_along_a_training_trajectory(family):
  loss_fn, params = families(family)
  lr, steps = 1e-6, 12
  grad = jax.grad(loss_fn)
  step = jax.jit(lambda q: lin(q, grad(q), -lr))
  traj = [params]
  for _ in range(steps):
    traj.append(step(traj[-1]))
  # along the stacked trajectory: ||theta||^2, L, ||g||^2 and the flow's rates
  measured, rates = jax.jit(jax.vmap(lambda q: (
      {"norm": dot(q, q), "loss": loss_fn(q), "grad_norm": dot(grad(q), grad(q))},
      pruning.flow_rates(loss_fn, q))))(jax.tree_util.tree_map(lambda *a: jnp.stack(a), *traj))
  measured = {k: np.asarray(v) for k, v in measured.items()}
  for k in range(1, steps):
    fd = {name: (measured[name][k + 1] - measured[name][k - 1]) / (2 * lr) for name in measured}
    for name in fd:
      rel = abs(fd[name] - float(rates[name][k])) / abs(float(rates[name][k]))
      assert rel < 1e-3, (name, k, fd[name], float(rates[name][k]))  # GD vs flow: O(lr)


def test_importance_against_brute_force():
  loss, grad, params = tanh_net()
  eps = 1e-5

  @jax.jit
  def run(params):
    g = grad(params)
    hg = jax.tree_util.tree_map(lambda a, b: (a - b) / (2 * eps),
                                grad(lin(params, g, eps)), grad(lin(params, g, -eps)))
    expect = {
        "magnitude": jax.tree_util.tree_map(jnp.abs, params),
        "loss_preservation": jax.tree_util.tree_map(lambda p, g_: jnp.abs(p * g_), params, g),
        "gradient_norm": jax.tree_util.tree_map(lambda p, h: p * h, params, hg),
        "gradient_norm_abs": jax.tree_util.tree_map(lambda p, h: jnp.abs(p * h), params, hg)}
    got = {m: pruning.importance(loss, params, m) for m in expect}
    return jax.grad(loss)(params), g, expect, got

  autodiff, g, expect, got = run(params)
  np.testing.assert_allclose(autodiff["W"], g["W"], rtol=1e-12)  # sanity
  for measure, want in expect.items():
    for a, b in zip(jax.tree_util.tree_leaves(got[measure]), jax.tree_util.tree_leaves(want)):
      np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-10, err_msg=measure)


def test_hvp_matches_a_materialised_hessian():
  loss, _, params = tanh_net(key=3)
  flat, unravel = jax.flatten_util.ravel_pytree(params)
  v = jax.random.normal(jax.random.PRNGKey(9), flat.shape)
  got, want = jax.jit(lambda f, v: (
      jax.flatten_util.ravel_pytree(pruning.hvp(loss, unravel(f), unravel(v)))[0],
      jax.hessian(lambda f: loss(unravel(f)))(f) @ v))(flat, v)  # the test may materialise it
  np.testing.assert_allclose(got, want, rtol=1e-10)


@pytest.mark.parametrize("seed", [0, 1])
def test_predicted_change_error_orders(seed):
  """Scaling the removed weights by s: order-1 error O(s^2), order-2 O(s^3)."""
  loss, _, params = tanh_net(key=seed, m=8)
  mask = pruning.prune_mask(pruning.importance(loss, params, "magnitude"), 0.4)
  gn = lambda q: dot(jax.grad(loss)(q), jax.grad(loss)(q))
  scales = np.array([0.08, 0.04, 0.02, 0.01])

  @jax.jit
  @jax.vmap
  def errors(s):  # every scale and both orders in one program
    start = jax.tree_util.tree_map(lambda p, m: p * m + s * p * (1 - m), params, mask)
    pruned = jax.tree_util.tree_map(lambda p, m: p * m, params, mask)
    measured = {"loss": loss(pruned) - loss(start), "grad_norm": gn(pruned) - gn(start)}
    pred = {o: pruning.predicted_change(loss, start, mask, order=o) for o in (1, 2)}
    return {(k, o): jnp.abs(measured[k] - pred[o][k]) for k in measured for o in (1, 2)}

  for (k, o), e in errors(jnp.asarray(scales)).items():
    slope = np.polyfit(np.log(scales), np.log(np.asarray(e)), 1)[0]
    assert abs(slope - (o + 1)) < 0.25, (k, o, slope, e)


def test_prune_mask_counts_and_ties():
  scores = {"a": jnp.arange(10.0), "b": jnp.ones((3, 4)), "c": jnp.zeros(7)}
  n = 29
  for fraction in (0.0, 0.1, 0.25, 0.5, 0.77, 1.0):
    for scope in ("global", "layer"):
      mask = pruning.prune_mask(scores, fraction, scope=scope)
      removed = sum(int(np.sum(1 - m)) for m in jax.tree_util.tree_leaves(mask))
      want = round(fraction * n) if scope == "global" else sum(
          round(fraction * np.size(l)) for l in jax.tree_util.tree_leaves(scores))
      assert removed == want, (fraction, scope, removed, want)
  # global, keep highest: the 7 zeros go first, then the lowest of `a` (0 tied
  # with the zeros of `c`: ties by position, leaves in tree order a, b, c)
  m = pruning.prune_mask(scores, 8 / 29)
  np.testing.assert_array_equal(m["c"], 0)
  np.testing.assert_array_equal(m["a"], np.r_[0, np.ones(9)])
  m = pruning.prune_mask(scores, 3 / 29, keep="lowest")
  np.testing.assert_array_equal(m["a"], np.r_[np.ones(7), 0, 0, 0])
  # all scores tied: the first round(f n) positions, in every call
  tied = {"a": jnp.ones(6), "b": jnp.ones(4)}
  for _ in range(2):
    m = pruning.prune_mask(tied, 0.5)
    np.testing.assert_array_equal(m["a"], [0, 0, 0, 0, 0, 1])
    np.testing.assert_array_equal(m["b"], [1, 1, 1, 1])


def test_prune_mask_traced_fraction_matches_concrete():
  scores = {"w": jax.random.normal(jax.random.PRNGKey(0), (7, 5))}
  fractions = jnp.array([0.1, 0.3, 0.5, 0.9])
  batched = jax.jit(jax.vmap(lambda f: pruning.prune_mask(scores, f)))(fractions)
  for i, f in enumerate([0.1, 0.3, 0.5, 0.9]):
    np.testing.assert_array_equal(batched["w"][i], pruning.prune_mask(scores, f)["w"])
    assert int(np.sum(1 - batched["w"][i])) == round(f * 35)


@pytest.mark.parametrize("call, match", [
    (lambda p, l: pruning.prune_mask(p, 1.5), "`fraction`"),
    (lambda p, l: pruning.prune_mask(p, -0.1), "`fraction`"),
    (lambda p, l: pruning.importance(l, p, "snip"), "magnitude, loss_preservation"),
    (lambda p, l: pruning.prune_mask(p, 0.5, scope="row"), "`scope`"),
    (lambda p, l: pruning.predicted_change(l, p, {"W": p["W"]}), "`mask`"),
    (lambda p, l: pruning.predicted_change(l, p, {"W": p["W"], "v": p["v"][:2]}), "`mask`"),
])
def test_bad_input(call, match):
  loss, _, params = tanh_net()
  with pytest.raises(ValueError, match=match):
    call(params, loss)
