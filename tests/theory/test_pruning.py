"""theory.pruning against finite differences along real trajectories, a
hand-written gradient with a finite-difference HVP, and Taylor orders."""

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


def tanh_net(key=0, d=4, m=6, p=12):
  """A two-layer tanh network with its gradient written out by hand."""
  k = jax.random.split(jax.random.PRNGKey(key), 4)
  x = jax.random.normal(k[0], (p, d))
  y = jax.random.normal(k[1], (p,))
  params = {"W": jax.random.normal(k[2], (m, d)) / 2, "v": jax.random.normal(k[3], (m,))}

  def loss(q):
    return 0.5 * jnp.mean((jnp.tanh(x @ q["W"].T) @ q["v"] - y) ** 2)

  def grad(q):  # explicit backprop, independent of jax.grad
    a = jnp.tanh(x @ q["W"].T)
    r = (a @ q["v"] - y) / p
    return {"W": ((r[:, None] * (1 - a**2)) * q["v"]).T @ x, "v": a.T @ r}

  return loss, grad, params


def dot(a, b):
  return sum(float(jnp.vdot(x, y)) for x, y in zip(jax.tree_util.tree_leaves(a),
                                                   jax.tree_util.tree_leaves(b)))


def lin(a, b, s=1.0):
  return jax.tree_util.tree_map(lambda x, y: x + s * y, a, b)


def families():
  """`(loss_fn, params)` of two model families of the repo (smooth losses)."""
  k = jax.random.split(jax.random.PRNGKey(1), 6)
  x = jax.random.normal(k[0], (20, 4))
  y = x @ jax.random.normal(k[1], (4, 3))
  dl = deep_linear.init_random(k[2], [4, 5, 5, 3], 0.8, jnp.float64)
  dl_loss = lambda q: 0.5 * jnp.mean(jnp.sum((deep_linear.apply(q, x) - y) ** 2, -1))
  pr = icl_regression.sample(k[3], 64, 6, jnp.eye(3))
  la = linear_attention.init(k[4], 3, scale=1.0, dtype=jnp.float64)
  la_loss = lambda q: linear_attention.loss(q, *pr)
  return [(dl_loss, dl), (la_loss, la)]


@pytest.mark.parametrize("family", [0, 1])
def test_flow_identities_along_a_training_trajectory(family):
  loss_fn, params = families()[family]
  lr, steps = 1e-6, 12
  grad = jax.jit(jax.grad(loss_fn))
  traj = [params]
  for _ in range(steps):
    traj.append(lin(traj[-1], grad(traj[-1]), -lr))
  norm = lambda q: dot(q, q)
  gn = lambda q: dot(grad(q), grad(q))
  flow_rates = jax.jit(lambda q: pruning.flow_rates(loss_fn, q))
  for k in range(1, steps):
    rates = flow_rates(traj[k])
    fd = {"norm": (norm(traj[k + 1]) - norm(traj[k - 1])) / (2 * lr),
          "loss": (float(loss_fn(traj[k + 1])) - float(loss_fn(traj[k - 1]))) / (2 * lr),
          "grad_norm": (gn(traj[k + 1]) - gn(traj[k - 1])) / (2 * lr)}
    for name in fd:
      rel = abs(fd[name] - float(rates[name])) / abs(float(rates[name]))
      assert rel < 1e-3, (name, k, fd[name], float(rates[name]))  # GD vs flow: O(lr)


def test_importance_against_brute_force():
  loss, grad, params = tanh_net()
  g = grad(params)
  np.testing.assert_allclose(jax.grad(loss)(params)["W"], g["W"], rtol=1e-12)  # sanity
  eps = 1e-5
  hg = jax.tree_util.tree_map(lambda a, b: (a - b) / (2 * eps),
                              grad(lin(params, g, eps)), grad(lin(params, g, -eps)))
  expect = {
      "magnitude": jax.tree_util.tree_map(jnp.abs, params),
      "loss_preservation": jax.tree_util.tree_map(lambda p, g_: jnp.abs(p * g_), params, g),
      "gradient_norm": jax.tree_util.tree_map(lambda p, h: p * h, params, hg),
      "gradient_norm_abs": jax.tree_util.tree_map(lambda p, h: jnp.abs(p * h), params, hg)}
  for measure, want in expect.items():
    got = pruning.importance(loss, params, measure)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
      np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-10, err_msg=measure)


def test_hvp_matches_a_materialised_hessian():
  loss, _, params = tanh_net(key=3)
  flat, unravel = jax.flatten_util.ravel_pytree(params)
  h = jax.hessian(lambda f: loss(unravel(f)))(flat)  # the test may materialise it
  v = jax.random.normal(jax.random.PRNGKey(9), flat.shape)
  np.testing.assert_allclose(jax.flatten_util.ravel_pytree(
      pruning.hvp(loss, params, unravel(v)))[0], h @ v, rtol=1e-10)


@pytest.mark.parametrize("seed", [0, 1])
def test_predicted_change_error_orders(seed):
  """Scaling the removed weights by s: order-1 error O(s^2), order-2 O(s^3)."""
  loss, _, params = tanh_net(key=seed, m=8)
  mask = pruning.prune_mask(pruning.importance(loss, params, "magnitude"), 0.4)
  gn = lambda q: dot(jax.grad(loss)(q), jax.grad(loss)(q))
  scales = np.array([0.08, 0.04, 0.02, 0.01])
  errs = {(k, o): [] for k in ("loss", "grad_norm") for o in (1, 2)}
  for s in scales:
    start = jax.tree_util.tree_map(lambda p, m: p * m + s * p * (1 - m), params, mask)
    pruned = jax.tree_util.tree_map(lambda p, m: p * m, params, mask)
    measured = {"loss": float(loss(pruned) - loss(start)), "grad_norm": gn(pruned) - gn(start)}
    for o in (1, 2):
      pred = pruning.predicted_change(loss, start, mask, order=o)
      for k in measured:
        errs[(k, o)].append(abs(measured[k] - float(pred[k])))
  for (k, o), e in errs.items():
    slope = np.polyfit(np.log(scales), np.log(e), 1)[0]
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
