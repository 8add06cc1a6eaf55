"""One-layer linear self-attention learning linear regression in context.

A grid point is one context length `task.n_context` and input law. `setup`
draws from `PRNGKey(task.seed)` the covariance, fixed eval prompts (as the
moments the layer reads) and, for `task.pool_size > 0`, a pool of training
prompts the seeds share (minibatches without replacement); else every step
draws fresh prompts (`loss`; `train.batches = 'shared'`: the same for
every seed). Logged: the loss on the eval prompts, the exact half-risk of
`Gamma = u G^T + g_y c^T` (`loss_gamma`), `Gamma`, `u`, `g`, `u g`, `residual`,
the weights. Theory (`theory.linear_attention`): random init, the endpoint
against `Gamma*` and against one GD step at `optimal_gd_lr` (von Oswald et al.
2023), across N the risk; aligned init (constant lr), `gradient_flow`, across
lr gradient descent's lag `lr sqrt(d) / 2`. `train.lr_scaling = 'curvature'`
steps by `train.lr / a(N)` (`setup`). Seeds within 5% of `Gamma*`'s risk on the
same prompts converged; others sit on a plateau (docs/linear_attention.md).
"""

import jax
import jax.numpy as jnp
import numpy as np

from dynamics import config as cfg
from dynamics import metrics, plots
from dynamics.models import linear_attention as model
from dynamics.tasks import icl_regression as task
from theory import linear_attention as theory_la

CONVERGED = 0.05
SAMPLINGS = ("auto", "tokens", "moments")


def _check(config) -> None:
  form = cfg.one_of(config, "model.form", model.FORMS)
  init = cfg.one_of(config, "init.name", model.INITS)
  for f in ("model.init_scale", "init.u0", "init.g0", "task.noise_var"):
    cfg.nonnegative(config, f)
  d, n, _, batch = (cfg.integer(config, f) for f in (
      "task.d", "task.n_context", "eval.num_prompts", "train.batch_size"))
  cfg.integer(config, "task.seed", minimum=0), cfg.positive(config, "task.input_range")
  cov = cfg.one_of(config, "task.covariance", task.COVARIANCES)
  inputs = cfg.one_of(config, "task.inputs", task.INPUTS)
  cfg.one_of(config, "train.lr_scaling", ("curvature", "none"))
  pool = cfg.integer(config, "task.pool_size", minimum=0)
  moments = cfg.one_of(config, "task.sampling", SAMPLINGS) == "moments"
  for field, bad, why in (
      ("task.condition_number", cfg.positive(config, "task.condition_number") < 1,
       f"must be >= 1, got {config.task.condition_number!r}."),
      ("task.sampling", moments and (inputs != "gaussian" or n < d + 1 or pool), "'moments' "
       "needs Gaussian inputs (task.inputs), task.n_context >= task.d + 1 and fresh prompts "
       "(task.pool_size 0); 'auto' falls back to tokens."),
      ("task.pool_size", 0 < pool < batch, f"({pool}) must be 0 (fresh prompts every step) "
       f"or >= train.batch_size ({batch})."),
      ("task.inputs", inputs == "uniform" and cov != "isotropic", "'uniform' (von Oswald et "
       "al.'s U(-r/2, r/2)^d, r = task.input_range) needs task.covariance 'isotropic'."),
      ("model.form", init == "aligned" and form != "merged", "must be 'merged' for init.name "
       "'aligned' (the aligned init is defined on merged parameters)."),
      ("train.decay", init == "aligned" and config.train.get("decay") == "cosine", "must be "
       "'constant' for init.name 'aligned': its theory is gradient flow at t = lr x step."),
      ("task.inputs", init == "aligned" and inputs != "gaussian", "must be 'gaussian' for "
       "init.name 'aligned' (its gradient flow is solved for Gaussian inputs).")):
    if bad:
      cfg.fail(field, why)


def setup(config) -> dict:
  """Covariance, eval prompts, pool, kurtosis `kappa`, `lr_scale = 1 / a(N)` (the risk's
  curvature along `I`, `a(N) = s^2 (s (N + kappa - 2 + d) + noise_var) / N`, `s` the variance)."""
  _check(config)
  t, dtype = config.task, cfg.float_dtype(config.precision)
  s, kap = task.input_variance(t.inputs, t.input_range), task.KURTOSIS[t.inputs]
  k_cov, k_eval = jax.random.split(jax.random.PRNGKey(t.seed))
  cov = s * task.covariance(k_cov, t.d, t.covariance, t.condition_number, dtype)
  cov_sqrt = task.sqrtm(cov)
  k_eval = jax.random.fold_in(jax.random.fold_in(k_eval, t.n_context),
                              task.COVARIANCES.index(t.covariance))
  prompts = lambda k, b: task.to_moments(task.sample(k, b, t.n_context, cov_sqrt, t.noise_var,
                                                     t.inputs))._asdict()
  a = s**2 * (s * (t.n_context + kap - 2 + t.d) + t.noise_var) / t.n_context
  data = {"cov": cov, "cov_sqrt": cov_sqrt, "kurtosis": jnp.asarray(kap, dtype),
          "lr_scale": jnp.asarray(1 / a if config.train.lr_scaling == "curvature" else 1, dtype),
          "eval": prompts(k_eval, config.eval.num_prompts)}
  if t.pool_size:
    data["pool"] = prompts(jax.random.fold_in(k_eval, 1), t.pool_size)
  return data


def uses_moments(config) -> bool:
  """Whether fresh prompts are drawn as moments (`task.sampling`; 'auto': for
  Gaussian inputs with `N >= d + 1`, the same law from fewer random numbers)."""
  if (t := config.task).sampling != "auto":
    return t.sampling == "moments"
  return t.inputs == "gaussian" and t.n_context >= t.d + 1 and not t.pool_size


def init(config, key, data) -> dict:
  m, i = config.model, config.init
  return {"params": model.init(key, config.task.d, form=m.form, name=i.name, scale=m.init_scale,
                               u0=i.u0, g0=i.g0, dtype=data["cov"].dtype),
          "lr_scale": data["lr_scale"]}


def loss(config, state, data, key):
  p, t, b = state["params"], config.task, config.train.batch_size
  if key is None or "pool" in data:  # the eval prompts, or a minibatch of the pool
    m = data["eval" if key is None else "pool"]
    if key is not None and b < (n := m["y_q"].shape[0]):
      m = jax.tree_util.tree_map(lambda a: a[jax.random.choice(key, n, (b,), replace=False)], m)
    return model.loss_moments(p, m["e"], m["x_q"], m["y_q"])
  if uses_moments(config):  # fresh prompts as their moments, or as tokens
    return model.loss_moments(p, *task.sample_moments(key, b, t.n_context, data["cov_sqrt"],
                                                      t.noise_var))
  return model.loss(p, *task.sample(key, b, t.n_context, data["cov_sqrt"], t.noise_var, t.inputs))


def observe(config, state, data) -> dict:
  q, d, ev = model.merged(state["params"]), config.task.d, data["eval"]
  gamma = model.effective_gamma(q)
  y_hat = model.predict_moments(q, ev["e"], ev["x_q"])
  y_gamma = jnp.einsum("bd,de,be->b", ev["x_q"], gamma, ev["e"][:, :d, d])
  risk = theory_la.icl_risk(gamma, data["cov"], int(config.task.n_context),  # int(): the planner
                            config.task.noise_var, kurtosis=data["kurtosis"])  # sees N read
  return {"loss": 0.5 * jnp.mean((y_hat - ev["y_q"]) ** 2), "loss_gamma": 0.5 * risk,
          "gamma": gamma, "u": q["w_pv"][d, d], "g": jnp.trace(q["w_kq"][:d, :d]) / d,
          "ug": jnp.trace(gamma) / d, "w_kq": q["w_kq"], "w_pv": q["w_pv"],
          "residual": jnp.linalg.norm(y_hat - y_gamma) / jnp.linalg.norm(y_hat)}


def theory(config, data, start, t) -> dict:
  """`Gamma*`, the best GD rate and their risks; for the aligned init also
  `gradient_flow` at the seed's times (`gamma_flow`, `gamma_end` its last)."""
  (d, n, nv), cov = (config.task[k] for k in ("d", "n_context", "noise_var")), data["cov"]
  gs = theory_la.optimal_preconditioner(cov, n, nv, kurtosis=data["kurtosis"])
  eta = theory_la.optimal_gd_lr(d, n, nv, cov=cov, kurtosis=data["kurtosis"])
  risk = lambda g: theory_la.icl_risk(g, cov, n, nv, kurtosis=data["kurtosis"])
  out = {"gamma_star": gs, "eta": eta, "risk_opt": risk(gs), "risk_gd": risk(eta)}
  if config.init.name != "aligned":
    return out
  th = theory_la.gradient_flow(np.asarray(t), d, n, config.init.u0, config.init.g0, nv, cov=(
      None if config.task.covariance == "isotropic" else np.asarray(cov)))
  return {**out, "loss": th["loss"], "loss_gamma": th["loss"], "u": th["u"],
          "g": th["G"].trace(0, 1, 2) / d, "ug": th["gamma"].trace(0, 1, 2) / d,
          "gamma_end": th["gamma"][-1], "gamma_flow": th["gamma"]}


def compare_to(data, traj, gamma) -> dict:
  """Every seed's layer at the last logged step against `x_q^T gamma h` on the
  eval prompts (`model.versus_gamma`, `[S]` each) and `gamma`'s Monte-Carlo risk there."""
  ev, lg = {k: np.asarray(v) for k, v in data["eval"].items()}, traj.logged
  w = {k: jnp.asarray(lg[k][:, -1]) for k in ("w_kq", "w_pv")}
  out = jax.vmap(model.versus_gamma, (0, None, None, None))(w, ev["e"], ev["x_q"],
                                                            jnp.asarray(gamma, ev["e"].dtype))
  y_ref = np.einsum("bd,de,be->b", ev["x_q"], gamma, ev["e"][:, :-1, -1], dtype=np.float64)
  return {**{k: np.asarray(v, np.float64) for k, v in out.items()},
          "risk_mc": float(np.mean((y_ref - ev["y_q"]) ** 2))}


def _point(r) -> dict:
  c, data, traj, pred = r.config, r.data, r.traj, r.pred  # a run directory reads each access
  if not (kept := traj.kept).any():
    return {}
  _stats = lambda x: {k: float(metrics.seed_stats(x)[k]) for k in ("mean", "std")} \
      if len(x) else None
  lg = {k: np.asarray(v, np.float64)[kept] for k, v in traj.logged.items()}
  pr = {k: np.asarray(v)[kept] for k, v in pred.items()}
  gs, gamma = pr["gamma_star"][0], lg["gamma"][:, -1]
  dist = lambda g, ref: np.linalg.norm(g - ref, axis=(-2, -1)) / np.linalg.norm(ref)
  out = {"covariance": c.task.covariance if c.task.inputs == "gaussian" else
         f"uniform U(+-{c.task.input_range / 2:g})", "n_context": int(c.task.n_context),
         "lr": float(c.train.lr * traj.start["lr_scale"][0])}
  if c.init.name == "aligned":
    t, th = traj.t[kept][0], pr["gamma_end"][0]
    return {**out, "u0": float(c.init.u0), "g0": float(c.init.g0),
            "batch_size": int(c.train.batch_size),
            "t_half_theory": float(metrics.time_to_fraction(t, pr["ug"][0], pr["ug"][0, -1])),
            "t_half_measured": _stats(metrics.time_to_fraction(t, lg["ug"], pr["ug"][:, -1])),
            "gamma_final_rel_error": float(np.max(dist(gamma, th))),
            "gamma_star_rel_error": float(np.max(dist(gamma, gs))),
            "gamma_star_rel_error_theory": float(dist(th, gs))}
  opt, gd = compare_to(data, traj, gs), compare_to(data, traj, pr["eta"][0] * np.eye(c.task.d))
  risk, err = 2 * lg["loss"][:, -1], dist(gamma, gs)
  excess = (risk - opt["risk_mc"]) / pr["risk_opt"][0]
  ok = excess < CONVERGED
  return {**out, "risk_measured": _stats(risk), "risk_median": float(np.median(risk)),
          "risk_per_seed": risk.tolist(), "converged_seeds": int(ok.sum()),
          "risk_converged": _stats(risk[ok]), "gamma_rel_error_converged": _stats(err[ok]),
          "risk_opt_theory": float(pr["risk_opt"][0]), "risk_opt_same_prompts": opt["risk_mc"],
          "risk_gd_theory": float(pr["risk_gd"][0]), "excess_risk_rel": _stats(excess),
          "gamma_rel_error": _stats(err), "residual": _stats(lg["residual"][:, -1]),
          "optimal_gd_lr": float(pr["eta"][0]), "trace_gamma_over_d": _stats(lg["ug"][:, -1]),
          **{name: {k: _stats(v[k][kept]) for k in ("pred_rel_diff", "sens_cos")}
             for name, v in (("vs_gd", gd), ("vs_opt", opt))}}


def report(config, results) -> dict:
  """Per point the endpoint or the flow; across the grid risk against N, Gamma* along t."""
  rows = [_point(r) for r in results]  # gradient descent's t_half lag: measured, lr sqrt(d)/2
  lag_of = lambda r, s: (s["t_half_measured"]["mean"] / s["t_half_theory"] - 1,
                         s["lr"] * r.config.task.d**0.5 / 2)
  risk_vs_n, lag, first, flows = {}, [], {}, []
  for r, s in zip(results, rows):
    if "risk_median" in s:
      first.setdefault(s["covariance"], r)
      risk_vs_n.setdefault(s["covariance"], []).append(
          {k: s[k] for k in ("n_context", "risk_median", "risk_opt_theory", "vs_gd",
                             "risk_opt_same_prompts", "risk_gd_theory", "converged_seeds")}
          | {"seeds": r.summary["num_seeds"] - r.summary["diverged_seeds"],
             "risk_per_seed": s["risk_per_seed"]})
    elif "t_half_theory" in s:
      flows.append((r, s))
      lag.append({"lr": s["lr"], "covariance": s["covariance"],
                  **dict(zip(("t_half_rel_error", "predicted"), lag_of(r, s)))})
  for v in (*risk_vs_n.values(), lag):  # by N, the lag by lr
    v.sort(key=lambda x: x.get("n_context", x.get("lr")))
  fig, axes = plots.figure(max(len(risk_vs_n) + bool(flows), 1))
  for ax, (label, pts) in zip(axes, risk_vs_n.items()):
    c, data = first[label].config, first[label].data
    ns = np.array([p["n_context"] for p in pts])
    dense = np.unique(np.round(np.geomspace(1, ns.max() * 1.5, 40)).astype(int))
    cn, th = c.copy_and_resolve_references(), []
    for n in dense:  # the theory's optimum and best GD step at every N
      cn.task.n_context = int(n)
      th.append(theory(cn, data, {}, None))
    ax.plot(dense, [float(x["risk_opt"]) for x in th], "k-", label="optimum Gamma* (icl_risk)")
    ax.plot(dense, [float(x["risk_gd"]) for x in th], "C3--", label="one GD step, best lr")
    ax.plot(ns, [p["risk_opt_same_prompts"] for p in pts], "kx", ms=9, zorder=1,
            label="Gamma* on the same eval prompts")
    for i, p in enumerate(pts):  # hollow, on top: seeds at the optimum stay visible
      ax.plot(np.full(len(p["risk_per_seed"]), p["n_context"]), p["risk_per_seed"], "o",
              mfc="none", color="C0", ms=5, zorder=3,
              label="trained LSA, per seed" if i == 0 else None)
    ax.text(0.98, 0.98, "trained vs one GD step:\n" + "\n".join(f"N = {p['n_context']}: "
        f"outputs {100 * p['vs_gd']['pred_rel_diff']['mean']:.2g}% apart, cosine "
        f"{p['vs_gd']['sens_cos']['mean']:.4f}" for p in pts), transform=ax.transAxes,
        ha="right", va="top", fontsize=7)
    ax.set(xscale="log", yscale="log", xlabel="context length N", ylabel="risk",
           title=f"risk vs N ({label} inputs)")
    ax.legend(fontsize=8, loc="lower left")
  for i, (r, s) in enumerate(flows):  # the distance to Gamma* along training and the flow
    ax, gs, lag_i = axes[len(risk_vs_n)], np.asarray(r.pred["gamma_star"])[0], lag_of(r, s)
    dist = lambda g: np.linalg.norm(g - gs, axis=(-2, -1)) / np.linalg.norm(gs)
    g = dist(np.asarray(r.traj.logged["gamma"], np.float64))
    ax.plot(r.traj.t[0], g.T, f"C{i}-", label=[f"trained, {s['covariance']}, lr {s['lr']:.3g}"
            f" (t_half lag {100 * lag_i[0]:.2g}%; lr sqrt(d)/2: {100 * lag_i[1]:.2g}%)"]
            + ["_"] * (len(g) - 1))
    ax.plot(r.traj.t[0], dist(np.asarray(r.pred["gamma_flow"])[0]), f"C{i}:", lw=2, label="flow")
    ax.set(yscale="log", ylim=(1e-8, 1e5), xlabel="t = lr x steps",
           ylabel="||Gamma - Gamma*|| / ||Gamma*||", title="aligned init: distance to Gamma*")
    ax.legend(fontsize=7, loc="upper right")
  fig.suptitle("linear self-attention vs theory.linear_attention", fontsize=10)
  return {"points": rows, "figure": fig, "risk_vs_n": risk_vs_n, "flow_lag": lag}
