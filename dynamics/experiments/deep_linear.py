"""Deep linear networks on a linear teacher, against their exact gradient flow.

A grid point trains `config.num_seeds` seeds, records the loss and the
strength `u_i = U_i^T W_N...W_1 V_i` of every mode of the empirical
`Sigma_yx`, and sets beside them `theory.deep_linear`:
  * `init.name = 'aligned'`: the exact solution from `u0 = init.u0`;
  * `init.name = 'random'`, depth 1 or 2: the aligned solution from each
    seed's effective initial strength (`models.deep_linear.effective_u0`),
    an approximation that is good for small `init.scale` and wide layers;
  * `init.name = 'random'`, depth >= 3, and `init.name = 'orthogonal'`
    (`init.scale` times random orthogonal layers): no prediction (reported
    as such); the measured half-learning times are still reported.
Theory time is `t = lr * step` (docs/conventions.md). Across a grid, the
figure sets every mode's predicted half-learning time against the measured one.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dynamics import config as cfg
from dynamics import metrics, plots
from dynamics.experiments import logged_times
from dynamics import train as engine
from dynamics.models import deep_linear as model
from dynamics.tasks.linear_teacher import linear_teacher
from theory import deep_linear as theory_dl

INITS = ("random", "aligned", "orthogonal")
FORMULATIONS = ("auto", "samples", "statistics")

# Config fields that change no shape, and their key in `hparams`: a sweep
# stacks grid points differing only in these into one vmapped call.
HPARAMS = {"train.lr": "lr", "init.scale": "scale", "init.u0": "u0",
           "task.noise_var": "noise_var",
           "task.singular_values": "singular_values"}


def validate(config) -> None:
  """Raises ValueError naming the first bad field; runs before any tracing."""
  depth = cfg.integer(config, "model.depth")
  width = cfg.integer(config, "model.width")
  init = cfg.one_of(config, "init.name", INITS)
  cfg.nonnegative(config, "init.scale")
  cfg.nonnegative(config, "init.u0")
  cfg.integer(config, "task.seed", minimum=0)
  d_in = cfg.integer(config, "task.d_in")
  d_out = cfg.integer(config, "task.d_out")
  num_samples = cfg.integer(config, "task.num_samples")
  if num_samples < d_in:
    cfg.fail("task.num_samples", f"({num_samples}) must be >= task.d_in "
             f"({d_in}) for the inputs to be whitened.")
  s = cfg.numbers(config, "task.singular_values", minimum=0.0)
  if len(s) > min(d_in, d_out):
    cfg.fail("task.singular_values", f"has {len(s)} modes, more than "
             f"min(task.d_in, task.d_out) = {min(d_in, d_out)}.")
  if init == "aligned" and depth > 1 and width < min(d_in, d_out):
    cfg.fail("model.width", f"({width}) must be >= min(task.d_in, "
             f"task.d_out) = {min(d_in, d_out)} for the aligned init.")
  cfg.nonnegative(config, "task.noise_var")
  cfg.one_of(config, "train.optimizer", engine.OPTIMIZERS)
  cfg.schedule(config)
  batch = cfg.integer(config, "train.batch_size", minimum=0)
  if batch > num_samples:
    cfg.fail("train.batch_size", f"({batch}) exceeds task.num_samples "
             f"({num_samples}); use 0 for full batch.")
  if "formulation" in config.train:
    form = cfg.one_of(config, "train.formulation", FORMULATIONS)
    if form == "statistics" and 0 < batch < num_samples:
      cfg.fail("train.formulation", "'statistics' needs full-batch training "
               "(train.batch_size 0); minibatches need the samples.")


def uses_statistics(config) -> bool:
  """Whether a run trains on `models.deep_linear.statistics` (`Sigma_xx`,
  `W*`, `L*`) instead of the samples (`models.deep_linear.stats_loss`: the
  same loss to rounding).
  `train.formulation = 'auto'` (the default) picks it for full-batch runs
  with more samples than input dimensions, where a step then costs
  `O(d_in sum(fan_in fan_out))` instead of `O(P sum(fan_in fan_out))`."""
  form = config.train.get("formulation", "auto")
  batch = config.train.batch_size
  full = batch in (0, None) or batch >= config.task.num_samples
  if form == "auto":
    return full and config.task.num_samples > config.task.d_in
  return form == "statistics"


class TaskSpectrum(NamedTuple):
  """The parts of a `LinearTeacher` the theory and the figures use."""
  s: np.ndarray               # [K]
  sigma_yx: np.ndarray        # [d_out, d_in]
  sigma_yy_trace: np.ndarray  # []


# outputs of `train` that are not logged trajectories (not masked after a
# seed diverges, even when a dimension equals the number of logged steps)
CONSTANTS = ("u0_eff", "task_s", "task_sigma_yx", "task_sigma_yy_trace")
TABLE = ("loss", "u")


def make_task(config, hp: dict):
  t = config.task
  return linear_teacher(
      jax.random.PRNGKey(t.seed), d_in=t.d_in, d_out=t.d_out,
      num_samples=t.num_samples, singular_values=hp["singular_values"],
      noise_var=hp["noise_var"], dtype=cfg.float_dtype(config.precision))


def loss_fn(params, x, y):
  """`L = (1/2P) sum_mu ||y_mu - f(x_mu)||^2` (docs/conventions.md)."""
  return 0.5 * jnp.mean(jnp.sum((y - model.apply(params, x)) ** 2, axis=-1))


def make_segments(config):
  """`start(key, hp) -> (state, extras, first)` and
  `advance(state, hp, num_logs) -> (state, logged)`: a run in resumable
  pieces (`extras` are per-seed constants such as `u0_eff`, `first` the
  step-0 metrics); `make_train` is the two in one call."""
  m = config.model
  sizes = model.layer_sizes(config.task.d_in, config.task.d_out, m.width,
                            m.depth)
  num_teacher = len(config.task.singular_values)
  optimizer = lambda hp: engine.make_optimizer(config.train.optimizer, hp["lr"])
  stats = uses_statistics(config)

  def objective(task):  # (loss, data) of `engine.make_advance`
    if stats:
      return model.stats_loss, model.statistics(task.x, task.y)
    return loss_fn, (task.x, task.y)

  def metrics_fn(task):
    loss, data = objective(task)
    return lambda p: {"loss": loss(p, *data),
                      "u": model.mode_strengths(p, task.u_modes, task.v_modes)}

  def start(key, hp, task=None):
    task = make_task(config, hp) if task is None else task
    init_key, data_key = jax.random.split(key)
    if config.init.name == "aligned":
      u0 = jnp.zeros_like(task.s).at[:num_teacher].set(hp["u0"])
      params = model.init_aligned(init_key, sizes, u0, task.u_modes,
                                  task.v_modes)
    else:
      init = model.init_random if config.init.name == "random" else model.init_orthogonal
      params = init(init_key, sizes, hp["scale"], task.x.dtype)
    # what the theory needs of the task, as trained on: `theory` reads it
    # here instead of drawing the task again
    extras = {"task_s": task.s, "task_sigma_yx": task.sigma_yx,
              "task_sigma_yy_trace": task.sigma_yy_trace}
    if m.depth <= 2:
      extras["u0_eff"] = model.effective_u0(params, task.u_modes, task.v_modes)
    state = engine.init_state(params, optimizer(hp), data_key)
    return state, extras, metrics_fn(task)(params)

  def advance(state, hp, num_logs, task=None):
    task = make_task(config, hp) if task is None else task
    loss, data = objective(task)
    return engine.make_advance(
        loss_fn=loss, data=data, optimizer=optimizer(hp),
        metrics_fn=metrics_fn(task), log_every=config.train.log_every,
        batch_size=None if stats else (config.train.batch_size or None))(state, num_logs)

  return start, advance


def make_train(config):
  """`train(key, hp) -> {'loss': [L], 'u': [L, K], 'u0_eff': [K],
  'diverged_at': [], 'task_s': [K], 'task_sigma_yx': [d_out, d_in],
  'task_sigma_yy_trace': []}` (`u0_eff` for depth <= 2 only; the `task_*`
  entries are the task every seed trained on, the same for every seed)."""
  start, advance = make_segments(config)

  def train(key, hp):
    task = make_task(config, hp)  # drawn once, for both pieces
    state, extras, first = start(key, hp, task)
    state, logged = advance(state, hp,
                            config.train.num_steps // config.train.log_every, task)
    return {**extras, **engine.join_logs(first, [logged]),
            "diverged_at": state.diverged_at}

  return train


def _task(out: dict) -> TaskSpectrum:
  """The task as trained on (every seed's is the same)."""
  return TaskSpectrum(*(np.asarray(out[f"task_{k}"], np.float64)[0]
                        for k in TaskSpectrum._fields))


def initial_strengths(config, out: dict) -> np.ndarray | None:
  """`[S, K]`: the `u0` the theory starts each seed from, or None (no theory:
  random init at depth >= 3)."""
  s = _task(out).s
  num_seeds, k = out["loss"].shape[0], s.shape[0]
  if config.init.name == "aligned":
    u0 = np.zeros(k)
    u0[:len(config.task.singular_values)] = config.init.u0
    return np.broadcast_to(u0, (num_seeds, k))
  if config.model.depth > 2 or config.init.name == "orthogonal":
    return None
  u0 = np.asarray(out["u0_eff"], np.float64)
  if config.model.depth == 2:
    # effective_u0 describes a growth phase, which needs s > 0; a direction
    # the teacher leaves untaught (s = 0 up to rounding) starts at
    # O(scale^2) and only shrinks, so its predicted strength is 0. The
    # O(scale^4) loss it leaves is not modelled (docs/deep_linear.md).
    u0 = np.where(s > 1e-4 * np.max(s), u0, 0.0)
  return u0


def theory(config, out: dict) -> dict:
  """Every seed's mode strengths `u: [S, L, K]` and loss `[S, L]` under
  gradient flow from its `initial_strengths`, at `t = lr * step`."""
  u0 = initial_strengths(config, out)
  if u0 is None:
    return {}
  task = _task(out)
  _, t = logged_times(config)
  u = np.asarray(jax.vmap(lambda u0_: theory_dl.mode_strength(
      t, task.s, u0_, config.model.depth))(u0))
  # tr Sigma_yy - sum s^2 >= 0 (Sigma_yy - Sigma_yx Sigma_yx^T is PSD for
  # whitened inputs) is the noise's share. Without noise y = W* x exactly and
  # it is exactly 0; the task's float32 statistics would round it to a false
  # floor of ~1e-6 instead.
  irreducible = 0.0 if config.task.noise_var == 0 else max(
      float(task.sigma_yy_trace - np.sum(task.s**2)), 0.0)
  loss = 0.5 * np.sum((task.s - u) ** 2, axis=-1) + 0.5 * irreducible
  return {"u": u, "loss": loss}


def _nan(reduce, x) -> float:
  """`reduce` over the finite entries; nan when there are none."""
  x = np.asarray(x, np.float64)
  return float(reduce(x)) if np.any(np.isfinite(x)) else float("nan")


def summarize(config, out: dict, pred: dict) -> dict:
  """Per teacher mode and for the loss: theory beside simulation."""
  _, t = logged_times(config)
  m = len(config.task.singular_values)
  s = _task(out).s
  u_emp = np.moveaxis(np.asarray(out["u"], np.float64), 1, -1)  # [S, K, L]
  t_emp = metrics.time_to_fraction(t, u_emp[:, :m], s[:m])      # [S, M]
  emp_stats = metrics.seed_stats(t_emp)
  summary = {"theory": "none" if not pred else (
                 "exact (aligned init)" if config.init.name == "aligned"
                 else "aligned solution from each seed's effective u0"),
             "modes": []}
  if config.train.optimizer != "sgd":
    summary["note"] = ("theory is gradient flow; with optimizer "
                       f"{config.train.optimizer!r} t = lr * step is not its time.")
  if pred:
    u_cmp = metrics.compare(u_emp[:, :m], np.moveaxis(pred["u"], 1, -1)[:, :m])
    u0 = initial_strengths(config, out)
    t_th = np.asarray(jax.vmap(lambda u0_: theory_dl.learning_time(
        s[:m], u0_[:m], config.model.depth))(u0))  # [S, M]
    loss_cmp = metrics.compare(out["loss"], pred["loss"])
    summary["loss"] = {k: _nan(np.nanmin if k == "r2" else np.nanmax, v)
                       for k, v in loss_cmp.items()}
  for i in range(m):
    row = {"mode": i, "s": float(s[i]),
           "learning_time_measured": float(emp_stats["mean"][i]),
           "learning_time_measured_ci": [float(emp_stats["ci_low"][i]),
                                         float(emp_stats["ci_high"][i])],
           "learning_time_seed_std": float(emp_stats["std"][i]),
           "seeds_not_reached": int(np.sum(np.isnan(t_emp[:, i])))}
    if pred:
      rel_t = np.abs(t_emp[:, i] - t_th[:, i]) / t_th[:, i]
      row.update({
          "learning_time_predicted": float(np.mean(t_th[:, i])),
          "learning_time_rel_error_max": _nan(np.nanmax, rel_t),
          "u_max_rel_error_mean": _nan(np.nanmean, u_cmp["max_rel_error"][:, i]),
          "u_max_rel_error_worst": _nan(np.nanmax, u_cmp["max_rel_error"][:, i]),
          "u_r2_min": _nan(np.nanmin, u_cmp["r2"][:, i]),
      })
    summary["modes"].append(row)
  return summary


def text(config, summary: dict) -> str:
  """The comparison table of one grid point."""
  head = (f"{'mode':>4} {'s':>7} {'t_half theory':>14} {'t_half sim':>11} "
          f"{'rel err':>8} {'max|du|/max u':>14} {'t_half seed std':>16}")
  used = summary["num_seeds"] - summary["diverged_seeds"]
  lines = [f"theory: {summary['theory']}  ({used} seeds)", head, "-" * len(head)]
  nan = float("nan")
  for r in summary["modes"]:
    lines.append(
        f"{r['mode']:>4} {r['s']:>7.3g} {r.get('learning_time_predicted', nan):>14.4g} "
        f"{r['learning_time_measured']:>11.4g} "
        f"{r.get('learning_time_rel_error_max', nan):>8.2%} "
        f"{r.get('u_max_rel_error_worst', nan):>14.2e} "
        f"{r['learning_time_seed_std']:>16.3g}")
  if "loss" in summary:
    lines.append(f"loss: max relative error {summary['loss']['max_rel_error']:.2e}"
                 f", R^2 >= {summary['loss']['r2']:.6f}")
  if "note" in summary:
    lines.append("note: " + summary["note"])
  return "\n".join(lines)


def plot(config, out: dict, pred: dict, summary: dict, path: str) -> None:
  """Per-seed (thin) and mean (solid) mode strengths and loss, theory dashed."""
  _, t = logged_times(config)
  fig, (ax_u, ax_l) = plots.figure(2, size=(5.5, 4.2))
  for i, mode in enumerate(summary["modes"]):
    plots.trajectories(ax_u, t, out["u"][:, :, i],
                       pred["u"][:, :, i] if pred else None,
                       color=f"C{i}", label=f"mode {i}, s = {mode['s']:.3g}")
  ax_u.set(xlabel="t = lr x steps", ylabel="mode strength u_i(t)",
           title=f"depth {config.model.depth}, {config.init.name} init, lr {config.train.lr}")
  plots.legend_theory(ax_u, loc="lower right")
  plots.trajectories(ax_l, t, out["loss"], pred.get("loss"), log=True, label="simulation")
  ax_l.set(xlabel="t = lr x steps", ylabel="training loss", title="loss")
  plots.legend_theory(ax_l)
  plots.save(fig, path, "simulation (per seed thin, mean solid) vs gradient-flow "
             "theory (dashed)")


def depth_table(points) -> list[dict]:
  """Every mode of every grid point with its depth-normalised half-learning
  time `N t_half`: the time in steps at a learning rate `lr0 / N`, the
  learning-rate scaling with depth under which Saxe et al. (2014) compare
  depths. Measured (seed mean and std) and, where a theory exists, predicted."""
  rows = []
  for p in points:
    n = p.config.model.depth
    for m in p.summary.get("modes", []):
      pred = m.get("learning_time_predicted")
      rows.append({"depth": n, "init": p.config.init.name, "mode": m["mode"], "s": m["s"],
                   "depth_time_measured": n * m["learning_time_measured"],
                   "depth_time_seed_std": n * m["learning_time_seed_std"],
                   "depth_time_ci": [n * c for c in m["learning_time_measured_ci"]],
                   "depth_time_predicted": None if pred is None else n * pred})
  return rows


def sweep_summary(config, points) -> dict:
  """Across the grid: the worst learning-time error of any mode; with more
  than one depth and no other swept field but `init.name`, `depth_table`."""
  errors = [m["learning_time_rel_error_max"] for p in points
            for m in p.summary.get("modes", []) if m.get("learning_time_rel_error_max")
            is not None and np.isfinite(m["learning_time_rel_error_max"])]
  summary = {"points_with_theory": sum(bool(p.summary.get("loss")) for p in points),
             "learning_time_rel_error_max": max(errors) if errors else None}
  # with depth (and the init) the only swept fields: each row is then one point
  if len({p.config.model.depth for p in points}) > 1 and all(
      set(p.fields) <= {"model.depth", "init.name"} for p in points):
    summary["depth_table"] = depth_table(points)
  return summary


def sweep_text(config, summary: dict) -> str:
  err = summary["learning_time_rel_error_max"]
  lines = [f"across the grid: {summary['points_with_theory']} point(s) with a theory; "
           "worst half-learning-time error " + ("-" if err is None else f"{err:.2%}")]
  if "depth_table" in summary:
    lines.append("depth-normalised half-learning time N t_half (seed mean; theory):")
    for r in summary["depth_table"]:
      pred = r["depth_time_predicted"]
      lines.append(f"  {r['init']:>10} depth {r['depth']:>2} mode {r['mode']} (s = {r['s']:.3g}): "
                   f"{r['depth_time_measured']:.4g} +- {r['depth_time_seed_std']:.2g}"
                   + ("" if pred is None else f"; {pred:.4g}"))
  return "\n".join(lines)


def sweep_plot(config, points, summary: dict, path: str) -> None:
  """Every mode of every grid point: measured half-learning time against the
  predicted one (left), and their relative difference per grid point (middle,
  seed 95% interval as the bar), so that points that agree do not hide; with
  more than one depth, `N t_half` against depth per init and mode (right)."""
  depths = "depth_table" in summary
  fig, axes = plots.figure(3 if depths else 2, size=(6.0, 4.6))
  ax, ax_e = axes[:2]
  if depths:
    _depth_panel(axes[2], summary["depth_table"])
  for i, p in enumerate(points):
    for k, m in enumerate(p.summary.get("modes", [])):
      if m.get("learning_time_predicted") is None:
        continue
      x, y = m["learning_time_predicted"], m["learning_time_measured"]
      lo, hi = (np.asarray(m["learning_time_measured_ci"], np.float64) / x - 1) * 100
      label = f"mode {k}, s = {m['s']:.3g}" if i == 0 else None
      ax.plot(x, y, "o", ms=4, color=f"C{k}", label=label)
      ax_e.errorbar(i + 0.08 * (k - 1.5), (y / x - 1) * 100, ms=4, fmt="o", color=f"C{k}",
                    yerr=[[max((y / x - 1) * 100 - lo, 0)], [max(hi - (y / x - 1) * 100, 0)]])
  lim = ax.get_xlim()
  ax.plot(lim, lim, "k--", lw=1, label="measured = predicted")
  ax.set(xscale="log", yscale="log", xlabel="predicted half-learning time",
         ylabel="measured (seed mean)", title="every mode of every grid point")
  ax.legend(fontsize=7)
  ax_e.axhline(0, color="k", lw=0.8)
  ax_e.set_xticks(range(len(points)), ["\n".join(f"{k.split('.')[-1]}={v}" for k, v in
                                                 p.fields.items()) for p in points],
                  fontsize=6, rotation=90 if len(points) > 8 else 0)
  ax_e.set(ylabel="measured / predicted - 1 (%)", title="per grid point (seed 95% CI)")
  plots.save(fig, path, "deep linear networks: half-learning times, simulation vs theory")


def _depth_panel(ax, table: list[dict]) -> None:
  """`N t_half` against depth: colour by init, marker by mode (bar: the
  seed mean's 95% interval), theory dashed."""
  inits = sorted({r["init"] for r in table})
  for c, init in enumerate(inits):
    for k in sorted({r["mode"] for r in table}):
      rows = sorted((r for r in table if r["init"] == init and r["mode"] == k),
                    key=lambda r: r["depth"])
      d = np.array([r["depth"] for r in rows], np.float64)
      y = np.array([r["depth_time_measured"] for r in rows])
      lo, hi = np.array([r["depth_time_ci"] for r in rows], np.float64).T
      ax.errorbar(d * 1.04 ** k, y, yerr=[np.clip(y - lo, 0, 0.9 * y), np.maximum(hi - y, 0)],
                  fmt="osD^v"[k % 5] + "-", ms=4, lw=1, color=f"C{c}",
                  label=f"{init}, s = {rows[0]['s']:.3g}")
      pred = [(r["depth"], r["depth_time_predicted"]) for r in rows
              if r["depth_time_predicted"] is not None]
      if pred:
        ax.plot(*zip(*pred), "k--", lw=0.8)
  ax.set(xscale="log", yscale="log", xlabel="depth N", ylabel="N t_half (steps at lr ~ 1/N)",
         title="learning time against depth (seed 95% CI; theory dashed)")
  ax.legend(fontsize=6, ncol=len(inits))
