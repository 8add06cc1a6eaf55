"""Deep linear networks on a linear teacher, against their exact gradient flow.

`f(x) = W_N ... W_1 x` learns `y = W_t x (+ noise)` from whitened inputs
(`tasks.linear_teacher`, drawn once from `task.seed` in `setup`). In the basis
of the empirical `Sigma_yx = U diag(s) V^T` a mode's strength `u_i = U_i^T W
V_i` obeys, for a balanced aligned network (Saxe, McClelland & Ganguli 2014),
`du/dt = N u^(2-2/N) (s - u)`: a sigmoid whose half-learning time scales like
`1/s` (times a logarithm of `u0`) and, at a learning rate scaled as `1/N`, does
not grow with depth. A point's seeds log the loss and the teacher modes' `u_i`;
the theory (`theory.deep_linear`, per seed):
  * `init.name = 'aligned'` (the decoupled init with `u_i(0) = init.u0` on
    the teacher's modes): the exact solution;
  * `init.name = 'random'`, depth 1 or 2: the aligned solution from the seed's
    effective initial strength (`models.deep_linear.effective_u0`), good for
    small `init.scale` and wide layers (docs/deep_linear.md);
  * depth >= 3 from a random init, and `'orthogonal'` (`init.scale` times
    random orthogonal layers): none; the measured times are still reported.
Full-batch runs train on the sufficient statistics (`uses_statistics`);
`train.batch_size` draws minibatches from the step's key. The report: every
mode's half-learning time, measured and predicted; over depth alone, `N t_half`.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np

from dynamics import config as cfg
from dynamics import metrics, plots
from dynamics.models import deep_linear as model
from dynamics.tasks.linear_teacher import linear_teacher
from theory import deep_linear as theory_dl

INITS = ("random", "aligned", "orthogonal")
FORMULATIONS = ("auto", "samples", "statistics")


def uses_statistics(config) -> bool:
  """Whether a run trains on `models.deep_linear.statistics` (`stats_loss`: the same loss to
  rounding), not the samples. `train.formulation = 'auto'`: for full-batch runs with more
  samples than inputs, where a step costs `O(d_in sum(fan_in fan_out))`, not `O(P ...)`."""
  form, batch, n = config.train.get("formulation", "auto"), config.train.batch_size, \
      config.task.num_samples
  return form == "statistics" or (form == "auto" and n > config.task.d_in and (
      batch in (0, None) or batch >= n))


def setup(config) -> dict:
  """Checks the config; draws the task: its `K` modes (`s`, `u_modes`,
  `v_modes`), the teacher's `M` (`s_teacher = s[:M]`), `tr Sigma_yy`, and what
  the loss needs (the samples `x`, `y`, or `sigma_xx`, `w_star`, `loss_star`)."""
  depth, width = cfg.integer(config, "model.depth"), cfg.integer(config, "model.width")
  init, _, _ = (cfg.one_of(config, "init.name", INITS), cfg.nonnegative(config, "init.scale"),
                cfg.nonnegative(config, "init.u0"))
  cfg.integer(config, "task.seed", minimum=0)
  d_in, d_out = cfg.integer(config, "task.d_in"), cfg.integer(config, "task.d_out")
  n, k = cfg.integer(config, "task.num_samples"), min(d_in, d_out)
  if n < d_in:
    cfg.fail("task.num_samples", f"({n}) must be >= task.d_in ({d_in}) for the inputs "
             "to be whitened.")
  s = cfg.numbers(config, "task.singular_values", minimum=0.0)
  if len(s) > k:
    cfg.fail("task.singular_values", f"has {len(s)} modes, more than min(d_in, d_out) = {k}.")
  if init == "aligned" and depth > 1 and width < k:
    cfg.fail("model.width", f"({width}) must be >= min(d_in, d_out) = {k} (aligned init).")
  noise_var = cfg.nonnegative(config, "task.noise_var")
  batch = cfg.integer(config, "train.batch_size", minimum=0)
  if batch > n:
    cfg.fail("train.batch_size", f"({batch}) exceeds task.num_samples ({n}); 0: full batch.")
  if "formulation" in config.train and cfg.one_of(config, "train.formulation", FORMULATIONS) \
      == "statistics" and 0 < batch < n:
    cfg.fail("train.formulation", "'statistics' needs full batches (train.batch_size 0).")
  return _task(d_in, d_out, n, cfg.float_dtype(config.precision), uses_statistics(config),
               jax.random.PRNGKey(config.task.seed), np.asarray(s), noise_var)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))  # one compiled call, not ~50 ops
def _task(d_in, d_out, n, dtype, stats, key, s, noise_var) -> dict:
  task = linear_teacher(key, d_in=d_in, d_out=d_out, num_samples=n, singular_values=s,
                        noise_var=noise_var, dtype=dtype)
  data = {"s": task.s, "u_modes": task.u_modes, "v_modes": task.v_modes,
          "s_teacher": task.s[:len(s)], "sigma_yy_trace": task.sigma_yy_trace}
  loss_data = model.statistics(task.x, task.y) if stats else (task.x, task.y)
  return {**data, **dict(zip(("sigma_xx", "w_star", "loss_star") if stats else "xy", loss_data))}


def init(config, key, data) -> dict:
  """The seed's layers; for a random init of depth <= 2 also `u0_eff`, the
  initial strength of the aligned solution it joins."""
  m, t = config.model, config.task
  sizes = model.layer_sizes(t.d_in, t.d_out, m.width, m.depth)
  if config.init.name == "aligned":  # initial_strengths needs no `start` for it
    return {"params": model.init_aligned(key, sizes, initial_strengths(config, data, None),
                                         data["u_modes"], data["v_modes"])}
  draw = model.init_random if config.init.name == "random" else model.init_orthogonal
  params = draw(key, sizes, config.init.scale, data["s"].dtype)
  if config.init.name != "random" or m.depth > 2:
    return {"params": params}
  return {"params": params, "u0_eff": model.effective_u0(params, data["u_modes"], data["v_modes"])}


def loss(config, state, data, key):
  """`L = (1/2P) sum_mu ||y_mu - f(x_mu)||^2` (docs/conventions.md), from the
  statistics or the samples; a minibatch of `train.batch_size` drawn from `key`."""
  p = state["params"]
  if "w_star" in data:
    return model.stats_loss(p, data["sigma_xx"], data["w_star"], data["loss_star"])
  x, y, batch = data["x"], data["y"], config.train.batch_size
  if key is not None and 0 < batch < x.shape[0]:
    idx = jax.random.choice(key, x.shape[0], (batch,), replace=False)
    x, y = x[idx], y[idx]
  return 0.5 * jnp.mean(jnp.sum((y - model.apply(p, x)) ** 2, axis=-1))


def observe(config, state, data) -> dict:
  m = data["s_teacher"].shape[-1]  # the loss and the teacher modes' strengths `u: [M]`
  return {"loss": loss(config, state, data, None), "u": model.mode_strengths(
      state["params"], data["u_modes"][:, :m], data["v_modes"][:, :m])}


def initial_strengths(config, data, start):
  """`[K]`: the `u0` the theory starts the seed from, or None (no theory); for
  the aligned init `init.u0` on the teacher's modes, 0 on the others."""
  if config.init.name == "aligned":
    return jnp.where(jnp.arange(data["s"].shape[-1]) < data["s_teacher"].shape[-1],
                     config.init.u0, 0.0).astype(data["s"].dtype)
  if config.model.depth > 2 or config.init.name == "orthogonal":
    return None
  # depth 2: effective_u0 describes a growth phase, which needs s > 0; an untaught
  # direction (s = 0 to rounding) starts at O(scale^2) and only shrinks: predicted 0,
  # its O(scale^4) loss not modelled (docs/deep_linear.md).
  grows = (data["s"] > 1e-4 * jnp.max(data["s"])) | (config.model.depth == 1)
  return jnp.where(grows, start["u0_eff"], 0.0)


def theory(config, data, start, t) -> dict:
  """Gradient flow from the seed's `initial_strengths`: the teacher modes' `u:
  [L, M]`, the loss `[L]` (every mode) and their half-learning times `[M]`."""
  u0 = initial_strengths(config, data, start)
  if u0 is None:
    return {}
  s, n, m = data["s"], config.model.depth, data["s_teacher"].shape[-1]
  u = theory_dl.mode_strength(t, s, u0, n)
  # tr Sigma_yy - sum s^2 >= 0 is the noise's share; without noise exactly 0 (float32
  # statistics would round it to a false floor of ~1e-6).
  irreducible = 0.0 if config.task.noise_var == 0 else jnp.maximum(
      data["sigma_yy_trace"] - jnp.sum(s**2), 0.0)
  return {"u": u[:, :m], "loss": 0.5 * jnp.sum((s - u) ** 2, axis=-1) + 0.5 * irreducible,
          "learning_time": theory_dl.learning_time(s[:m], u0[:m], n)}


def _point(r) -> dict:
  """Per teacher mode (kept seeds): half-learning times measured (seed mean, 95% CI,
  std) and predicted (its worst seed's error), and `u_i(t)`'s errors."""
  c, traj, pred, s = r.config, r.traj, r.pred, np.asarray(r.data["s_teacher"], np.float64)
  kept = traj.kept  # (a `Result` read from a run directory loads on every access)
  u = np.moveaxis(np.asarray(traj.logged["u"], np.float64)[kept], 1, -1)  # [S, M, L]
  t_emp = np.stack([metrics.time_to_fraction(ti, ui, s) for ti, ui in zip(traj.t[kept], u)])
  emp, nan = metrics.seed_stats(t_emp), lambda f, x: float(f(x) if np.isfinite(x).any() else np.nan)
  row = {"theory": "none" if not pred else "exact (aligned init)" if c.init.name == "aligned"
         else "aligned solution from each seed's effective u0"}
  if c.train.get("optimizer", "sgd") != "sgd":
    row["note"] = f"theory is gradient flow; with {c.train.optimizer!r} t is not its time."
  modes = [{"mode": i, "s": float(s[i]), "learning_time_measured": float(emp["mean"][i]),
            "learning_time_measured_ci": [float(emp["ci_low"][i]), float(emp["ci_high"][i])],
            "learning_time_seed_std": float(emp["std"][i]),
            "seeds_not_reached": int(np.sum(np.isnan(t_emp[:, i])))} for i in range(len(s))]
  if pred:
    cmp = metrics.compare(u, np.moveaxis(pred["u"][kept], 1, -1))
    t_th = pred["learning_time"][kept]
    rel_t = np.abs(t_emp - t_th) / t_th
    for i, mode in enumerate(modes):
      mode.update({"learning_time_predicted": float(np.mean(t_th[:, i])),
                   "learning_time_rel_error_max": nan(np.nanmax, rel_t[:, i]),
                   "u_max_rel_error_mean": nan(np.nanmean, cmp["max_rel_error"][:, i]),
                   "u_max_rel_error_worst": nan(np.nanmax, cmp["max_rel_error"][:, i]),
                   "u_r2_min": nan(np.nanmin, cmp["r2"][:, i])})
    row["learning_time_rel_error_max"] = nan(np.nanmax, rel_t)
    row["loss.mean_rel_error"] = nan(np.nanmax, metrics.relative_error(
        np.asarray(traj.logged["loss"], np.float64)[kept], pred["loss"][kept], reduce="mean"))
  return {**row, "modes": modes}


def depth_table(results, rows) -> list[dict]:
  """Every mode of every point with `N t_half` (steps at lr ~ 1/N, Saxe et al.'s scaling)."""
  return [{"depth": (n := r.config.model.depth), "init": r.config.init.name,
           "mode": m["mode"], "s": m["s"], "depth_time_measured": n * m["learning_time_measured"],
           "depth_time_seed_std": n * m["learning_time_seed_std"],
           "depth_time_ci": [n * x for x in m["learning_time_measured_ci"]],
           "depth_time_predicted": n * m["learning_time_predicted"]
           if "learning_time_predicted" in m else None}
          for r, row in zip(results, rows) for m in row.get("modes", [])]


def report(config, results) -> dict:
  """`_point` per point; the worst half-learning-time error; over depth (and `init.name`)
  alone, `depth_table`. Figure: measured against predicted half-learning times (left), their
  difference per point (middle, seed 95% CI), `N t_half` against depth (right)."""
  rows = [_point(r) if r.summary["diverged_seeds"] < r.summary["num_seeds"] else {}
          for r in results]
  errors = [x for r in rows if np.isfinite(x := r.get("learning_time_rel_error_max", np.nan))]
  out = {"points": rows, "points_with_theory": sum("loss.mean_rel_error" in r for r in rows),
         "learning_time_rel_error_max": max(errors) if errors else None,
         "half_learning_times": [  # every mode of every point, one line each
             {"point": i, **r.fields, "mode": m["mode"], "s": m["s"], "theory":
              m.get("learning_time_predicted"), "simulation": m["learning_time_measured"],
              "rel_error": m.get("learning_time_rel_error_max"), "seed_std":
              m["learning_time_seed_std"]} for i, (r, row) in enumerate(zip(results, rows))
             for m in row.get("modes", [])]}
  if len({r.config.model.depth for r in results}) > 1 and all(
      set(r.fields) <= {"model.depth", "init.name"} for r in results):
    out["depth_table"] = depth_table(results, rows)
  fig, axes = plots.figure(3 if "depth_table" in out else 2, size=(6.0, 4.6))
  ax, ax_e = axes[:2]
  for i, row in enumerate(rows):
    for k, m in enumerate(row.get("modes", []) if "loss.mean_rel_error" in row else []):
      x, y = m["learning_time_predicted"], m["learning_time_measured"]
      e, (lo, hi) = (y / x - 1) * 100, (np.asarray(m["learning_time_measured_ci"]) / x - 1) * 100
      ax.plot(x, y, "o", ms=4, color=f"C{k}", label=None if i else f"mode {k}, s = {m['s']:.3g}")
      ax_e.errorbar(i + 0.08 * (k - 1.5), e, yerr=[[max(e - lo, 0)], [max(hi - e, 0)]], ms=4,
                    fmt="o", color=f"C{k}")
  ax.plot(ax.get_xlim(), ax.get_xlim(), "k--", lw=1, label="measured = predicted")
  ax.set(xscale="log", yscale="log", xlabel="predicted half-learning time",
         ylabel="measured (seed mean)", title="every mode of every grid point")
  ax.legend(fontsize=7), ax_e.axhline(0, color="k", lw=0.8)
  ax_e.set_xticks(range(len(results)), ["\n".join(f"{k.split('.')[-1]}={v}" for k, v in
                                                  r.fields.items()) for r in results],
                  fontsize=6, rotation=90 if len(results) > 8 else 0)
  ax_e.set(ylabel="measured / predicted - 1 (%)", title="per grid point (seed 95% CI)")
  table = out.get("depth_table", [])
  for (c, init), k in itertools.product(enumerate(sorted({r["init"] for r in table})),
                                        sorted({r["mode"] for r in table})):
    pts = sorted((r for r in table if r["init"] == init and r["mode"] == k),
                 key=lambda r: r["depth"])
    d, y = np.array([[r["depth"], r["depth_time_measured"]] for r in pts], np.float64).T
    lo, hi = np.array([r["depth_time_ci"] for r in pts], np.float64).T
    axes[2].errorbar(d * 1.04 ** k, y, yerr=[np.clip(y - lo, 0, 0.9 * y), np.maximum(hi - y, 0)],
                     fmt="osD^v"[k % 5] + "-", ms=4, lw=1, color=f"C{c}",
                     label=f"{init}, s = {pts[0]['s']:.3g}")
    axes[2].plot(d, [r["depth_time_predicted"] or np.nan for r in pts], "k--", lw=0.8)
  if table:
    axes[2].set(xscale="log", yscale="log", xlabel="depth N", ylabel="N t_half (steps at lr ~ "
                "1/N)", title="learning time against depth (seed 95% CI; theory dashed)")
    axes[2].legend(fontsize=6, ncol=len({r["init"] for r in table}))
  fig.suptitle("deep linear networks: half-learning times, simulation vs theory", fontsize=10)
  return {**out, "figure": fig}
