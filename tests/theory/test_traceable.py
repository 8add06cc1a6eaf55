"""Every public theory function is vmap-able over one of its numeric arguments
(its checks never read a traced value), and the batched call equals the
loop of single calls, which run every value check on concrete inputs. The
few written in numpy float64 say so in their docstring and refuse a traced
argument in one line naming the function.

The comparison is float32 (x64 off): batching reorders a few reductions, so
the batched and single results agree to a few ulps of O(1) values; `RTOL =
1e-5` is about 100 float32 ulps, far below any error a wrong batch axis or a
skipped term would make (those are O(1))."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from theory import (deep_linear, diagonal_linear, dmft, learning_curves, linear_attention,
                    ntk, online_sgd, pruning, stability)

RTOL, ATOL = 1e-5, 1e-6
MODULES = (deep_linear, diagonal_linear, dmft, learning_curves, linear_attention, ntk,
           online_sgd, pruning, stability)

X = jax.random.normal(jax.random.PRNGKey(0), (5, 3))
Y = jnp.sin(X[:, 0])
K = X @ X.T + 0.1 * jnp.eye(5)
COV = jnp.diag(jnp.array([1.0, 0.5, 0.25]))
SYX = jnp.array([[2.0, 0.0], [0.0, 0.7]])
APPLY = lambda p, x: jnp.tanh(x @ p["w"]) @ p["a"]
P0 = {"w": jax.random.normal(jax.random.PRNGKey(1), (3, 4)), "a": jnp.ones(4) / 2}
QUAD = lambda p: 0.5 * jnp.sum(jnp.tanh(p["w"]) ** 2) + jnp.sum(p["a"] ** 4)
RELU = {"W": jax.random.normal(jax.random.PRNGKey(2), (8, 3)),
        "v": jax.random.normal(jax.random.PRNGKey(3), (8,))}
T = jnp.array([0.0, 2.0])
scaled = lambda tree, c: jax.tree_util.tree_map(lambda a: c * a, tree)

# name -> (f(v) calling the function with the one swept argument v, values of v)
CASES = {
    "learning_time": (lambda v: deep_linear.learning_time(v, 0.01, 2), [1.0, 4.0]),
    "mode_strength": (lambda v: deep_linear.mode_strength(T, v, 0.01, 3), [1.0, 4.0]),
    "mode_velocity": (lambda v: deep_linear.mode_velocity(v, 2.0, 3), [0.1, 1.9]),
    "predicted_loss": (lambda v: deep_linear.predicted_loss(T, SYX, v, 2), [1e-3, 0.5]),
    "predicted_map": (lambda v: deep_linear.predicted_map(T, SYX, v, 2), [1e-3, 0.5]),
    "singular_value_velocity": (
        lambda v: deep_linear.singular_value_velocity(jnp.array([v, 1.0]),
                                                      jnp.array([0.3, -0.2]), 3),
        [0.5, 2.0]),
    "flow_velocity": (lambda v: linear_attention.flow_velocity(0.5, 0.3 * jnp.eye(3), COV, 10, v),
                      [0.0, 1.0]),
    "gd_params": (lambda v: linear_attention.gd_params(3, v), [0.01, 0.5]),
    "icl_risk": (lambda v: linear_attention.icl_risk(0.2 * jnp.eye(3), COV, 10, v),
                 [0.0, 1.0]),
    "optimal_gd_lr": (lambda v: linear_attention.optimal_gd_lr(3, 10, v), [0.0, 1.0]),
    "optimal_preconditioner": (lambda v: linear_attention.optimal_preconditioner(COV, 10, v),
                               [0.0, 1.0]),
    "empirical_ntk": (lambda v: ntk.empirical_ntk(APPLY, scaled(P0, v), X), [0.5, 2.0]),
    "gradient_descent_mse": (lambda v: ntk.gradient_descent_mse(K, Y, v, jnp.array([0, 10])),
                             [0.01, 0.1]),
    "gradient_flow_mse": (lambda v: ntk.gradient_flow_mse(K, Y, v), [0.0, 2.0]),
    "linearized": (lambda v: ntk.linearized(APPLY, scaled(P0, v), X, Y, X[:2])(T),
                   [0.5, 2.0]),
    "max_learning_rate": (lambda v: ntk.max_learning_rate(v * K), [0.5, 2.0]),
    "mlp_kernel": (lambda v: ntk.mlp_kernel(3, "erf", v, 0.1)(X), [0.5, 1.5]),
    "mse_predictor": (lambda v: ntk.mse_predictor(v * K, Y)(T)[0], [0.5, 2.0]),
    "committee_error": (lambda v: online_sgd.committee_error(v * jnp.eye(2), 0.3 * jnp.eye(2),
                                                             jnp.eye(2)), [0.5, 2.0]),
    "committee_drift": (lambda v: online_sgd.committee_drift(jnp.eye(2), 0.3 * jnp.eye(2),
                                                             jnp.eye(2), lr=v, noise=v / 2),
                        [0.1, 1.0]),
    "committee_flow": (lambda v: online_sgd.committee_flow(jnp.eye(2), 0.3 * jnp.eye(2),
                                                           jnp.eye(2), [0.5, 1.0], lr=v,
                                                           dalpha=0.1), [0.1, 1.0]),
    "relu_empirical_ntk": (lambda v: ntk.relu_empirical_ntk(RELU, X, X, v), [0.5, 2.0]),
    "relu_nngp": (lambda v: ntk.relu_nngp(X, X, 1.0, v), [0.0, 1.0]),
    "relu_ntk": (lambda v: ntk.relu_ntk(X, X, v, 0.1), [0.5, 2.0]),
    "flow_rates": (lambda v: pruning.flow_rates(QUAD, scaled(P0, v)), [0.5, 2.0]),
    "hvp": (lambda v: pruning.hvp(QUAD, P0, scaled(P0, v)), [0.5, 2.0]),
    "importance": (lambda v: pruning.importance(QUAD, scaled(P0, v), "magnitude"),
                   [0.5, 2.0]),
    "predicted_change": (
        lambda v: pruning.predicted_change(
            QUAD, scaled(P0, v), jax.tree_util.tree_map(lambda a: (a > 0).astype(a.dtype), P0)),
        [0.5, 2.0]),
    "prune_mask": (lambda v: pruning.prune_mask(P0, v), [0.0, 0.7]),
    "effective_regularization": (lambda v: learning_curves.effective_regularization(
        jnp.array([1.0, 0.3, 0.1]), v, 0.01), [1.0, 2.5]),
    "learnability": (lambda v: learning_curves.learnability(jnp.array([1.0, 0.3, 0.1]), 2.0, v),
                     [0.0, 0.5]),
    "test_error": (lambda v: learning_curves.test_error(jnp.array([1.0, 0.3, 0.1]),
                                                        jnp.array([0.5, 0.5, 0.2]), 2.0, 0.01,
                                                        v), [0.0, 0.3]),
    "gegenbauer": (lambda v: learning_curves.gegenbauer(v * jnp.array([0.1, -0.5, 1.0]), 4, 5),
                   [0.3, 1.0]),
    "kernel_descent": (lambda v: learning_curves.kernel_descent(
        jnp.array([[2.0, 0.5], [0.5, 1.0]]), jnp.array([1.0, -1.0]), v, jnp.array([0, 3]),
        0.1)[0], [0.1, 0.5]),
    "gd_threshold": (stability.gd_threshold, [0.1, 2.0]),
    "momentum_threshold": (lambda v: stability.momentum_threshold(0.1, v, nesterov=True),
                           [0.0, 0.9]),
    "adam_threshold": (lambda v: stability.adam_threshold(v, 0.9), [0.01, 0.1]),
    "quadratic_trajectory": (lambda v: stability.quadratic_trajectory(
        jnp.array([3.0, 0.5]), jnp.array([1.0, -1.0]), v, jnp.array([0, 3, 10]), "momentum",
        0.5), [0.1, 0.4]),
    "deep_linear_flow": (lambda v: dmft.deep_linear_flow(
        2, v, X[:3], Y[:3], jnp.array([0.0, 0.5, 1.0]), rtol=1e-7, atol=1e-9)["f"],
                         [0.0, 1.5]),
    "deep_linear_gd": (lambda v: dmft.deep_linear_gd(3, v, X[:3], Y[:3], 0.1, 4)["f"],
                       [0.0, 1.5]),
    "single_site_flow": (lambda v: dmft.single_site_flow(
        "tanh", v, X[:3], Y[:3], jnp.array([0.0, 0.5]), key=jax.random.PRNGKey(0),
        samples=64, steps=20)["f"], [0.0, 1.5]),
    "single_point_time": (lambda v: dmft.single_point_time(jnp.array([0.2, 0.9]), v),
                          [0.0, 2.0]),
    "stability.gradient_flow": (lambda v: stability.gradient_flow(
        lambda p, a: 0.5 * jnp.sum(a * p ** 2), v * jnp.ones(2), jnp.array([0.0, 0.5, 1.0]),
        jnp.array([1.0, 3.0]))[-1], [0.5, 2.0]),
}

# written in numpy/scipy float64 (ODE solvers, float64 linear algebra at the
# extremes): a traced argument is refused in one line naming the function
NUMPY = {
    "two_layer_flow": lambda v: deep_linear.two_layer_flow(v, 0.1 * jnp.ones((2, 2)),
                                                           0.1 * jnp.ones((2, 2)), SYX),
    "two_layer_ntk": lambda v: deep_linear.two_layer_ntk(
        {"w1tw1": v * jnp.ones((1, 3, 3)), "w2w2t": jnp.ones((1, 1, 1))}, X),
    "q_alpha": lambda v: diagonal_linear.q_alpha(jnp.ones(3), v),
    "implicit_bias_solution": lambda v: diagonal_linear.implicit_bias_solution(X, Y, v),
    "min_l1_solution": lambda v: diagonal_linear.min_l1_solution(v * X, Y),
    "min_l2_solution": lambda v: diagonal_linear.min_l2_solution(v * X, Y),
    "linear_attention.gradient_flow": lambda v: linear_attention.gradient_flow(
        v, 3, 10, 0.1, 0.1),
    "plateau": lambda v: online_sgd.plateau(2, lr=v),
    "critical_lr": lambda v: online_sgd.critical_lr(v),
    "sphere_spectrum": lambda v: learning_curves.sphere_spectrum(
        lambda a, b: a @ b.T, 3, 2, radius=v),
    "empirical_spectrum": lambda v: learning_curves.empirical_spectrum(v * K),
    "multiplicity": lambda v: learning_curves.multiplicity(3, v),
}


def public_functions():
  """Every public function's name; `module.name` where two modules share it."""
  found = [(m.__name__.split(".")[-1], name) for m in MODULES
           for name, f in inspect.getmembers(m, inspect.isfunction)
           if not name.startswith("_") and f.__module__ == m.__name__]
  names = [n for _, n in found]
  return {n if names.count(n) == 1 else f"{m}.{n}" for m, n in found}


def test_every_public_function_is_listed():
  assert public_functions() == set(CASES) | set(NUMPY)


@pytest.mark.parametrize("name", sorted(CASES))
def test_vmap_over_one_argument_equals_the_loop(name):
  f, values = CASES[name]
  batched = jax.vmap(f)(jnp.asarray(values, jnp.float32))
  single = [f(v) for v in values]
  for i, one in enumerate(single):
    jax.tree_util.tree_map(
        lambda b, s: np.testing.assert_allclose(np.asarray(b)[i], np.asarray(s), rtol=RTOL,
                                                atol=ATOL, err_msg=name), batched, one)


@pytest.mark.parametrize("name", sorted(NUMPY))
def test_numpy_functions_refuse_a_traced_argument_by_name(name):
  module, _, bare = name.rpartition(".")
  fn = {n: f for m in MODULES if module in ("", m.__name__.split(".")[-1])
        for n, f in inspect.getmembers(m, inspect.isfunction)
        if f.__module__ == m.__name__}[bare]
  assert "not traceable" in fn.__doc__, name
  with pytest.raises(TypeError, match=f"`{bare}` .*not traceable") as e:
    jax.vmap(NUMPY[name])(jnp.array([0.5, 1.0]))
  assert "\n" not in str(e.value)
