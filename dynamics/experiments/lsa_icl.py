"""One-layer linear self-attention learning linear regression in context.

A grid point trains `num_seeds` seeds on fresh prompts
(`dynamics.tasks.icl_regression`) of one context length `task.n_context`
and one input covariance `task.covariance`, or on a fixed pool of
`task.pool_size` prompts shared by the seeds, with the loss
`(1/2B) sum (y_hat - y_q)^2`, and sets beside it `theory.linear_attention`:

  * `init.name = 'random'` (small random init): the final risk (Monte Carlo
    on `eval.num_prompts` fixed prompts) against `icl_risk` of
    `optimal_preconditioner`, exact and on the same prompts; the trained
    `Gamma = u G^T + g_y c^T` against the optimum; predictions and query
    sensitivities `d y_hat / d x_q` against one GD step at `optimal_gd_lr` (and
    against `Gamma*`), as in von Oswald et al. 2023. Across context lengths
    (`sweep_summary`): the risk against N with the optimum's and one GD step's.
  * `init.name = 'aligned'` (`init.u0`, `init.g0`, constant lr): loss, `u`,
    `g` and `u g = tr(Gamma)/d` against `gradient_flow` at `t = lr * steps`;
    across learning rates, the lag of gradient descent behind the flow.

`train.lr_scaling = 'curvature'` trains every context length at the same
fraction of its stability limit: the step is `train.lr / a(N)`, with
`a(N) = (N + 1 + tr Lambda + noise_var) / N` the curvature of the risk in
`Gamma` (tr Lambda = d for every covariance here). Short contexts have noisier
`S_xx` and a larger curvature; at one fixed step they diverge (N = 2, 5 at
0.05). `'none'` uses `train.lr` as is. Time is `t = step x` the step used.

`task.prompts = 'shared'` (an opt-in) gives every seed the same fresh
prompts at each step, drawn from the task seed, so the seeds differ only in
their initialisation: the prompts' distribution is unchanged, but the spread
over seeds no longer includes the sampling noise of the prompts. The engine
then draws each step's prompts once for all the seeds it runs together:
6.7-8.5x the seed-steps/s where drawing dominates (d = 10, N = 40, 512
prompts a step, 16 seeds; docs/performance.md). The default, `'per_seed'`,
draws every seed's prompts from its own key.

`train.decay = 'cosine'` anneals the learning rate to zero, removing the SGD
noise floor from the endpoint that the theory predicts (random init only).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from dynamics import config as cfg
from dynamics import metrics, plots
from dynamics.experiments import logged_times
from dynamics import train as engine
from dynamics.models import linear_attention as model
from dynamics.tasks import icl_regression as task
from theory import linear_attention as theory_la

# A seed counts as converged when its Monte-Carlo risk is within 5% of the
# optimum's on the same prompts; the others sit on a plateau (docs).
CONVERGED = 0.05
DECAYS = ("constant", "cosine")
PROMPTS = ("per_seed", "shared")
SCALINGS = ("curvature", "none")
INITS = ("random", "aligned")

HPARAMS = {"train.lr": "lr", "task.covariance": "cov", "model.init_scale": "init_scale",
           "init.u0": "u0", "init.g0": "g0"}
CONSTANTS = ("w_kq", "w_pv")
TABLE = ("loss", "loss_gamma", "u", "g", "ug", "residual")


def validate(config) -> None:
  """Raises ValueError naming the first bad field; runs before any tracing."""
  form = cfg.one_of(config, "model.form", model.FORMS)
  cfg.nonnegative(config, "model.init_scale")
  init = cfg.one_of(config, "init.name", INITS)
  cfg.nonnegative(config, "init.u0")
  cfg.nonnegative(config, "init.g0")
  cfg.integer(config, "task.seed", minimum=0)
  cfg.integer(config, "task.d")
  cfg.integer(config, "task.n_context")
  cfg.nonnegative(config, "task.noise_var")
  cov = cfg.one_of(config, "task.covariance", task.COVARIANCES)
  inputs = cfg.one_of(config, "task.inputs", task.INPUTS)
  cfg.positive(config, "task.input_range")
  if inputs == "uniform" and cov != "isotropic":
    cfg.fail("task.inputs", "'uniform' (von Oswald et al.'s U(-r/2, r/2)^d, r = "
             "task.input_range) needs task.covariance 'isotropic'.")
  kappa = cfg.positive(config, "task.condition_number")
  if kappa < 1:
    cfg.fail("task.condition_number", f"must be >= 1, got {kappa!r}.")
  cfg.integer(config, "eval.num_prompts")
  cfg.one_of(config, "train.optimizer", engine.OPTIMIZERS)
  decay = cfg.one_of(config, "train.decay", DECAYS)
  cfg.one_of(config, "train.lr_scaling", SCALINGS)
  cfg.schedule(config)
  batch = cfg.integer(config, "train.batch_size")
  pool = cfg.integer(config, "task.pool_size", minimum=0)
  cfg.one_of(config, "task.prompts", PROMPTS)
  if cfg.one_of(config, "task.sampling", SAMPLINGS) == "moments":
    t = config.task
    if t.inputs != "gaussian" or t.n_context < t.d + 1 or pool:
      cfg.fail("task.sampling", "'moments' needs Gaussian inputs (task.inputs), "
               "task.n_context >= task.d + 1 and fresh prompts (task.pool_size 0); "
               "'auto' falls back to tokens.")
  if pool and pool < batch:
    cfg.fail("task.pool_size", f"({pool}) must be 0 (fresh prompts every step) or "
             f">= train.batch_size ({batch}).")
  if init == "aligned":
    if form != "merged":
      cfg.fail("model.form", "must be 'merged' for init.name 'aligned' (the aligned "
               "init is defined on merged parameters).")
    if decay != "constant":
      cfg.fail("train.decay", "must be 'constant' for init.name 'aligned': its "
               "theory is gradient flow at t = lr x step.")
    if inputs != "gaussian":
      cfg.fail("task.inputs", "must be 'gaussian' for init.name 'aligned' (its "
               "gradient flow is solved for Gaussian inputs).")


def input_variance(config) -> float:
  """Per-coordinate input variance `s`: 1 for Gaussian inputs (tr Lambda = d),
  `r^2 / 12` for `U(-r/2, r/2)` inputs (`task.input_range` r)."""
  return 1.0 if config.task.inputs == "gaussian" else config.task.input_range ** 2 / 12


def curvature(config, n_context: int) -> float:
  """The risk's curvature in `Gamma` along `I`, `s^2 (s (N + kappa - 2 + d) +
  noise_var) / N` (`s = input_variance`, `kappa` the inputs' kurtosis): for
  Gaussian inputs `a(N) = (N + 1 + d + noise_var) / N`."""
  t = config.task
  s, kappa = input_variance(config), task.KURTOSIS[t.inputs]
  return s**2 * (s * (n_context + kappa - 2 + t.d) + t.noise_var) / n_context


def step_size(config) -> float:
  """The learning rate used (`train.lr_scaling`)."""
  lr = config.train.lr
  if config.train.lr_scaling == "curvature":
    lr = lr / curvature(config, config.task.n_context)
  return float(lr)


def log_times(config):
  step, _ = logged_times(config)
  return step, step_size(config) * step


def setting(config) -> dict:
  """Covariance, keys and theory of one point: arrays shared by every seed
  (from `PRNGKey(task.seed)`, docs/conventions.md)."""
  t = config.task
  return dict(_setting(t.seed, t.d, t.n_context, t.noise_var, t.covariance,
                       t.condition_number, config.precision, t.inputs,
                       input_variance(config)))


@functools.lru_cache(maxsize=64)  # hparams, summary and figure of a point ask for it
def _setting(seed, d, n, noise, name, condition_number, precision, inputs, var) -> dict:
  dtype = cfg.float_dtype(precision)
  k_cov, k_eval = jax.random.split(jax.random.PRNGKey(seed))
  cov = var * task.covariance(k_cov, d, name, condition_number, dtype)
  k_eval = jax.random.fold_in(jax.random.fold_in(k_eval, n), task.COVARIANCES.index(name))
  kappa = task.KURTOSIS[inputs]
  gamma_star = theory_la.optimal_preconditioner(cov, n, noise, kurtosis=kappa)
  eta = theory_la.optimal_gd_lr(d, n, noise, cov=cov, kurtosis=kappa)
  return {"cov": cov, "cov_sqrt": task.sqrtm(cov), "gamma_star": gamma_star,
          "eta": jnp.asarray(eta, dtype),
          "eval_key": k_eval,
          "pool_key": jax.random.fold_in(k_eval, 1),    # task.pool_size > 0
          "shared_key": jax.random.fold_in(k_eval, 2),  # task.prompts = 'shared'
          "risk_opt": theory_la.icl_risk(gamma_star, cov, n, noise, kurtosis=kappa),
          "risk_gd": theory_la.icl_risk(eta, cov, n, noise, kurtosis=kappa)}


def hparams(config) -> dict:
  """The point's setting and its shape-preserving hyperparameters, as arrays."""
  dtype = cfg.float_dtype(config.precision)
  ctx = setting(config)
  del ctx["risk_opt"], ctx["risk_gd"]
  return {**ctx, "lr": jnp.asarray(step_size(config), dtype),
          **{k: jnp.asarray(cfg.get(config, f), dtype) for f, k in
             (("model.init_scale", "init_scale"), ("init.u0", "u0"), ("init.g0", "g0"))}}


def _h(p: task.Prompts):
  """`h = (1/N) sum_i y_i x_i`, `[B, d]`."""
  return jnp.einsum("bn,bnd->bd", p.y, p.x) / p.x.shape[1]


def _compare_to(params, gamma, p: task.Prompts, name: str) -> dict:
  """Prediction distance and sensitivity cosine against `x_q^T Gamma h`."""
  y_model = model.predict(params, p.x, p.y, p.x_q)
  h = _h(p)
  y_ref = jnp.einsum("bd,de,be->b", p.x_q, gamma, h)
  grad_q = jax.grad(lambda xq, x, y: model.predict(params, x[None], y[None], xq[None])[0])
  s_model = jax.vmap(grad_q)(p.x_q, p.x, p.y)
  s_ref = h @ gamma.T
  cos = jnp.sum(s_model * s_ref, -1) / (
      jnp.linalg.norm(s_model, axis=-1) * jnp.linalg.norm(s_ref, axis=-1))
  return {f"{name}_pred_rel_diff": jnp.linalg.norm(y_model - y_ref) / jnp.linalg.norm(y_ref),
          f"{name}_sens_cos": jnp.mean(cos),
          f"{name}_risk_mc": jnp.mean((y_ref - p.y_q) ** 2)}


SAMPLINGS = ("auto", "tokens", "moments")


def uses_moments(config) -> bool:
  """Whether training prompts are drawn as moments (`icl_regression.
  sample_moments`, `task.sampling`): 'auto' picks them for fresh Gaussian
  prompts with `N >= d + 1`, the same law at a fraction of the random numbers."""
  t = config.task
  ok = t.inputs == "gaussian" and t.n_context >= t.d + 1 and not t.pool_size
  return ok if t.sampling == "auto" else t.sampling == "moments"


def training_data(batch, n_context, cov_sqrt, noise_var, *, inputs="gaussian",
                  moments=True):
  """`(data(key) -> prompts, loss_fn)` for fresh prompts every step: as moments
  (`model.loss_moments`) or as tokens (`model.loss`). The experiment and
  `scripts/bench.py lsa_icl` train through this."""
  if moments:
    return (lambda k: tuple(task.sample_moments(k, batch, n_context, cov_sqrt, noise_var)),
            model.loss_moments)
  return (lambda k: tuple(task.sample(k, batch, n_context, cov_sqrt, noise_var, inputs)),
          model.loss)


def make_train(config):
  """`train(key, hp)`: logged loss (Monte Carlo on the eval prompts), exact
  half-risk of `Gamma(t)`, `Gamma`, `u`, `g`, `u g`; the final weights and
  comparisons with one GD step (`vs_gd_*`) and with `Gamma*` (`vs_opt_*`)."""
  m, d, n, noise = config.model, config.task.d, config.task.n_context, config.task.noise_var
  tr = config.train
  pool, shared = config.task.pool_size, config.task.prompts == "shared"
  init = config.init.name
  inputs, kappa = config.task.inputs, task.KURTOSIS[config.task.inputs]
  moments = uses_moments(config)

  def train(key, hp):
    init_key, data_key = jax.random.split(key)
    if shared:  # the same prompts (or pool minibatches) for every seed
      data_key = hp["shared_key"]
    params = model.init(init_key, d, form=m.form, name=init, scale=hp["init_scale"],
                        u0=hp["u0"], g0=hp["g0"], dtype=hp["cov"].dtype)
    evals = task.sample(hp["eval_key"], config.eval.num_prompts, n, hp["cov_sqrt"], noise,
                        inputs)

    def metrics_fn(p):
      q = model.merged(p)
      gamma = model.effective_gamma(q)
      y_hat = model.predict(q, evals.x, evals.y, evals.x_q)
      y_gamma = jnp.einsum("bd,de,be->b", evals.x_q, gamma, _h(evals))
      return {"loss": 0.5 * jnp.mean((y_hat - evals.y_q) ** 2),
              # exact for the aligned blocks: no Monte-Carlo noise
              "loss_gamma": 0.5 * theory_la.icl_risk(gamma, hp["cov"], n, noise,
                                                     kurtosis=kappa),
              "gamma": gamma, "u": q["w_pv"][d, d],
              "g": jnp.trace(q["w_kq"][:d, :d]) / d, "ug": jnp.trace(gamma) / d,
              "residual": jnp.linalg.norm(y_hat - y_gamma) / jnp.linalg.norm(y_hat)}

    loss_fn = model.loss
    if pool:  # a fixed pool shared by the seeds, minibatches without replacement
      data = tuple(task.sample(hp["pool_key"], pool, n, hp["cov_sqrt"], noise, inputs))
    else:     # fresh prompts every step
      data, loss_fn = training_data(tr.batch_size, n, hp["cov_sqrt"], noise, inputs=inputs,
                                    moments=moments)
    optimizer = engine.make_optimizer(
        tr.optimizer, hp["lr"], decay_steps=tr.num_steps if tr.decay == "cosine" else None)
    state, logged = engine.trajectory(
        params, loss_fn=loss_fn, data=data, optimizer=optimizer,
        metrics_fn=metrics_fn, num_steps=tr.num_steps, log_every=tr.log_every,
        key=data_key, batch_size=tr.batch_size if pool else None)
    final = model.merged(state.params)
    gd = hp["eta"] * jnp.eye(d, dtype=hp["cov"].dtype)
    return {**logged, **final, **_compare_to(final, gd, evals, "vs_gd"),
            **_compare_to(final, hp["gamma_star"], evals, "vs_opt"),
            "diverged_at": state.diverged_at}

  return train


def theory(config, out: dict) -> dict:
  """Aligned init: `gradient_flow` at the logged times (shared by the seeds)."""
  if config.init.name != "aligned":
    return {}
  _, t = log_times(config)
  d = config.task.d
  cov = None if config.task.covariance == "isotropic" else \
      np.asarray(setting(config)["cov"], np.float64)
  th = theory_la.gradient_flow(t, d, config.task.n_context, config.init.u0,
                               config.init.g0, config.task.noise_var, cov=cov)
  return {"loss": th["loss"], "loss_gamma": th["loss"], "u": th["u"],
          "g": np.trace(th["G"], axis1=1, axis2=2) / d,
          "ug": np.trace(th["gamma"], axis1=1, axis2=2) / d}


def _stats(x) -> dict:
  s = metrics.seed_stats(np.asarray(x, np.float64))
  return {"mean": float(s["mean"]), "std": float(s["std"])}


def summarize(config, out: dict, pred: dict) -> dict:
  return _flow(config, out, pred) if pred else _endpoint(config, out)


def _inputs_label(config) -> str:
  """The covariance's name, or the uniform inputs' law."""
  t = config.task
  return t.covariance if t.inputs == "gaussian" else f"uniform U(+-{t.input_range / 2:g})"


def _endpoint(config, out) -> dict:
  """A random-init point at its last logged step."""
  ctx = setting(config)
  gs = np.asarray(ctx["gamma_star"], np.float64)
  gamma = out["gamma"][:, -1]
  risk = 2 * out["loss"][:, -1]
  excess = (risk - out["vs_opt_risk_mc"]) / float(ctx["risk_opt"])
  ok = excess < CONVERGED
  return {"covariance": _inputs_label(config), "n_context": int(config.task.n_context),
          "lr": step_size(config),
          "risk_measured": _stats(risk),
          "risk_median": float(np.median(risk)),
          "risk_per_seed": risk.tolist(),
          "converged_seeds": int(np.sum(ok)),
          "risk_converged": _stats(risk[ok]) if ok.any() else None,
          "gamma_rel_error_converged": (_stats(np.linalg.norm(
              gamma[ok] - gs, axis=(1, 2)) / np.linalg.norm(gs)) if ok.any() else None),
          "risk_opt_theory": float(ctx["risk_opt"]),
          "risk_opt_same_prompts": float(out["vs_opt_risk_mc"][0]),
          "risk_gd_theory": float(ctx["risk_gd"]),
          "excess_risk_rel": _stats(excess),
          "gamma_rel_error": _stats(np.linalg.norm(gamma - gs, axis=(1, 2))
                                    / np.linalg.norm(gs)),
          "residual": _stats(out["residual"][:, -1]),
          "optimal_gd_lr": float(ctx["eta"]),
          "vs_gd": {k: _stats(out[f"vs_gd_{k}"]) for k in ("pred_rel_diff", "sens_cos")},
          "vs_opt": {k: _stats(out[f"vs_opt_{k}"]) for k in ("pred_rel_diff", "sens_cos")}}


def _flow(config, out, pred) -> dict:
  """An aligned-init point against `gradient_flow`."""
  _, t = log_times(config)
  sim = {**{k: out[k] for k in ("u", "g", "ug")}, "loss": out["loss_gamma"],
         "loss_mc": out["loss"]}
  ref = lambda k: pred["loss" if k == "loss_mc" else k]
  cmp = {k: metrics.compare(sim[k], np.broadcast_to(ref(k), sim[k].shape))
         for k in ("loss", "loss_mc", "ug", "u", "g")}
  t_half = metrics.time_to_fraction(t, out["ug"], pred["ug"][-1], 0.5)
  t_half_th = float(metrics.time_to_fraction(t, pred["ug"], pred["ug"][-1], 0.5))
  gamma_th = theory_la.gradient_flow(t[-1:], config.task.d, config.task.n_context,
                                     config.init.u0, config.init.g0, config.task.noise_var,
                                     cov=None if config.task.covariance == "isotropic" else
                                     np.asarray(setting(config)["cov"], np.float64))["gamma"][-1]
  gs = np.asarray(setting(config)["gamma_star"], np.float64)
  return {"covariance": config.task.covariance, "n_context": int(config.task.n_context),
          "u0": float(config.init.u0), "g0": float(config.init.g0), "lr": step_size(config),
          "batch_size": int(config.train.batch_size),
          **{f"{k}_max_rel_error": float(np.max(c["max_rel_error"])) for k, c in cmp.items()},
          "loss_r2": float(np.min(cmp["loss"]["r2"])),
          "t_half_theory": t_half_th, "t_half_measured": _stats(t_half),
          "gamma_final_rel_error": float(np.max(
              np.linalg.norm(out["gamma"][:, -1] - gamma_th, axis=(1, 2))
              / np.linalg.norm(gamma_th))),
          # how near the end is to the optimum, simulated (worst seed) and in theory
          "gamma_star_rel_error": float(np.max(
              np.linalg.norm(out["gamma"][:, -1] - gs, axis=(1, 2)) / np.linalg.norm(gs))),
          "gamma_star_rel_error_theory": float(
              np.linalg.norm(gamma_th - gs) / np.linalg.norm(gs))}


def text(config, summary: dict) -> str:
  if "t_half_theory" in summary:
    f = summary
    return (f"  aligned init u0 = {f['u0']}, g0 = {f['g0']} vs gradient_flow (lr {f['lr']:.4g}, "
            f"{f['batch_size']} prompts/step):\n"
            f"  max relative error: loss {f['loss_max_rel_error']:.2e} (Monte Carlo on the "
            f"eval prompts {f['loss_mc_max_rel_error']:.2e}), u g {f['ug_max_rel_error']:.2e}, "
            f"u {f['u_max_rel_error']:.2e}, g {f['g_max_rel_error']:.2e}; loss R^2 "
            f"{f['loss_r2']:.5f}\n"
            f"  half-learning time of u g: theory {f['t_half_theory']:.4f}, simulation "
            f"{f['t_half_measured']['mean']:.4f}\n"
            f"  at the end, |Gamma - Gamma*| / |Gamma*|: {f['gamma_star_rel_error']:.2e} "
            f"(theory {f['gamma_star_rel_error_theory']:.2e})")
  r = summary
  conv = r["risk_converged"] or {"mean": float("nan")}
  gerr = r["gamma_rel_error_converged"] or {"mean": float("nan")}
  used = r["num_seeds"] - r["diverged_seeds"]
  return (f"  {r['covariance']} inputs, N = {r['n_context']}, lr {r['lr']:.4g}"
          + (", prompts shared by the seeds (opt-in)" if config.task.prompts == "shared"
             else "") + "\n"
          f"  converged {r['converged_seeds']}/{used} (risk within {CONVERGED:.0%} of the "
          f"optimum's on the same prompts): risk {conv['mean']:.4f}, |G-G*|/|G*| "
          f"{gerr['mean']:.2e}\n"
          f"  optimum Gamma*: risk {r['risk_opt_theory']:.4f} (theory), "
          f"{r['risk_opt_same_prompts']:.4f} (same prompts); one GD step at the best lr "
          f"{r['risk_gd_theory']:.4f}\n"
          f"  vs one GD step (all seeds): prediction difference "
          f"{r['vs_gd']['pred_rel_diff']['mean']:.2e}, sensitivity cosine "
          f"{r['vs_gd']['sens_cos']['mean']:.4f}")


def plot(config, out, pred, summary, path) -> None:
  """Aligned: the flow's loss and parameters against the simulation.
  Random: loss, trained Gamma against Gamma*, and (seed 0) the trained
  weights beside the GD construction moved along the symmetry G -> g G."""
  _, t = log_times(config)
  d = config.task.d
  if pred:
    fig, (ax, ax_p) = plots.figure(2)
    plots.trajectories(ax, t, out["loss_gamma"], pred["loss_gamma"],
                       label="simulation: icl_risk(Gamma(t)) / 2")
    ax.set(xlabel="t = lr x steps", ylabel="loss (1/2) risk",
           title=f"aligned init, {config.train.batch_size} prompts/step")
    plots.legend_theory(ax)
    for k, c in (("ug", "C0"), ("u", "C1"), ("g", "C2")):
      plots.trajectories(ax_p, t, out[k], pred[k], color=c,
                         label=k if k != "ug" else "u g = tr(Gamma)/d")
    ax_p.set(xlabel="t = lr x steps", title="parameters (theory dashed)")
    plots.legend_theory(ax_p)
    plots.save(fig, path)
    return
  ctx = setting(config)
  fig, axes = plots.figure(3, 2, size=(4.6, 3.8))
  plots.trajectories(axes[0], t, 2 * out["loss"], label="Monte-Carlo risk", log=True)
  axes[0].axhline(summary["risk_opt_theory"], color="k", ls="--", lw=1, label="optimum Gamma*")
  axes[0].axhline(summary["risk_gd_theory"], color="C3", ls=":", lw=1,
                  label="one GD step, best lr")
  axes[0].set(xlabel="t = lr x steps", ylabel="risk",
              title=f"{config.task.covariance}, N = {config.task.n_context}")
  axes[0].legend(fontsize=8)
  gs = np.asarray(ctx["gamma_star"])
  for s in range(out["gamma"].shape[0]):
    axes[1].plot(gs.ravel(), out["gamma"][s, -1].ravel(), "o", ms=3, alpha=0.5, color="C0")
  lim = [gs.min() - 0.1, gs.max() + 0.1]
  axes[1].plot(lim, lim, "k-", lw=0.8)
  axes[1].set(xlabel="optimal_preconditioner entries", ylabel="trained Gamma entries",
              title="every seed, every entry")
  w_kq, w_pv = out["w_kq"][0], out["w_pv"][0]
  g_hat = np.trace(w_kq[:d, :d]) / d
  con = theory_la.gd_params(d, float(ctx["eta"]))  # moved along G -> g G, u -> u / g
  con = {"w_kq": np.asarray(con["w_kq"]) * g_hat, "w_pv": np.asarray(con["w_pv"]) / g_hat}
  for a, (w, title) in zip(axes[2:], ((w_kq, "trained W_KQ (seed 0)"),
                                      (w_pv, "trained W_PV (seed 0)"),
                                      (con["w_kq"], "GD construction W_KQ"),
                                      (con["w_pv"], "GD construction W_PV"))):
    v = np.abs(w).max()
    im = a.imshow(w, cmap="RdBu_r", vmin=-v, vmax=v)
    a.set_title(title, fontsize=10)
    a.set_xticks([]), a.set_yticks([])
    fig.colorbar(im, ax=a, fraction=0.046)
  plots.save(fig, path, "one-layer linear self-attention vs theory.linear_attention")


def sweep_summary(config, points) -> dict:
  """Random init: per covariance, the risk against N. Aligned init: the
  half-learning-time lag of gradient descent behind the flow against lr,
  beside its leading order `lr sqrt(d) / 2` on the plateau (docs)."""
  out: dict = {"risk_vs_n": {}, "flow_lag": []}
  for p in points:
    s = p.summary
    if "risk_median" in s:
      out["risk_vs_n"].setdefault(s["covariance"], []).append(
          {k: s[k] for k in ("n_context", "risk_median", "risk_opt_theory",
                             "risk_opt_same_prompts", "risk_gd_theory", "converged_seeds")}
          | {"seeds": s["num_seeds"] - s["diverged_seeds"], "risk_per_seed": s["risk_per_seed"]})
    elif "t_half_theory" in s:
      out["flow_lag"].append({"lr": s["lr"], "covariance": s["covariance"],
                              "t_half_rel_error": s["t_half_measured"]["mean"]
                              / s["t_half_theory"] - 1,
                              "predicted": s["lr"] * np.sqrt(p.config.task.d) / 2})
  for rows in out["risk_vs_n"].values():
    rows.sort(key=lambda r: r["n_context"])
  out["flow_lag"].sort(key=lambda r: r["lr"])
  return out


def sweep_text(config, summary: dict) -> str:
  lines = []
  for cov, rows in summary["risk_vs_n"].items():
    lines.append(f"{'N':>4} {'converged':>9} {'risk median':>12} {'optimum':>9} "
                 f"{'GD best lr':>11}   ({cov} inputs)")
    lines += [f"{r['n_context']:>4} {r['converged_seeds']:>4}/{r['seeds']:<4} "
              f"{r['risk_median']:>12.4f} {r['risk_opt_theory']:>9.4f} "
              f"{r['risk_gd_theory']:>11.4f}" for r in rows]
  if summary["flow_lag"]:
    lines.append(f"{'lr':>8} {'t_half lag':>11} {'lr sqrt(d)/2':>13}   (aligned init)")
    lines += [f"{r['lr']:>8.4g} {r['t_half_rel_error']:>11.2%} {r['predicted']:>13.2%}"
              for r in summary["flow_lag"]]
  return "\n".join(lines)


def sweep_plot(config, points, summary, path) -> None:
  """Risk against N per covariance (theory lines, trained seeds as dots), and
  the flow lag against lr."""
  panels = list(summary["risk_vs_n"].items()) + ([("lag", None)] if summary["flow_lag"] else [])
  fig, axes = plots.figure(max(len(panels), 1))
  for ax, (cov, rows) in zip(axes, panels):
    if rows is None:
      lag = summary["flow_lag"]
      lr = np.array([r["lr"] for r in lag])
      ax.plot(lr, [100 * r["t_half_rel_error"] for r in lag], "o-", label="measured")
      ax.plot(lr, [100 * r["predicted"] for r in lag], "k--", label="lr sqrt(d) / 2")
      ax.set(xlabel="learning rate", ylabel="t_half(GD) / t_half(flow) - 1 (%)",
             title="aligned init: gradient descent lags the flow by O(lr)")
      ax.legend(fontsize=8)
      continue
    c = next(p.config for p in points if p.summary.get("covariance") == cov)
    ctx = setting(c)
    cov_m, nv, kap = ctx["cov"], c.task.noise_var, task.KURTOSIS[c.task.inputs]
    ns = np.array([r["n_context"] for r in rows])
    dense = np.unique(np.round(np.geomspace(1, ns.max() * 1.5, 40)).astype(int))
    risk = lambda g, n: float(theory_la.icl_risk(g, cov_m, int(n), nv, kurtosis=kap))
    r_opt = [risk(theory_la.optimal_preconditioner(cov_m, int(n), nv, kurtosis=kap), n)
             for n in dense]
    r_gd = [risk(theory_la.optimal_gd_lr(c.task.d, int(n), nv, cov=cov_m, kurtosis=kap), n)
            for n in dense]
    ax.plot(dense, r_opt, "k-", label="optimum Gamma* (icl_risk)")
    ax.plot(dense, r_gd, "C3--", label="one GD step, best lr")
    ax.plot(ns, [r["risk_opt_same_prompts"] for r in rows], "kx", ms=9, zorder=1,
            label="Gamma* on the same eval prompts")
    for i, r in enumerate(rows):  # hollow, on top: seeds at the optimum stay visible
      ax.plot(np.full(len(r["risk_per_seed"]), r["n_context"]), r["risk_per_seed"], "o",
              mfc="none", color="C0", ms=5, zorder=3,
              label="trained LSA, per seed" if i == 0 else None)
    ax.set(xscale="log", yscale="log", xlabel="context length N", ylabel="risk",
           title=f"risk vs N ({cov} inputs)")
    ax.legend(fontsize=8)
  plots.save(fig, path, "one-layer linear self-attention: simulation vs theory.linear_attention")
