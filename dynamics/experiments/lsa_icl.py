"""One-layer linear self-attention learning linear regression in context.

Three parts (`config.parts`), each a batch of seeds in one compiled call,
trained online on fresh prompts (`dynamics.tasks.icl_regression`), or on a
fixed pool of `task.pool_size` prompts shared by the seeds, with the
loss `(1/2B) sum (y_hat - y_q)^2`, and set beside `theory.linear_attention`:

  * `'icl'`: small random init, every covariance in `task.covariances`. The
    final risk (Monte Carlo on `eval.num_prompts` fixed prompts) against
    `icl_risk(optimal_preconditioner)`, both exact and on the same prompts;
    the trained `Gamma = u G^T + g_y c^T` against `optimal_preconditioner`;
    predictions and query sensitivities `d y_hat / d x_q` against one GD step
    at `optimal_gd_lr` (and against `Gamma*`), as in von Oswald et al. 2023.
  * `'flow'`: aligned init `(flow.u0, flow.g0)`, small constant `flow.lr`,
    `flow.batch_size` prompts per step: loss, `u`, `g` and `u g` against
    `gradient_flow` at `t = lr * steps`.
  * `'context'`: the random-init training of `'icl'` for every length in
    `context.n_context`: final risk against `icl_risk` of the optimum and of
    one GD step at the best single learning rate.

`task.prompts = 'shared'` (an opt-in) gives every seed the same fresh
prompts at each step, drawn from the task seed, so the seeds differ only in
their initialisation: the prompts' distribution is unchanged, but the spread
over seeds no longer includes the sampling noise of the prompts. The engine
then draws each step's prompts once for all the seeds it runs together:
6.7-8.5x the seed-steps/s where drawing dominates (d = 10, N = 40, 512
prompts a step, 16 seeds; docs/performance.md), no gain for this experiment's
default size, which compiles and evaluates more than it draws. The
default, `'per_seed'`, draws every seed's prompts from its own key.

`train.decay = 'cosine'` anneals the learning rate of `'icl'` and
`'context'` to zero, removing the SGD noise floor from the endpoint that the
theory predicts; `'flow'` always uses a constant rate (its time is
`lr * steps`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from dynamics import config as cfg
from dynamics import metrics
from dynamics import train as engine
from dynamics.models import linear_attention as model
from dynamics.tasks import icl_regression as task
from theory import linear_attention as theory

PARTS = ("icl", "flow", "context")
# A seed counts as converged when its Monte-Carlo risk is within 5% of the
# optimum's on the same prompts; the others sit on a plateau (docs).
CONVERGED = 0.05
DECAYS = ("constant", "cosine")
PROMPTS = ("per_seed", "shared")


def validate(config) -> None:
  """Raises ValueError naming the first bad field; runs before any tracing."""
  cfg.integer(config, "seed", minimum=0)
  cfg.integer(config, "num_seeds")
  cfg.one_of(config, "precision", cfg.PRECISIONS)
  parts = cfg.get(config, "parts")
  if isinstance(parts, str) or not parts or any(p not in PARTS for p in parts):
    cfg.fail("parts", f"must be a non-empty sequence of {PARTS}, got {parts!r}.")
  form = cfg.one_of(config, "model.form", model.FORMS)
  cfg.nonnegative(config, "model.init_scale")
  cfg.integer(config, "task.seed", minimum=0)
  cfg.integer(config, "task.d")
  cfg.integer(config, "task.n_context")
  cfg.nonnegative(config, "task.noise_var")
  covs = cfg.get(config, "task.covariances")
  if isinstance(covs, str) or not covs or any(c not in task.COVARIANCES for c in covs):
    cfg.fail("task.covariances", f"must be a non-empty sequence of "
             f"{task.COVARIANCES}, got {covs!r}.")
  kappa = cfg.positive(config, "task.condition_number")
  if kappa < 1:
    cfg.fail("task.condition_number", f"must be >= 1, got {kappa!r}.")
  cfg.integer(config, "eval.num_prompts")
  cfg.one_of(config, "train.optimizer", engine.OPTIMIZERS)
  cfg.one_of(config, "train.decay", DECAYS)
  cfg.schedule(config)
  batch = cfg.integer(config, "train.batch_size")
  pool = cfg.integer(config, "task.pool_size", minimum=0)
  cfg.one_of(config, "task.prompts", PROMPTS)
  if pool and pool < batch:
    cfg.fail("task.pool_size", f"({pool}) must be 0 (fresh prompts every step) or "
             f">= train.batch_size ({batch}).")
  if "flow" in parts:
    if form != "merged":
      cfg.fail("model.form", "must be 'merged' for the 'flow' part (the aligned "
               "init is defined on merged parameters).")
    cfg.one_of(config, "flow.covariance", task.COVARIANCES)
    cfg.numbers(config, "flow.u0")
    cfg.numbers(config, "flow.g0")
    cfg.integer(config, "flow.num_seeds")
    flow_batch = cfg.integer(config, "flow.batch_size")
    if pool and pool < flow_batch:
      cfg.fail("task.pool_size", f"({pool}) must be >= flow.batch_size "
               f"({flow_batch}) for the 'flow' part.")
    cfg.schedule(config, "flow")
  if "context" in parts:
    ns = cfg.numbers(config, "context.n_context", minimum=1)
    if any(not float(n).is_integer() for n in ns):
      cfg.fail("context.n_context", f"must hold integers, got {ns}.")
    cfg.one_of(config, "context.covariance", task.COVARIANCES)
    cfg.integer(config, "context.num_seeds")


def total_steps(config) -> int:
  """Optimizer steps of every part, for the progress bar."""
  total = 0
  if "icl" in config.parts:
    total += config.train.num_steps * len(config.task.covariances)
  if "flow" in config.parts:
    total += config.flow.num_steps
  if "context" in config.parts:
    total += config.train.num_steps * len(config.context.n_context)
  return total


def context_lr(config, n_context: int) -> float:
  """`train.lr` rescaled for context length `N` by the curvature of the risk in
  `Gamma`, `a(N) = (N + 1 + tr Lambda + noise_var) / N` (tr Lambda = d for every
  covariance here): `lr a(task.n_context) / a(N)`. Short contexts have noisier
  `S_xx` and a larger curvature; at a fixed lr they diverge (N = 2, 5 at lr 0.05)."""
  a = lambda n: (n + 1 + config.task.d + config.task.noise_var) / n
  return float(config.train.lr * a(config.task.n_context) / a(n_context))


def setting(config, cov_name: str, n_context: int) -> dict:
  """Covariance, eval prompts and theory for one (covariance, N): arrays shared
  by every seed (prompts from `PRNGKey(task.seed)`, docs/conventions.md)."""
  dtype = cfg.float_dtype(config.precision)
  d, noise = config.task.d, config.task.noise_var
  k_cov, k_eval = jax.random.split(jax.random.PRNGKey(config.task.seed))
  cov = task.covariance(k_cov, d, cov_name, config.task.condition_number, dtype)
  cov_sqrt = task.sqrtm(cov)
  k_eval = jax.random.fold_in(jax.random.fold_in(k_eval, n_context),
                              task.COVARIANCES.index(cov_name))
  evals = task.sample(k_eval, config.eval.num_prompts, n_context, cov_sqrt, noise)
  k_pool = jax.random.fold_in(k_eval, 1)  # the training pool, when task.pool_size > 0
  k_shared = jax.random.fold_in(k_eval, 2)  # every seed's prompts, task.prompts = 'shared'
  gamma_star = theory.optimal_preconditioner(cov, n_context, noise)
  eta = theory.optimal_gd_lr(d, n_context, noise, cov=cov)
  return {"cov": cov, "cov_sqrt": cov_sqrt, "eval": evals, "pool_key": k_pool,
          "shared_key": k_shared,
          "gamma_star": gamma_star, "eta": eta,
          "risk_opt": theory.icl_risk(gamma_star, cov, n_context, noise),
          "risk_gd": theory.icl_risk(eta, cov, n_context, noise)}


def _h(p: task.Prompts):
  """`h = (1/N) sum_i y_i x_i`, `[B, d]`."""
  return jnp.einsum("bn,bnd->bd", p.y, p.x) / p.x.shape[1]


def _compare_to(params, gamma, p: task.Prompts) -> dict:
  """Prediction distance and sensitivity cosine against `x_q^T Gamma h`."""
  y_model = model.predict(params, p.x, p.y, p.x_q)
  h = _h(p)
  y_ref = jnp.einsum("bd,de,be->b", p.x_q, gamma, h)
  grad_q = jax.grad(lambda xq, x, y: model.predict(params, x[None], y[None], xq[None])[0])
  s_model = jax.vmap(grad_q)(p.x_q, p.x, p.y)
  s_ref = h @ gamma.T
  cos = jnp.sum(s_model * s_ref, -1) / (
      jnp.linalg.norm(s_model, axis=-1) * jnp.linalg.norm(s_ref, axis=-1))
  return {"pred_rel_diff": jnp.linalg.norm(y_model - y_ref) / jnp.linalg.norm(y_ref),
          "sens_cos": jnp.mean(cos),
          "risk_ref_mc": jnp.mean((y_ref - p.y_q) ** 2)}


def make_train(config, *, n_context: int, init: str, lr: float, num_steps: int,
               log_every: int, batch_size: int, decay: bool, progress=None):
  """`train(key, ctx) -> logged metrics and final comparisons`, where `ctx` is a
  `setting` (shared by the seeds; a traced argument, so covariances of one
  shape share one compilation)."""
  m, d, noise = config.model, config.task.d, config.task.noise_var
  pool, shared = config.task.pool_size, config.task.prompts == "shared"
  optimizer = engine.make_optimizer(config.train.optimizer if init == "random" else "sgd",
                                    lr, decay_steps=num_steps if decay else None)

  def train(key, ctx):
    init_key, data_key = jax.random.split(key)
    if shared:  # the same prompts (or pool minibatches) for every seed
      data_key = ctx["shared_key"]
    params = model.init(init_key, d, form=m.form, name=init, scale=m.init_scale,
                        u0=ctx.get("u0", 0.0), g0=ctx.get("g0", 0.0),
                        dtype=ctx["cov"].dtype)
    evals = ctx["eval"]

    def metrics_fn(p):
      q = model.merged(p)
      gamma = model.effective_gamma(q)
      y_hat = model.predict(q, evals.x, evals.y, evals.x_q)
      y_gamma = jnp.einsum("bd,de,be->b", evals.x_q, gamma, _h(evals))
      return {"loss": 0.5 * jnp.mean((y_hat - evals.y_q) ** 2),
              # exact for the aligned blocks: no Monte-Carlo noise
              "loss_gamma": 0.5 * theory.icl_risk(gamma, ctx["cov"], n_context, noise),
              "gamma": gamma, "u": q["w_pv"][d, d],
              "g": jnp.trace(q["w_kq"][:d, :d]) / d,
              "residual": jnp.linalg.norm(y_hat - y_gamma) / jnp.linalg.norm(y_hat)}

    if pool:  # a fixed pool shared by the seeds, minibatches without replacement
      data = tuple(task.sample(ctx["pool_key"], pool, n_context, ctx["cov_sqrt"], noise))
    else:     # fresh prompts every step
      data = lambda k: tuple(task.sample(k, batch_size, n_context, ctx["cov_sqrt"], noise))
    state, logged = engine.trajectory(
        params, loss_fn=model.loss, data=data, optimizer=optimizer,
        metrics_fn=metrics_fn, num_steps=num_steps, log_every=log_every,
        key=data_key, batch_size=batch_size if pool else None, progress=progress)
    final = model.merged(state.params)
    gd = ctx["eta"] * jnp.eye(d, dtype=ctx["cov"].dtype)
    return {**logged, "w_kq": final["w_kq"], "w_pv": final["w_pv"],
            "vs_gd": _compare_to(final, gd, evals),
            "vs_opt": _compare_to(final, ctx["gamma_star"], evals),
            "diverged_at": state.diverged_at}

  return train


def _np(tree):
  return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), tree)


def _stats(x) -> dict:
  s = metrics.seed_stats(np.asarray(x, np.float64))
  return {"mean": float(s["mean"]), "std": float(s["std"])}


def _offset(progress, done: dict):
  """Progress of one trajectory, shifted by the steps of the parts before it
  (`done['steps']`, read at call time: one compiled function serves several)."""
  return None if progress is None else (lambda s: progress(done["steps"] + s))


def _endpoint(config, ctx, out, n_context, cov_name) -> dict:
  """Summary of a random-init part at its last logged step."""
  gs = np.asarray(ctx["gamma_star"], np.float64)
  gamma = out["gamma"][:, -1]
  risk = 2 * out["loss"][:, -1]
  excess = (risk - out["vs_opt"]["risk_ref_mc"]) / float(ctx["risk_opt"])
  ok = excess < CONVERGED
  return {"covariance": cov_name, "n_context": int(n_context),
          "risk_measured": _stats(risk),
          "risk_median": float(np.median(risk)),
          "risk_per_seed": risk.tolist(),
          "converged_seeds": int(np.sum(ok)), "num_seeds": int(len(risk)),
          "risk_converged": _stats(risk[ok]) if ok.any() else None,
          "gamma_rel_error_converged": (_stats(np.linalg.norm(
              gamma[ok] - gs, axis=(1, 2)) / np.linalg.norm(gs)) if ok.any() else None),
          "risk_opt_theory": float(ctx["risk_opt"]),
          "risk_opt_same_prompts": float(out["vs_opt"]["risk_ref_mc"][0]),
          "risk_gd_theory": float(ctx["risk_gd"]),
          "excess_risk_rel": _stats(excess),
          "gamma_rel_error": _stats(np.linalg.norm(gamma - gs, axis=(1, 2))
                                    / np.linalg.norm(gs)),
          "residual": _stats(out["residual"][:, -1]),
          "optimal_gd_lr": float(ctx["eta"]),
          "vs_gd": {k: _stats(out["vs_gd"][k]) for k in ("pred_rel_diff", "sens_cos")},
          "vs_opt": {k: _stats(out["vs_opt"][k]) for k in ("pred_rel_diff", "sens_cos")},
          "diverged_seeds": int(np.sum(out["diverged_at"] >= 0))}


def _frame(part, cov_name, n_context, t, out, pred=None) -> pd.DataFrame:
  s, l = out["loss"].shape
  cols = {"part": part, "covariance": cov_name, "n_context": n_context,
          "seed": np.repeat(np.arange(s), l), "t": np.tile(t, s)}
  for k in ("loss", "loss_gamma", "u", "g", "residual"):
    cols[k] = out[k].reshape(-1)
  cols["ug"] = (np.trace(out["gamma"], axis1=2, axis2=3) / out["gamma"].shape[-1]).reshape(-1)
  for k in ("loss", "u", "g", "ug"):
    cols[f"{k}_pred"] = np.tile(pred[k], s) if pred is not None else np.nan
  return pd.DataFrame(cols)


def run(config, progress=None) -> dict:
  validate(config)
  tr, d = config.train, config.task.d
  decay = tr.decay == "cosine"
  t_icl = tr.lr * np.arange(0, tr.num_steps + 1, tr.log_every)
  summary, arrays, frames, plot_data = {}, {}, [], {}
  done = {"steps": 0}

  def random_part(n_context, cov_names, num_seeds, lr=tr.lr):
    train = make_train(config, n_context=n_context, init="random", lr=lr,
                       num_steps=tr.num_steps, log_every=tr.log_every,
                       batch_size=tr.batch_size, decay=decay,
                       progress=_offset(progress, done))
    fn = engine.vmap_rows(train, 1, batched=False)  # one compilation per N
    results = []
    for name in cov_names:
      ctx = setting(config, name, n_context)
      out = _np(engine.run_rows(fn, engine.seed_keys(config.seed, num_seeds), ctx,
                                 batched=False))
      done["steps"] += tr.num_steps
      results.append((name, ctx, out))
    return results

  if "icl" in config.parts:
    summary["icl"] = []
    for name, ctx, out in random_part(config.task.n_context, config.task.covariances,
                                      config.num_seeds):
      summary["icl"].append(_endpoint(config, ctx, out, config.task.n_context, name))
      frames.append(_frame("icl", name, config.task.n_context, t_icl, out))
      arrays.update({f"icl_{name}_{k}": out[k] for k in
                     ("loss", "gamma", "u", "g", "w_kq", "w_pv")})
      arrays[f"icl_{name}_gamma_star"] = np.asarray(ctx["gamma_star"])
      plot_data[f"icl_{name}"] = (ctx, out)
  if "flow" in config.parts:
    summary["flow"], flow = _flow_part(config, _offset(progress, done))
    done["steps"] += config.flow.num_steps
    frames.append(_frame("flow", config.flow.covariance, config.task.n_context,
                         flow["t"], flow["out"], flow["pred"]))
    arrays.update({f"flow_{k}": v for k, v in flow["out"].items()
                   if k in ("loss", "loss_gamma", "u", "g", "gamma")})
    arrays.update({f"flow_{k}_pred": v for k, v in flow["pred"].items()})
    arrays["flow_t"] = flow["t"]
    plot_data["flow"] = flow
  if "context" in config.parts:
    rows = []
    for n in config.context.n_context:
      lr = context_lr(config, int(n))
      (name, ctx, out), = random_part(int(n), (config.context.covariance,),
                                     config.context.num_seeds, lr)
      rows.append({**_endpoint(config, ctx, out, int(n), name), "lr": lr})
      frames.append(_frame("context", name, int(n), t_icl * lr / tr.lr, out))
      arrays[f"context_{int(n)}_risk"] = 2 * out["loss"][:, -1]
    summary["context"] = rows
  summary.update({"d": d, "noise_var": float(config.task.noise_var),
                  "num_seeds": int(config.num_seeds), "optimizer": tr.optimizer,
                  "decay": tr.decay, "prompts": config.task.prompts})
  arrays["t_icl"] = t_icl
  return {"arrays": arrays, "summary": summary, "table": table(summary),
          "frame": pd.concat(frames, ignore_index=True),
          "plot": lambda path: plot(config, summary, plot_data, path)}


def _flow_part(config, progress):
  fl = config.flow
  n = config.task.n_context
  ctx = setting(config, fl.covariance, n)
  ctx["u0"], ctx["g0"] = jnp.asarray(fl.u0, ctx["cov"].dtype), jnp.asarray(fl.g0, ctx["cov"].dtype)
  train = make_train(config, n_context=n, init="aligned", lr=fl.lr,
                     num_steps=fl.num_steps, log_every=fl.log_every,
                     batch_size=fl.batch_size, decay=False, progress=progress)
  keys = engine.seed_keys(config.seed, fl.num_seeds)
  out = _np(engine.run_seeds(train, keys, ctx))
  t = fl.lr * np.arange(0, fl.num_steps + 1, fl.log_every)
  cov = None if fl.covariance == "isotropic" else np.asarray(ctx["cov"], np.float64)
  th = theory.gradient_flow(t, config.task.d, n, fl.u0, fl.g0,
                            config.task.noise_var, cov=cov)
  d = config.task.d
  pred = {"loss": th["loss"], "u": th["u"],
          "g": np.trace(th["G"], axis1=1, axis2=2) / d,
          "ug": np.trace(th["gamma"], axis1=1, axis2=2) / d}
  ug = np.trace(out["gamma"], axis1=2, axis2=3) / d
  sim = {"loss": out["loss_gamma"], "loss_mc": out["loss"], "u": out["u"],
         "g": out["g"], "ug": ug}
  ref = lambda k: pred["loss" if k == "loss_mc" else k]
  cmp = {k: metrics.compare(sim[k], np.broadcast_to(ref(k), sim[k].shape))
         for k in ("loss", "loss_mc", "ug", "u", "g")}
  t_half = metrics.time_to_fraction(t, ug, pred["ug"][-1], 0.5)
  t_half_th = float(metrics.time_to_fraction(t, pred["ug"], pred["ug"][-1], 0.5))
  summary = {"covariance": fl.covariance, "u0": float(fl.u0), "g0": float(fl.g0),
             "lr": float(fl.lr), "batch_size": int(fl.batch_size),
             "num_seeds": int(fl.num_seeds),
             **{f"{k}_max_rel_error": float(np.max(c["max_rel_error"])) for k, c in cmp.items()},
             "loss_r2": float(np.min(cmp["loss"]["r2"])),
             "t_half_theory": t_half_th, "t_half_measured": _stats(t_half),
             "gamma_final_rel_error": float(np.max(
                 np.linalg.norm(out["gamma"][:, -1] - th["gamma"][-1], axis=(1, 2))
                 / np.linalg.norm(th["gamma"][-1]))),
             "diverged_seeds": int(np.sum(out["diverged_at"] >= 0))}
  return summary, {"t": t, "out": out, "pred": pred}


def table(summary: dict) -> str:
  lines = [f"one-layer linear self-attention, d = {summary['d']}, "
           f"noise_var = {summary['noise_var']}"
           + (", prompts shared by the seeds (opt-in)"
              if summary.get("prompts") == "shared" else "")]
  if "icl" in summary:
    head = (f"{'covariance':>10} {'N':>4} {'converged':>9} {'risk sim':>9} "
            f"{'risk opt':>9} {'opt (MC)':>9} {'GD risk':>8} {'|G-G*|/|G*|':>12} "
            f"{'pred diff GD':>13} {'cos GD':>7}")
    lines += ["", f"trained from random init ({summary['num_seeds']} seeds, "
              f"{summary['optimizer']}, {summary['decay']} lr) vs the optimum "
              "Gamma* and one GD step at the best lr", head, "-" * len(head)]
    for r in summary["icl"]:
      conv = r["risk_converged"] or {"mean": float("nan")}
      gerr = r["gamma_rel_error_converged"] or {"mean": float("nan")}
      lines.append(
          f"{r['covariance']:>10} {r['n_context']:>4} "
          f"{r['converged_seeds']:>4}/{r['num_seeds']:<4} {conv['mean']:>9.4f} "
          f"{r['risk_opt_theory']:>9.4f} {r['risk_opt_same_prompts']:>9.4f} "
          f"{r['risk_gd_theory']:>8.4f} {gerr['mean']:>12.2e} "
          f"{r['vs_gd']['pred_rel_diff']['mean']:>13.2e} "
          f"{r['vs_gd']['sens_cos']['mean']:>7.4f}")
    lines.append("risk sim and |G-G*| over converged seeds (risk within "
                 f"{CONVERGED:.0%} of the optimum's); GD columns over all seeds")
  if "flow" in summary:
    f = summary["flow"]
    lines += ["", f"aligned init u0 = {f['u0']}, g0 = {f['g0']} vs gradient_flow "
              f"(lr {f['lr']}, {f['batch_size']} prompts/step, {f['num_seeds']} seeds):",
              f"  max relative error: loss {f['loss_max_rel_error']:.2e} (Monte Carlo "
              f"on the eval prompts {f['loss_mc_max_rel_error']:.2e}), u g "
              f"{f['ug_max_rel_error']:.2e}, u {f['u_max_rel_error']:.2e}, "
              f"g {f['g_max_rel_error']:.2e}; loss R^2 {f['loss_r2']:.5f}",
              f"  half-learning time of u g: theory {f['t_half_theory']:.4f}, "
              f"simulation {f['t_half_measured']['mean']:.4f}"]
  if "context" in summary:
    lines += ["", f"{'N':>4} {'converged':>9} {'risk median':>12} {'optimum':>9} "
              f"{'GD best lr':>11}   ({summary['context'][0]['covariance']} inputs)"]
    for r in summary["context"]:
      lines.append(f"{r['n_context']:>4} {r['converged_seeds']:>4}/{r['num_seeds']:<4} "
                   f"{r['risk_median']:>12.4f} {r['risk_opt_theory']:>9.4f} "
                   f"{r['risk_gd_theory']:>11.4f}")
  return "\n".join(lines)


def plot(config, summary, data, path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(2, 4, figsize=(17, 8))
  ax = axes[0]
  if "flow" in data:
    f = data["flow"]
    ax[0].plot(f["t"], f["out"]["loss_gamma"].T, color="C0", alpha=0.6, lw=1.5)
    ax[0].plot([], [], color="C0", label="simulation: icl_risk(Gamma(t)) / 2")
    ax[0].plot(f["t"], f["pred"]["loss"], "k--", lw=1.5, label="gradient_flow")
    ax[0].set(xlabel="t = lr x steps", ylabel="loss (1/2) risk",
              title=f"aligned init, {config.flow.batch_size} prompts/step")
    ax[0].legend(fontsize=8)
    for k, c in (("ug", "C0"), ("u", "C1"), ("g", "C2")):
      sim = (np.trace(f["out"]["gamma"], axis1=2, axis2=3) / config.task.d
             if k == "ug" else f["out"][k])
      ax[1].plot(f["t"], sim.T, color=c, alpha=0.6, lw=1)
      ax[1].plot(f["t"], f["pred"][k], "--", color="k", lw=1)
      ax[1].plot([], [], color=c, label=k if k != "ug" else "u g = tr(Gamma)/d")
    ax[1].set(xlabel="t = lr x steps", title="parameters (theory dashed)")
    ax[1].legend(fontsize=8)
  if "context" in summary:
    rows = summary["context"]
    ns = np.array([r["n_context"] for r in rows])
    ctx0 = setting(config, rows[0]["covariance"], int(ns[0]))
    dense = np.unique(np.round(np.geomspace(1, ns.max() * 1.5, 40)).astype(int))
    cov, nv = ctx0["cov"], config.task.noise_var
    r_opt = [float(theory.icl_risk(theory.optimal_preconditioner(cov, int(n), nv), cov, int(n), nv))
             for n in dense]
    r_gd = [float(theory.icl_risk(theory.optimal_gd_lr(config.task.d, int(n), nv, cov=cov),
                                  cov, int(n), nv)) for n in dense]
    ax[2].plot(dense, r_opt, "k-", label="optimum Gamma* (icl_risk)")
    ax[2].plot(dense, r_gd, "C3--", label="one GD step, best lr")
    for i, r in enumerate(rows):
      ax[2].plot(np.full(r["num_seeds"], r["n_context"]), r["risk_per_seed"], "o",
                 color="C0", ms=4, alpha=0.6, label="trained LSA, per seed" if i == 0 else None)
    ax[2].plot(ns, [r["risk_opt_same_prompts"] for r in rows], "kx", ms=7,
               label="Gamma* on the same eval prompts")
    ax[2].set(xscale="log", yscale="log", xlabel="context length N", ylabel="risk",
              title=f"risk vs N ({rows[0]['covariance']} inputs)")
    ax[2].legend(fontsize=8)
  skew = next((k for k in ("icl_skewed", "icl_isotropic") if k in data), None)
  if skew is not None:
    ctx, out = data[skew]
    gs = np.asarray(ctx["gamma_star"])
    for s in range(out["gamma"].shape[0]):
      ax[3].plot(gs.ravel(), out["gamma"][s, -1].ravel(), "o", ms=3, alpha=0.5, color="C0")
    lim = [gs.min() - 0.1, gs.max() + 0.1]
    ax[3].plot(lim, lim, "k-", lw=0.8)
    ax[3].set(xlabel="optimal_preconditioner entries", ylabel="trained Gamma entries",
              title=f"{skew[4:]} inputs: every seed, every entry")
  iso = data.get("icl_isotropic") or (data[skew] if skew else None)
  if iso is not None:
    ctx, out = iso
    d = config.task.d
    w_kq, w_pv = out["w_kq"][0], out["w_pv"][0]
    g_hat = np.trace(w_kq[:d, :d]) / d
    # gd_params(d, eta), moved along the symmetry G -> g G, u -> u / g
    con = theory.gd_params(d, float(ctx["eta"]))
    con = {"w_kq": np.asarray(con["w_kq"]) * g_hat, "w_pv": np.asarray(con["w_pv"]) / g_hat}
    for a, (m, title) in zip(axes[1], ((w_kq, "trained W_KQ (seed 0)"),
                                       (w_pv, "trained W_PV (seed 0)"),
                                       (con["w_kq"], "GD construction W_KQ"),
                                       (con["w_pv"], "GD construction W_PV"))):
      v = np.abs(m).max()
      im = a.imshow(m, cmap="RdBu_r", vmin=-v, vmax=v)
      a.set_title(title, fontsize=10)
      a.set_xticks([]), a.set_yticks([])
      fig.colorbar(im, ax=a, fraction=0.046)
  for a in axes.ravel():
    if not a.has_data() and not a.images:
      a.axis("off")
  fig.suptitle("one-layer linear self-attention: simulation vs theory.linear_attention",
               fontsize=11)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
