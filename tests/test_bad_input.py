"""Bad input anywhere in the theory API or the command line is a `ValueError`
(exit code 2 on the command line, one line, nothing written) whose message
names the offending argument or field."""

import os

import jax.numpy as jnp
import numpy as np
import pytest

from tests.test_run_script import run_main
from theory import deep_linear as dl
from theory import linear_attention as la
from theory import ntk
from theory import pruning as pr

I2, I3 = np.eye(2), np.eye(3)
X = np.ones((3, 2))
K = np.eye(3)
Y = np.ones(3)
PARAMS = {"w": jnp.ones((2, 2))}
loss = lambda p: jnp.sum(p["w"] ** 2)
apply = lambda p, x: x @ p["w"]
relu_params = {"W": jnp.ones((4, 2)), "b": jnp.zeros(4), "v": jnp.ones(4)}

THEORY = [
    # deep_linear.mode_strength
    ("mode_strength", lambda: dl.mode_strength([-1.0], 1.0, 0.1), "`t`"),
    ("mode_strength", lambda: dl.mode_strength([np.nan], 1.0, 0.1), "`t`"),
    ("mode_strength", lambda: dl.mode_strength(np.ones((2, 2)), 1.0, 0.1), "`t`"),
    ("mode_strength", lambda: dl.mode_strength("1", 1.0, 0.1), "`t`"),
    ("mode_strength", lambda: dl.mode_strength(None, 1.0, 0.1), "`t`"),
    ("mode_strength", lambda: dl.mode_strength([1 + 1j], 1.0, 0.1), "`t`"),
    ("mode_strength", lambda: dl.mode_strength([True], 1.0, 0.1), "`t`"),
    ("mode_strength", lambda: dl.mode_strength([1.0], -1.0, 0.1), "`s`"),
    ("mode_strength", lambda: dl.mode_strength([1.0], np.nan, 0.1), "`s`"),
    ("mode_strength", lambda: dl.mode_strength([1.0], np.inf, 0.1), "`s`"),
    ("mode_strength", lambda: dl.mode_strength([1.0], "3", 0.1), "`s`"),
    ("mode_strength", lambda: dl.mode_strength([1.0], np.ones(3), np.ones(2)), "`s`"),
    ("mode_strength", lambda: dl.mode_strength([1.0], 1.0, -0.1), "`u0`"),
    ("mode_strength", lambda: dl.mode_strength([1.0], 1.0, np.nan, depth=1), "`u0`"),
    ("mode_strength", lambda: dl.mode_strength([1.0], 1.0, None), "`u0`"),
    ("mode_strength", lambda: dl.mode_strength([1.0], 1.0, 0.1, depth=0), "`depth`"),
    ("mode_strength", lambda: dl.mode_strength([1.0], 1.0, 0.1, depth=2.5), "`depth`"),
    ("mode_strength", lambda: dl.mode_strength([1.0], 1.0, 0.1, depth="2"), "`depth`"),
    ("mode_strength", lambda: dl.mode_strength([1.0], 1.0, 0.1, depth=True), "`depth`"),
    ("mode_strength", lambda: dl.mode_strength([1.0], 1.0, 0.1, tau=0.0), "`tau`"),
    ("mode_strength", lambda: dl.mode_strength([1.0], 1.0, 0.1, tau=-2.0), "`tau`"),
    ("mode_strength", lambda: dl.mode_strength([1.0], 1.0, 0.1, tau=np.inf), "`tau`"),
    # deep_linear, the others
    ("learning_time", lambda: dl.learning_time(1.0, 0.1, fraction=0.0), "`fraction`"),
    ("learning_time", lambda: dl.learning_time(1.0, 0.1, fraction=np.inf), "`fraction`"),
    ("learning_time", lambda: dl.learning_time(1.0, 0.1, fraction="half"), "`fraction`"),
    ("learning_time", lambda: dl.learning_time(1.0, 0.1, depth=-1), "`depth`"),
    ("learning_time", lambda: dl.learning_time(-1.0, 0.1), "`s`"),
    ("learning_time", lambda: dl.learning_time(1.0, -0.1), "`u0`"),
    ("mode_velocity", lambda: dl.mode_velocity(0.1, 1.0, depth=0), "`depth`"),
    ("predicted_map", lambda: dl.predicted_map([1.0], I3, np.ones(2)), "`u0`"),
    ("predicted_map", lambda: dl.predicted_map([1.0], np.ones(3), 0.1), "`sigma_yx`"),
    ("predicted_map", lambda: dl.predicted_map([1.0], I3 * np.nan, 0.1), "`sigma_yx`"),
    ("predicted_map", lambda: dl.predicted_map([-1.0], I3, 0.1), "`t`"),
    ("predicted_loss", lambda: dl.predicted_loss([1.0], np.ones(3), 0.1), "`sigma_yx`"),
    ("predicted_loss", lambda: dl.predicted_loss([1.0], I3, 0.1, depth=0), "`depth`"),
    ("two_layer_flow", lambda: dl.two_layer_flow([-1.0], I3, I3, I3), "`t`"),
    ("two_layer_flow", lambda: dl.two_layer_flow([1.0], I3, I3, I3, tau=0.0), "`tau`"),
    ("two_layer_flow", lambda: dl.two_layer_flow([1.0], I3 * np.nan, I3, I3), "`w1_0`"),
    ("two_layer_flow", lambda: dl.two_layer_flow([1.0], I3, np.ones(3), I3), "`w2_0`"),
    ("two_layer_flow", lambda: dl.two_layer_flow([1.0], I3, I3, I2), "sigma_yx"),
    ("two_layer_flow", lambda: dl.two_layer_flow([1.0], I3, 2 * I3 + 0.1, I3), "`w1_0`, `w2_0`"),
    # ntk kernels
    ("relu_nngp", lambda: ntk.relu_nngp(np.ones(3), X), "`x1`"),
    ("relu_nngp", lambda: ntk.relu_nngp(X, np.ones((3, 4))), "`x1` and `x2`"),
    ("relu_nngp", lambda: ntk.relu_nngp(X * np.nan, X), "`x1`"),
    ("relu_ntk", lambda: ntk.relu_ntk(X, X * np.inf), "`x2`"),
    ("relu_ntk", lambda: ntk.relu_ntk(X + 1j, X), "`x1`"),
    ("relu_ntk", lambda: ntk.relu_ntk(X, X, w_std=-1.0), "`w_std`"),
    ("relu_ntk", lambda: ntk.relu_ntk(X, X, w_std="1"), "`w_std`"),
    ("relu_ntk", lambda: ntk.relu_ntk(X, X, b_std=-1.0), "`b_std`"),
    ("relu_ntk", lambda: ntk.relu_ntk(X, X, b_std=np.nan), "`b_std`"),
    ("relu_ntk", lambda: ntk.relu_ntk("x", X), "`x1`"),
    ("empirical_ntk", lambda: ntk.empirical_ntk(apply, {}, X, X), "`params`"),
    ("empirical_ntk", lambda: ntk.empirical_ntk("f", PARAMS, X, X), "`apply_fn`"),
    ("empirical_ntk", lambda: ntk.empirical_ntk(apply, PARAMS, np.ones(2), X), "`x1`"),
    ("relu_empirical_ntk", lambda: ntk.relu_empirical_ntk(relu_params, X, X, w_std=-1.0),
     "`w_std`"),
    ("relu_empirical_ntk", lambda: ntk.relu_empirical_ntk(relu_params, X, np.ones(3)),
     "`x2`"),
    ("relu_empirical_ntk", lambda: ntk.relu_empirical_ntk({"w": jnp.ones((4, 2))}, X, X),
     "`params`"),
    ("relu_empirical_ntk", lambda: ntk.relu_empirical_ntk(relu_params, np.ones((3, 5)),
                                                          np.ones((3, 5))), "`params`"),
    # ntk predictors
    ("gradient_flow_mse", lambda: ntk.gradient_flow_mse(K, np.ones(4), [1.0]), "`y_train`"),
    ("gradient_flow_mse", lambda: ntk.gradient_flow_mse(K, Y * np.nan, [1.0]), "`y_train`"),
    ("gradient_flow_mse", lambda: ntk.gradient_flow_mse(K, Y, [1.0], f0_train=np.ones(2)),
     "`f0_train`"),
    ("gradient_flow_mse", lambda: ntk.gradient_flow_mse(K, Y, [-1.0]), "`t`"),
    ("gradient_flow_mse", lambda: ntk.gradient_flow_mse(K, Y, [np.nan]), "`t`"),
    ("gradient_flow_mse", lambda: ntk.gradient_flow_mse(K, Y, np.ones((2, 2))), "`t`"),
    ("gradient_flow_mse", lambda: ntk.gradient_flow_mse(K, Y, [1j]), "`t`"),
    ("gradient_flow_mse", lambda: ntk.gradient_flow_mse(np.ones((3, 2)), Y, [1.0]),
     "`k_train_train`"),
    ("gradient_flow_mse", lambda: ntk.gradient_flow_mse(np.ones(3), Y, [1.0]),
     "`k_train_train`"),
    ("gradient_flow_mse", lambda: ntk.gradient_flow_mse(np.triu(np.ones((3, 3))), Y, [1.0]),
     "`k_train_train`"),
    ("gradient_flow_mse", lambda: ntk.gradient_flow_mse(-K, Y, [1.0]), "`k_train_train`"),
    ("gradient_flow_mse", lambda: ntk.gradient_flow_mse(K * np.nan, Y, [1.0]),
     "`k_train_train`"),
    ("gradient_flow_mse", lambda: ntk.gradient_flow_mse(K, Y, [1.0], k_test_train=np.ones(3)),
     "`k_test_train`"),
    ("gradient_flow_mse", lambda: ntk.gradient_flow_mse(K, Y, [1.0],
                                                        k_test_train=np.ones((2, 4))),
     "`k_test_train`"),
    ("gradient_flow_mse", lambda: ntk.gradient_flow_mse(K, Y, [1.0], f0_test=np.ones(2)),
     "`f0_test`"),
    ("gradient_flow_mse", lambda: ntk.gradient_flow_mse(K, Y, [1.0],
                                                        k_test_train=np.ones((2, 3)),
                                                        f0_test=np.ones(5)), "`f0_test`"),
    ("gradient_descent_mse", lambda: ntk.gradient_descent_mse(K, Y, 0.0, [1]), "`lr`"),
    ("gradient_descent_mse", lambda: ntk.gradient_descent_mse(K, Y, np.nan, [1]), "`lr`"),
    ("gradient_descent_mse", lambda: ntk.gradient_descent_mse(K, Y, 0.1, [-1]), "`steps`"),
    ("gradient_descent_mse", lambda: ntk.gradient_descent_mse(K, np.ones(2), 0.1, [1]),
     "`y_train`"),
    ("mse_predictor", lambda: ntk.mse_predictor(K, Y, lr=0.0), "`lr`"),
    ("mse_predictor", lambda: ntk.mse_predictor(np.triu(np.ones((3, 3))), Y), "`k_train_train`"),
    ("mse_predictor", lambda: ntk.mse_predictor(-K, Y), "`k_train_train`"),
    ("mse_predictor", lambda: ntk.mse_predictor(K, np.ones(2)), "`y_train`"),
    ("mse_predictor", lambda: ntk.mse_predictor(K, Y)([-1.0]), "`t`"),
    ("mse_predictor", lambda: ntk.mse_predictor(K, Y)([1.0], np.ones(2)), "`f0_train`"),
    ("mse_predictor", lambda: ntk.mse_predictor(K, Y)([1.0], None, np.ones((2, 2))),
     "`k_test_train`"),
    ("max_learning_rate", lambda: ntk.max_learning_rate(np.ones((2, 3))), "`k_train_train`"),
    ("max_learning_rate", lambda: ntk.max_learning_rate(-K), "`k_train_train`"),
    ("mlp_kernel", lambda: ntk.mlp_kernel(0), "`depth`"),
    ("mlp_kernel", lambda: ntk.mlp_kernel(2, "sigmoid"), "`activation`"),
    ("mlp_kernel", lambda: ntk.mlp_kernel(2, w_std=-1.0), "`w_std`"),
    ("mlp_kernel", lambda: ntk.mlp_kernel(2, b_std=np.nan), "`b_std`"),
    ("mlp_kernel", lambda: ntk.mlp_kernel(2, parameterization="mean_field"),
     "`parameterization`"),
    ("mlp_kernel", lambda: ntk.mlp_kernel(2, parameterization="standard"), "`width`"),
    ("mlp_kernel", lambda: ntk.mlp_kernel(2, parameterization="standard", width=0), "`width`"),
    ("mlp_kernel", lambda: ntk.mlp_kernel(2, "tanh", quadrature=1), "`quadrature`"),
    ("mlp_kernel", lambda: ntk.mlp_kernel(2)(np.ones(3)), "`x1`"),
    ("mlp_kernel", lambda: ntk.mlp_kernel(2)(X, np.ones((2, 5))), "`x1` and `x2`"),
    ("mlp_kernel", lambda: ntk.mlp_kernel(2)(X * np.nan), "`x1`"),
    # linear attention
    ("gd_params", lambda: la.gd_params(0, 0.1), "`d`"),
    ("gd_params", lambda: la.gd_params("3", 0.1), "`d`"),
    ("icl_risk", lambda: la.icl_risk(0.5 * I2, I2, "10"), "`n_context`"),
    ("icl_risk", lambda: la.icl_risk(0.5 * I2, I2, 0), "`n_context`"),
    ("icl_risk", lambda: la.icl_risk(0.5 * I2, I2, 10, noise_var=-1.0), "`noise_var`"),
    ("icl_risk", lambda: la.icl_risk(0.5 * I2, I2 * 1e30, 10), "too large"),
    ("icl_risk", lambda: la.icl_risk(0.5 * I2, np.ones((2, 3)), 10), "`cov`"),
    ("icl_risk", lambda: la.icl_risk(0.5 * I2, -I2, 10), "`cov`"),
    ("icl_risk", lambda: la.icl_risk(0.5 * I2, np.zeros((2, 2)), 10), "`cov`"),
    ("icl_risk", lambda: la.icl_risk(0.5 * I2, np.triu(np.ones((2, 2))), 10), "`cov`"),
    ("icl_risk", lambda: la.icl_risk(0.5 * I2, I2 * np.nan, 10), "`cov`"),
    ("icl_risk", lambda: la.icl_risk(np.nan * I2, I2, 10), "`gamma`"),
    ("icl_risk", lambda: la.icl_risk(np.ones((3, 3)), I2, 10), "`gamma`"),
    ("optimal_preconditioner", lambda: la.optimal_preconditioner(I2, 2.5), "`n_context`"),
    ("optimal_preconditioner", lambda: la.optimal_preconditioner("I", 10), "`cov`"),
    ("optimal_gd_lr", lambda: la.optimal_gd_lr(2, 10, cov=I3), "`cov`"),
    ("optimal_gd_lr", lambda: la.optimal_gd_lr(2, 10, noise_var=np.inf), "`noise_var`"),
    ("flow_velocity", lambda: la.flow_velocity(1.0, I3, I2, 10), "`G`"),
    ("flow_velocity", lambda: la.flow_velocity(np.nan, I2, I2, 10), "`u`"),
    ("flow_velocity", lambda: la.flow_velocity(1.0, I2, I2, 10, noise_var=-1), "`noise_var`"),
    ("gradient_flow", lambda: la.gradient_flow([-1.0], 2, 10, 0.1, 0.1), "`t`"),
    ("gradient_flow", lambda: la.gradient_flow([1j], 2, 10, 0.1, 0.1), "`t`"),
    ("gradient_flow", lambda: la.gradient_flow([1.0], 0, 10, 0.1, 0.1), "`d`"),
    ("gradient_flow", lambda: la.gradient_flow([1.0], 2, 10, np.nan, 0.1), "`u0`"),
    ("gradient_flow", lambda: la.gradient_flow([1.0], 2, 10, 0.1, np.inf), "`g0`"),
    ("gradient_flow", lambda: la.gradient_flow([1.0], 2, 10, 0.1, [0.1, 0.2]), "`g0`"),
    ("gradient_flow", lambda: la.gradient_flow([1.0], 2, 10, 1e200, 0.1), "`u0`"),
    ("gradient_flow", lambda: la.gradient_flow([1.0], 2, 10, 0.1, 0.1, cov=I3), "`cov`"),
    # pruning
    ("prune_mask", lambda: pr.prune_mask(PARAMS, "0.5"), "`fraction`"),
    ("prune_mask", lambda: pr.prune_mask(PARAMS, 1.5), "`fraction`"),
    ("prune_mask", lambda: pr.prune_mask(PARAMS, -0.1), "`fraction`"),
    ("prune_mask", lambda: pr.prune_mask(PARAMS, np.nan), "`fraction`"),
    ("prune_mask", lambda: pr.prune_mask({}, 0.5), "`scores`"),
    ("prune_mask", lambda: pr.prune_mask({"w": jnp.array([1.0, jnp.nan])}, 0.5), "`scores`"),
    ("prune_mask", lambda: pr.prune_mask(PARAMS, 0.5, scope="local"), "`scope`"),
    ("prune_mask", lambda: pr.prune_mask(PARAMS, 0.5, keep="middle"), "`keep`"),
    ("importance", lambda: pr.importance(loss, PARAMS, "size"), "`measure`"),
    ("importance", lambda: pr.importance(loss, PARAMS, 3), "`measure`"),
    ("predicted_change", lambda: pr.predicted_change(loss, PARAMS, PARAMS, order=3), "`order`"),
    ("predicted_change", lambda: pr.predicted_change(loss, PARAMS, PARAMS, order=True),
     "`order`"),
    ("predicted_change", lambda: pr.predicted_change(loss, PARAMS, {"v": jnp.ones(2)}),
     "`mask`"),
]

CLI = [
    (["--config.model.width=0"], "model.width"),
    (["--config.model.depth=0"], "model.depth"),  # an axis of the grid
    (["--config.sweep={}", "--config.model.depth=0"], "model.depth"),
    (["--config.sweep={}", "--config.train.lr=-0.1"], "train.lr"),
    (["--config.sweep={}", "--config.init.scale=nan"], "init.scale"),
    (["--config.sweep={}", "--config.task.singular_values=(1.0,-2.0)"],
     "task.singular_values"),
    (["--config.train.lrr=0.1"], "Did you mean `train.lr`"),
    (["--config.train.lr=fast"], "train.lr"),
    (["--config.train.lr=-0.1"], "train.lr"),
    (["--config.train.num_steps=0"], "train.num_steps"),
    (["--config.num_seeds=0"], "num_seeds"),
    (["--config.train.log_every=0"], "train.log_every"),
    (["--config.precision=float16"], "precision"),
    (["--config.task.noise_var=-1.0"], "task.noise_var"),
    (["--config.init.name=sideways"], "init.name"),
    (["--config.sweep.train.foo=(1,2)"], "sweep.train.foo"),
    (["--config.sweep.model.depth=(2,0)"], "model.depth"),
    (["--config.sweep.train.lr=()"], "sweep.train.lr"),
    (["--memory_budget_mb=-5"], "--memory_budget_mb"),
    (["--memory_budget_mb=0"], "--memory_budget_mb"),
    (["--checkpoint_every_s=-1"], "--checkpoint_every_s"),
    (["--config.train.lr=True"], "train.lr"),
    (["--config.train.lr=1e300"], "train.lr"),
    (["--config.train.optimizer=rmsprop"], "train.optimizer"),
]


def test_the_table_is_large():
  assert len(THEORY) + len(CLI) >= 100


@pytest.mark.parametrize("fn, call, name", THEORY, ids=[f"{i}-{c[0]}" for i, c in
                                                         enumerate(THEORY)])
def test_theory_bad_input_names_the_argument(fn, call, name):
  with pytest.raises(ValueError, match=name):
    call()


@pytest.mark.parametrize("args, field", CLI, ids=[" ".join(a) for a, _ in CLI])
def test_cli_bad_input_exits_2_naming_the_field(tmp_path, args, field):
  out = tmp_path / "bad"
  code, err = run_main("--config=configs/deep_linear.py", f"--out={out}", *args)
  assert code == 2 and field in err, err
  assert len(err.strip().splitlines()) == 1, err  # one line, no traceback
  assert not os.path.exists(out)
