"""Deep linear networks on a linear teacher, against their exact gradient flow.

The experiment trains `config.num_seeds` seeds in one compiled call, records
the loss and the strength `u_i = U_i^T W_N...W_1 V_i` of every mode of the
empirical `Sigma_yx`, and sets beside them `theory.deep_linear`:
  * `init.name = 'aligned'`: the exact solution from `u0 = init.u0`;
  * `init.name = 'random'`, depth 1 or 2: the aligned solution from each
    seed's effective initial strength (`models.deep_linear.effective_u0`),
    an approximation that is good for small `init.scale` and wide layers;
  * `init.name = 'random'`, depth >= 3: no prediction (reported as such).
Theory time is `t = lr * step` (docs/conventions.md).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dynamics import config as cfg
from dynamics import metrics
from dynamics import train as engine
from dynamics.models import deep_linear as model
from dynamics.tasks.linear_teacher import linear_teacher
from theory import deep_linear as theory

INITS = ("random", "aligned")
FORMULATIONS = ("auto", "samples", "statistics")

# Config fields that change no shape, and their key in `hparams`: a sweep
# stacks grid points differing only in these into one vmapped call.
HPARAMS = {"train.lr": "lr", "init.scale": "scale", "init.u0": "u0",
           "task.noise_var": "noise_var",
           "task.singular_values": "singular_values"}


def validate(config) -> None:
  """Raises ValueError naming the first bad field; runs before any tracing."""
  cfg.integer(config, "seed", minimum=0)
  cfg.integer(config, "num_seeds")
  cfg.one_of(config, "precision", cfg.PRECISIONS)
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


def hparams(config) -> dict:
  """The shape-preserving hyperparameters, as arrays `train` can be vmapped over."""
  dtype = cfg.float_dtype(config.precision)
  return {key: jnp.asarray(cfg.get(config, field), dtype)
          for field, key in HPARAMS.items()}


class TaskSpectrum(NamedTuple):
  """The parts of a `LinearTeacher` the theory and the figures use."""
  s: np.ndarray               # [K]
  sigma_yx: np.ndarray        # [d_out, d_in]
  sigma_yy_trace: np.ndarray  # []


# outputs of `train` that are not logged trajectories (not masked after a
# seed diverges, even when a dimension equals the number of logged steps)
CONSTANT_OUTPUTS = ("u0_eff", "task_s", "task_sigma_yx", "task_sigma_yy_trace")


def make_task(config, hp: dict):
  t = config.task
  return linear_teacher(
      jax.random.PRNGKey(t.seed), d_in=t.d_in, d_out=t.d_out,
      num_samples=t.num_samples, singular_values=hp["singular_values"],
      noise_var=hp["noise_var"], dtype=cfg.float_dtype(config.precision))


def loss_fn(params, x, y):
  """`L = (1/2P) sum_mu ||y_mu - f(x_mu)||^2` (docs/conventions.md)."""
  return 0.5 * jnp.mean(jnp.sum((y - model.apply(params, x)) ** 2, axis=-1))


def make_segments(config, progress=None):
  """`start(key, hp) -> (state, extras, first)` and
  `advance(state, hp, num_logs) -> (state, logged)`: a run in resumable
  pieces (`extras` are per-seed constants such as `u0_eff`, `first` the
  step-0 metrics). `make_train` joins them into one call."""
  validate(config)
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

  def start(key, hp):
    task = make_task(config, hp)
    init_key, data_key = jax.random.split(key)
    if config.init.name == "aligned":
      u0 = jnp.zeros_like(task.s).at[:num_teacher].set(hp["u0"])
      params = model.init_aligned(init_key, sizes, u0, task.u_modes,
                                  task.v_modes)
    else:
      params = model.init_random(init_key, sizes, hp["scale"], task.x.dtype)
    # what the theory needs of the task, as trained on: `analyze` reads it
    # here instead of drawing the task again (a second, eager compile)
    extras = {"task_s": task.s, "task_sigma_yx": task.sigma_yx,
              "task_sigma_yy_trace": task.sigma_yy_trace}
    if m.depth <= 2:
      extras["u0_eff"] = model.effective_u0(params, task.u_modes, task.v_modes)
    state = engine.init_state(params, optimizer(hp), data_key)
    return state, extras, metrics_fn(task)(params)

  def advance(state, hp, num_logs):
    task = make_task(config, hp)
    loss, data = objective(task)
    return engine.make_advance(
        loss_fn=loss, data=data, optimizer=optimizer(hp),
        metrics_fn=metrics_fn(task), log_every=config.train.log_every,
        batch_size=None if stats else (config.train.batch_size or None),
        progress=progress)(state, num_logs)

  return start, advance


def make_train(config, progress=None):
  """`train(key, hp) -> {'loss': [L], 'u': [L, K], 'u0_eff': [K],
  'diverged_at': [], 'task_s': [K], 'task_sigma_yx': [d_out, d_in],
  'task_sigma_yy_trace': []}` (`u0_eff` for depth <= 2 only; the `task_*`
  entries are the task every seed trained on, the same for every seed)."""
  start, advance = make_segments(config, progress)

  def train(key, hp):
    state, extras, first = start(key, hp)
    state, logged = advance(state, hp,
                            config.train.num_steps // config.train.log_every)
    return {**extras, **engine.join_logs(first, [logged]),
            "diverged_at": state.diverged_at}

  return train


def predict(config, task, out: dict) -> dict | None:
  """Theory for every seed: `{'u': [S, L, K], 'loss': [S, L], 'u0': [S, K]}`."""
  steps = np.arange(0, config.train.num_steps + 1, config.train.log_every)
  t = config.train.lr * steps
  num_seeds, k = out["loss"].shape[0], task.s.shape[0]
  if config.init.name == "aligned":
    u0 = np.zeros(k)
    u0[:len(config.task.singular_values)] = config.init.u0
    u0 = np.broadcast_to(u0, (num_seeds, k))
  elif config.model.depth <= 2:
    u0 = np.asarray(out["u0_eff"], np.float64)
    if config.model.depth == 2:
      # effective_u0 describes a growth phase, which needs s > 0; a direction
      # the teacher leaves untaught (s = 0 up to rounding) starts at
      # O(scale^2) and only shrinks, so its predicted strength is 0. The
      # O(scale^4) loss it leaves is not modelled (docs/deep_linear.md).
      taught = np.asarray(task.s) > 1e-4 * np.max(np.asarray(task.s))
      u0 = np.where(taught, u0, 0.0)
  else:
    return None
  u = jax.vmap(lambda u0_: theory.mode_strength(t, task.s, u0_,
                                                config.model.depth))(u0)
  # tr Sigma_yy - sum s^2 >= 0 (Sigma_yy - Sigma_yx Sigma_yx^T is PSD for
  # whitened inputs); without noise it is 0 and rounds to +-1e-7 in float32.
  irreducible = jnp.maximum(task.sigma_yy_trace - jnp.sum(task.s**2), 0.0)
  loss = 0.5 * jnp.sum((task.s - u) ** 2, axis=-1) + 0.5 * irreducible
  return {"t": t, "u": np.asarray(u), "loss": np.asarray(loss), "u0": u0}


def _nan(reduce, x) -> float:
  """`reduce` over the finite entries (diverged or unfinished seeds are
  counted separately); nan when there are none."""
  x = np.asarray(x, np.float64)
  return float(reduce(x)) if np.any(np.isfinite(x)) else float("nan")


def summarize(config, task, out: dict, pred: dict | None) -> dict:
  """Per teacher mode and for the loss: theory beside simulation."""
  steps = np.arange(0, config.train.num_steps + 1, config.train.log_every)
  t = config.train.lr * steps
  m = len(config.task.singular_values)
  s = np.asarray(task.s, np.float64)
  u_emp = np.moveaxis(np.asarray(out["u"], np.float64), 1, -1)  # [S, K, L]
  t_emp = metrics.time_to_fraction(t, u_emp[:, :m], s[:m])      # [S, M]
  emp_stats = metrics.seed_stats(t_emp)
  summary = {"theory": "none" if pred is None else (
                 "exact (aligned init)" if config.init.name == "aligned"
                 else "aligned solution from each seed's effective u0"),
             "num_seeds": int(config.num_seeds), "modes": []}
  if config.train.optimizer != "sgd":
    summary["note"] = ("theory is gradient flow; with optimizer "
                       f"{config.train.optimizer!r} t = lr * step is not its time.")
  if pred is not None:
    u_cmp = metrics.compare(u_emp[:, :m],
                            np.moveaxis(pred["u"], 1, -1)[:, :m])
    t_th = np.asarray(jax.vmap(lambda u0_: theory.learning_time(
        s[:m], u0_[:m], config.model.depth))(pred["u0"]))  # [S, M]
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
    if pred is not None:
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


def table(summary: dict) -> str:
  """The comparison table printed by `scripts/run.py`."""
  head = (f"{'mode':>4} {'s':>7} {'t_half theory':>14} {'t_half sim':>11} "
          f"{'rel err':>8} {'max|du|/max u':>14} {'t_half seed std':>16}")
  lines = [f"theory: {summary['theory']}  ({summary['num_seeds']} seeds)",
           head, "-" * len(head)]
  for r in summary["modes"]:
    pred = r.get("learning_time_predicted", float("nan"))
    lines.append(
        f"{r['mode']:>4} {r['s']:>7.3g} {pred:>14.4g} "
        f"{r['learning_time_measured']:>11.4g} "
        f"{r.get('learning_time_rel_error_max', float('nan')):>8.2%} "
        f"{r.get('u_max_rel_error_worst', float('nan')):>14.2e} "
        f"{r['learning_time_seed_std']:>16.3g}")
  if "loss" in summary:
    lines.append(f"loss: max relative error {summary['loss']['max_rel_error']:.2e}"
                 f", R^2 >= {summary['loss']['r2']:.6f}")
  if "note" in summary:
    lines.append("note: " + summary["note"])
  return "\n".join(lines)


def plot(config, task, out: dict, pred: dict | None, path: str) -> None:
  """Per-seed (thin) and mean (solid) mode strengths and loss, theory dashed."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  t = config.train.lr * np.arange(0, config.train.num_steps + 1,
                                  config.train.log_every)
  m = len(config.task.singular_values)
  fig, (ax_u, ax_l) = plt.subplots(1, 2, figsize=(11, 4.2))
  colors = plt.cm.viridis(np.linspace(0, 0.85, m))
  u = np.asarray(out["u"])
  for i in range(m):
    ax_u.plot(t, u[:, :, i].T, color=colors[i], alpha=0.15, lw=0.7)
    ax_u.plot(t, u[:, :, i].mean(0), color=colors[i], lw=2,
              label=f"mode {i}, s = {float(task.s[i]):.3g}")
    if pred is not None:
      ax_u.plot(t, pred["u"][:, :, i].mean(0), "--", color="k", lw=1.2)
  ax_u.set(xlabel="t = lr x steps", ylabel="mode strength u_i(t)",
           title=f"depth {config.model.depth}, {config.init.name} init")
  ax_u.legend(fontsize=8, loc="lower right")
  loss = np.asarray(out["loss"])
  ax_l.semilogy(t, loss.T, color="C0", alpha=0.15, lw=0.7)
  ax_l.semilogy(t, loss.mean(0), color="C0", lw=2, label="simulation")
  if pred is not None:
    ax_l.semilogy(t, pred["loss"].mean(0), "--", color="k", lw=1.2,
                  label="theory")
  ax_l.set(xlabel="t = lr x steps", ylabel="training loss", title="loss")
  ax_l.legend(fontsize=8)
  fig.suptitle("simulation (per seed thin, mean solid) vs gradient-flow "
               "theory (dashed)", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def analyze(config, out: dict) -> dict:
  """Theory and comparison for the trained seeds `out` (numpy, `[S, ...]`).

  Returns:
    dict with `arrays` (for `trajectories.npz`; `[S, L, ...]` entries become
    table columns), `summary`, `table`, and `plot(path)`, the figure writer.
  """
  if "task_s" in out:  # the task as trained on (every seed's is the same)
    task = TaskSpectrum(*(np.asarray(out[f"task_{k}"])[0] for k in TaskSpectrum._fields))
  else:
    task = make_task(config, hparams(config))
  pred = predict(config, task, out)
  summary = summarize(config, task, out, pred)
  steps = np.arange(0, config.train.num_steps + 1, config.train.log_every)
  arrays = {"step": steps, "t": config.train.lr * steps,
            "loss": out["loss"], "u": out["u"], "s": np.asarray(task.s),
            "sigma_yx": np.asarray(task.sigma_yx)}
  if pred is not None:
    arrays.update({"loss_pred": pred["loss"], "u_pred": pred["u"],
                   "u0": pred["u0"]})
  return {"arrays": arrays, "summary": summary, "table": table(summary),
          "plot": lambda path: plot(config, task, out, pred, path)}


def run(config, progress=None) -> dict:
  """Trains every seed in one compiled call and analyzes it (see `analyze`)."""
  validate(config)
  train = make_train(config, progress=progress)
  keys = engine.seed_keys(config.seed, config.num_seeds)
  out = engine.run_seeds(train, keys, hparams(config))
  return analyze(config, jax.tree_util.tree_map(np.asarray, out))
