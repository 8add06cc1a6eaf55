"""Early pruning by gradient-flow measures, on every model family.

A grid point is one (family `model.family`, prune step `prune.step`, measure
`prune.measure`, fraction `prune.fraction`); the default grid sweeps all
four. Each seed trains by full-batch gradient descent on a fixed dataset (so
`L` and `||g||^2` are exact) to the prune step, scores its parameters with
`theory.pruning.importance` (or uniform random scores, `'random'`), removes
`fraction` of them (`prune_mask`, lowest scores, `prune.scope` 'global' or
'layer'), and trains on with the mask held (`dynamics.train.masked`) beside
the same seed trained on dense. The target loss is the dense run's final loss
plus `prune.target_gap` times the distance from its loss at the prune step
to its final loss (0.1: 90% of the way the dense run goes).

Per seed: the loss and `||g||^2` right before and after pruning and their
Taylor predictions of order 1 and 2 (`predicted_change`; `theory` gives the
order-2 one beside the measured change), the loss curves after pruning
(pruned and dense), the time (`t = lr x steps` after the prune) to reach the
target, and the final loss. Measure and fraction are traced, so one compiled
call serves every (measure, fraction) of a (family, prune step). Across the
grid, `claims` gives the verdicts on Lubana & Dick's claims (i)-(iii)
(docs/pruning.md says what each test means).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dynamics import config as cfg
from dynamics import plots
from dynamics import train as engine
from dynamics.models import deep_linear, linear_attention, relu_net
from dynamics.tasks import icl_regression
from dynamics.tasks.linear_teacher import linear_teacher
from dynamics.tasks.sphere_teacher import sphere_teacher
from theory import pruning

FAMILIES = ("deep_linear", "relu", "lsa")
MEASURES = pruning.MEASURES + ("random",)
HPARAMS = {"prune.measure": "measure", "prune.fraction": "fraction"}
TABLE = ("loss", "dense_loss", "grad_norm")


def validate(config) -> None:
  fam = cfg.one_of(config, "model.family", FAMILIES)
  cfg.integer(config, "task_seed", minimum=0)
  cfg.one_of(config, "prune.measure", MEASURES)
  cfg.one_of(config, "prune.scope", pruning.SCOPES)
  fraction = cfg.nonnegative(config, "prune.fraction")
  if fraction >= 1:
    cfg.fail("prune.fraction", f"must lie in [0, 1), got {fraction}.")
  step = cfg.integer(config, "prune.step", minimum=0)
  gap = cfg.positive(config, "prune.target_gap")
  if gap >= 1:
    cfg.fail("prune.target_gap", f"must lie in (0, 1), got {gap}.")
  _, num_steps, log_every = cfg.schedule(config, fam)
  if step >= num_steps or (num_steps - step) % log_every:
    cfg.fail("prune.step", f"({step}) must be below {fam}.num_steps ({num_steps}) "
             f"and leave a multiple of {fam}.log_every ({log_every}) steps.")
  if fam == "deep_linear":
    for f in ("d", "width", "depth", "num_samples"):
      cfg.integer(config, f"deep_linear.{f}")
    cfg.nonnegative(config, "deep_linear.init_scale")
  if fam == "relu":
    for f in ("d", "width", "num_samples", "teacher_width"):
      cfg.integer(config, f"relu.{f}")
  if fam == "lsa":
    for f in ("d", "n_context", "num_prompts"):
      cfg.integer(config, f"lsa.{f}")
    cfg.nonnegative(config, "lsa.init_scale")


def hparams(config) -> dict:
  return {"measure": jnp.asarray(MEASURES.index(config.prune.measure), jnp.int32),
          "fraction": jnp.asarray(config.prune.fraction, cfg.float_dtype(config.precision))}


def log_times(config):
  """Steps after the prune, and `t = lr x` them."""
  c = config[config.model.family]
  step = np.arange(0, c.num_steps - config.prune.step + 1, c.log_every)
  return step, c.lr * step


def family(config, name: str):
  """`(init(key) -> params, loss(params, *data), data)` on a fixed dataset
  drawn from `PRNGKey(config.task_seed)`."""
  dtype = cfg.float_dtype(config.precision)
  key = jax.random.PRNGKey(config.task_seed)
  c = config[name]
  if name == "deep_linear":
    task = linear_teacher(key, d_in=c.d, d_out=c.d, num_samples=c.num_samples,
                          singular_values=jnp.asarray(c.singular_values, dtype), dtype=dtype)
    sizes = deep_linear.layer_sizes(c.d, c.d, c.width, c.depth)
    init = lambda k: deep_linear.init_random(k, sizes, c.init_scale, dtype)
    loss = lambda p, x, y: 0.5 * jnp.mean(jnp.sum((deep_linear.apply(p, x) - y) ** 2, -1))
    return init, loss, (task.x, task.y)
  if name == "relu":
    x, y = sphere_teacher(key, d=c.d, num_samples=c.num_samples,
                          teacher_width=c.teacher_width, dtype=dtype)
    init = lambda k: relu_net.init(k, c.d, c.width, parameterization="standard",
                                   bias=False, dtype=dtype)
    loss = lambda p, x_, y_: 0.5 * jnp.mean(
        (relu_net.apply(p, x_, parameterization="standard") - y_) ** 2)
    return init, loss, (x, y)
  prompts = icl_regression.sample(key, c.num_prompts, c.n_context, jnp.eye(c.d, dtype=dtype))
  init = lambda k: linear_attention.init(k, c.d, scale=c.init_scale, dtype=dtype)
  return init, linear_attention.loss, tuple(prompts)


def _sq(tree):
  return sum(jnp.vdot(l, l) for l in jax.tree_util.tree_leaves(tree))


def make_train(config):
  """`train(key, hp) -> dict` for one family and prune step; `hp` holds the
  traced `'measure'` (index into `MEASURES`) and `'fraction'`."""
  name, prune_step = config.model.family, config.prune.step
  init, loss, data = family(config, name)
  c = config[name]
  remaining = c.num_steps - prune_step
  sgd = engine.make_optimizer("sgd", c.lr)
  lossc = lambda p: loss(p, *data)

  def metrics_fn(p):
    return {"loss": loss(p, *data), "grad_norm": _sq(jax.grad(loss)(p, *data))}

  def scores(params, key, measure):
    def branch(m):
      if m == "random":
        leaves, treedef = jax.tree_util.tree_flatten(params)
        keys = jax.random.split(key, len(leaves))
        return jax.tree_util.tree_unflatten(
            treedef, [jax.random.uniform(k, l.shape, l.dtype) for k, l in zip(keys, leaves)])
      return pruning.importance(lossc, params, m)

    return jax.lax.switch(measure, [lambda m=m: branch(m) for m in MEASURES])

  def train(key, hp):
    k_init, k_data, k_rand = jax.random.split(key, 3)
    params = init(k_init)
    if prune_step:
      state, _ = engine.trajectory(params, loss_fn=loss, data=data, optimizer=sgd,
                                   metrics_fn=lambda p: {}, num_steps=prune_step,
                                   log_every=prune_step, key=k_data)
      params = state.params
    mask = pruning.prune_mask(scores(params, k_rand, hp["measure"]), hp["fraction"],
                              scope=config.prune.scope)
    pruned = jax.tree_util.tree_map(lambda p, m: p * m, params, mask)
    before, after = metrics_fn(params), metrics_fn(pruned)
    pred = {o: pruning.predicted_change(lossc, params, mask, order=o) for o in (1, 2)}
    run = lambda p, opt: engine.trajectory(
        p, loss_fn=loss, data=data, optimizer=opt, metrics_fn=metrics_fn,
        num_steps=remaining, log_every=c.log_every, key=k_data)
    state, logged = run(pruned, engine.masked(sgd, mask))
    _, dense = run(params, sgd)
    still_zero = sum(jnp.sum(jnp.where(m > 0, 0.0, jnp.abs(p)))
                     for p, m in zip(jax.tree_util.tree_leaves(state.params),
                                     jax.tree_util.tree_leaves(mask)))
    return {"loss": logged["loss"], "grad_norm": logged["grad_norm"],
            "dense_loss": dense["loss"],
            "d_loss": after["loss"] - before["loss"],
            "d_grad_norm": after["grad_norm"] - before["grad_norm"],
            "loss_before": before["loss"], "grad_norm_before": before["grad_norm"],
            **{f"pred{o}_{k}": v for o, p in pred.items()
               for k, v in (("d_loss", p["loss"]), ("d_grad_norm", p["grad_norm"]))},
            "pruned_weight_sum": still_zero, "diverged_at": state.diverged_at}

  return train


def theory(config, out: dict) -> dict:
  """The order-2 Taylor prediction of the changes at the prune (computed in
  `train`, which holds the parameters: `pruning.predicted_change`)."""
  return {"d_loss": out["pred2_d_loss"], "d_grad_norm": out["pred2_d_grad_norm"]}


def _first_below(t, loss, target) -> float:
  hit = np.nonzero(loss <= target)[0]
  return float(t[hit[0]]) if hit.size else float("nan")


def _median(x) -> float:
  """Median with `nan` (target never reached) counted as infinite."""
  x = np.asarray(x, np.float64)
  return float(np.median(np.where(np.isnan(x), np.inf, x)))


def summarize(config, out: dict, pred: dict) -> dict:
  """Medians over seeds (a target never reached counts as infinite) of the
  time to the target, the changes at the prune, the final loss; the Taylor
  predictions' median relative errors; per-seed changes for the figure."""
  _, t = log_times(config)
  final, start = out["dense_loss"][:, -1], out["loss_before"]
  target = final + config.prune.target_gap * (start - final)
  times = [_first_below(t, l, tg) for l, tg in zip(out["loss"], target)]
  rel = lambda p, q: float(np.median(np.abs(out[p] - out[q]) / np.maximum(np.abs(out[q]), 1e-12)))
  return {"family": config.model.family, "prune_step": int(config.prune.step),
          "measure": config.prune.measure, "fraction": float(config.prune.fraction),
          "time_to_target": _median(times), "reached": int(np.isfinite(times).sum()),
          "abs_d_loss": _median(np.abs(out["d_loss"])),
          "d_grad_norm": _median(out["d_grad_norm"]),
          "final_loss": _median(out["loss"][:, -1]),
          "dense_final_loss": _median(final),
          **{f"order{o}_{q}_rel_error": rel(f"pred{o}_{q}", q)
             for o in (1, 2) for q in ("d_loss", "d_grad_norm")},
          "per_seed": {k: out[k].tolist() for k in ("d_loss", "pred1_d_loss", "pred2_d_loss",
                                                    "d_grad_norm", "pred1_d_grad_norm",
                                                    "pred2_d_grad_norm")},
          "max_pruned_weight": float(np.max(out["pruned_weight_sum"]))}


def text(config, s: dict) -> str:
  return (f"  time to target {s['time_to_target']:.3g} ({s['reached']} seeds reached it), "
          f"|dL| {s['abs_d_loss']:.3g}, d||g||^2 {s['d_grad_norm']:.3g}, final loss "
          f"{s['final_loss']:.3g}; Taylor o1/o2 rel. error of dL "
          f"{s['order1_d_loss_rel_error']:.2e}/{s['order2_d_loss_rel_error']:.2e}")


def plot(config, out, pred, summary, path) -> None:
  """Loss after pruning (per seed thin, mean solid) beside the dense run's."""
  _, t = log_times(config)
  fig, (ax,) = plots.figure(1)
  plots.trajectories(ax, t, out["loss"], log=True,
                     label=f"{summary['measure']}, {summary['fraction']:.0%} pruned")
  plots.trajectories(ax, t, out["dense_loss"], color="0.5", log=True, label="dense")
  ax.set(xlabel="t after pruning (lr x steps)", ylabel="loss",
         title=f"{summary['family']}, pruned at step {summary['prune_step']}")
  ax.legend(fontsize=8)
  plots.save(fig, path)


def claims(points: list[dict]) -> dict:
  """Each claim tested per (family, prune step, fraction) setting, from the
  points' summaries.

  (i)   magnitude reaches the target no later (median time; never reaching
        counts as infinite) than every other measure (`beats_random`: than
        'random'). Settings where no measure reaches it decide nothing and
        are left out.
  (ii)  loss preservation changes the loss least right after pruning
        (median |dL|), and at the earliest prune step reaches the target no
        later than magnitude.
  (iii) GraSP ('gradient_norm', lowest removed) raises ||g||^2 (median
        d||g||^2 > 0) and ends worse (median final loss) than
        'gradient_norm_abs' and 'magnitude'.
  """
  out = {"i": [], "ii": [], "iii": []}
  settings: dict = {}
  for s in points:
    settings.setdefault((s["family"], s["prune_step"], s["fraction"]), {})[s["measure"]] = s
  first_step = {f: min(k[1] for k in settings if k[0] == f) for f, _, _ in settings}
  for (fam, step, frac), by in sorted(settings.items()):
    t = {m: s["time_to_target"] for m, s in by.items()}
    setting = {"family": fam, "prune_step": step, "fraction": frac}
    reached = any(np.isfinite(v) for v in t.values())
    if "magnitude" in by and reached:
      others = [m for m in by if m != "magnitude"]
      out["i"].append({**setting, "holds": all(t["magnitude"] <= t[m] for m in others),
                       "beats_random": t["magnitude"] <= t.get("random", np.inf),
                       "time_to_target": t})
    if "loss_preservation" in by:
      dl = {m: s["abs_d_loss"] for m, s in by.items()}
      smallest = all(dl["loss_preservation"] <= dl[m] for m in dl)
      early = step == first_step[fam] and "magnitude" in by and reached
      fast = t["loss_preservation"] <= t["magnitude"] if early else None
      out["ii"].append({**setting, "smallest_abs_d_loss": smallest, "abs_d_loss": dl,
                        "faster_than_magnitude": fast, "holds": smallest and fast is not False})
    if "gradient_norm" in by:
      fl = {m: s["final_loss"] for m, s in by.items()}
      raised = by["gradient_norm"]["d_grad_norm"] > 0
      worse = all(fl["gradient_norm"] > fl[m] for m in ("gradient_norm_abs", "magnitude")
                  if m in fl)
      out["iii"].append({**setting, "raises_grad_norm": raised, "ends_worse": worse,
                         "final_loss": fl, "holds": raised and worse})
  verdicts = {}
  for k, rows in out.items():
    held = sum(r["holds"] for r in rows)
    verdicts[k] = ("untested" if not rows else "holds" if held == len(rows) else
                   "fails" if held == 0 else f"holds in {held} of {len(rows)} settings")
    if k == "i" and rows:
      verdicts[k] += f" (beats random in {sum(r['beats_random'] for r in rows)})"
  return {"verdicts": verdicts, "settings": out}


def sweep_summary(config, points) -> dict:
  rows = [{**p.summary, "seeds": p.summary["num_seeds"] - p.summary["diverged_seeds"]}
          for p in points if "time_to_target" in p.summary]
  errors: dict = {}  # over every seed and measure of a (family, fraction)
  for r in rows:
    e = errors.setdefault(r["family"], {}).setdefault(str(r["fraction"]), {})
    for q in ("d_loss", "d_grad_norm"):
      meas = np.asarray(r["per_seed"][q])
      for o in (1, 2):
        rel = np.abs(np.asarray(r["per_seed"][f"pred{o}_{q}"]) - meas) / np.maximum(
            np.abs(meas), 1e-12)
        e.setdefault(f"order{o}_{q}_rel_error", []).extend(rel.tolist())
  return {"claims": claims(rows),
          "prediction_errors": {f: {fr: {k: float(np.median(v)) for k, v in e.items()}
                                    for fr, e in by.items()} for f, by in errors.items()},
          "max_pruned_weight_after_training": max((r["max_pruned_weight"] for r in rows),
                                                  default=None)}


def sweep_text(config, summary: dict) -> str:
  lines = ["Taylor predictions of the change at the prune (median relative error):",
           f"{'family':>12} {'fraction':>8} {'dL o1':>9} {'dL o2':>9} {'dg2 o1':>9} {'dg2 o2':>9}"]
  for fam, by in summary["prediction_errors"].items():
    for frac, e in by.items():
      lines.append(f"{fam:>12} {float(frac):>8.2f} {e['order1_d_loss_rel_error']:>9.2e} "
                   f"{e['order2_d_loss_rel_error']:>9.2e} "
                   f"{e['order1_d_grad_norm_rel_error']:>9.2e} "
                   f"{e['order2_d_grad_norm_rel_error']:>9.2e}")
  lines += ["", "median time to the target loss after pruning (inf: not reached):"]
  for r in summary["claims"]["settings"]["i"]:
    times = " ".join(f"{m}={v:.3g}" for m, v in r["time_to_target"].items())
    lines.append(f"  {r['family']:>11} step {r['prune_step']:>3} frac {r['fraction']:.2f}: {times}")
  lines += ["", "claims (Lubana & Dick 2021), tested per family x prune step x fraction:"]
  names = {"i": "(i)   magnitude converges fastest",
           "ii": "(ii)  loss preservation keeps dL smallest, suits early pruning",
           "iii": "(iii) GraSP raises ||g||^2 and ends worse"}
  for k, v in summary["claims"]["verdicts"].items():
    lines.append(f"  {names[k]}: {v}")
  lines.append(f"pruned weights after training: max |theta| "
               f"{summary['max_pruned_weight_after_training']:.1e}")
  return "\n".join(lines)


def sweep_plot(config, points, summary, path) -> None:
  """Taylor predictions against the measured changes; per family, the
  median time to the target against the pruned fraction, per measure."""
  rows = [p.summary for p in points if "time_to_target" in p.summary]
  fams = sorted({r["family"] for r in rows}, key=FAMILIES.index)
  fig, axes = plots.figure(max(2, len(fams)), 2, size=(4.8, 4.0))
  for ax, q, title in ((axes[0], "d_loss", "change of the loss at the prune"),
                       (axes[1], "d_grad_norm", "change of ||g||^2 at the prune")):
    meas = np.concatenate([r["per_seed"][q] for r in rows])
    for o, mk in ((1, "x"), (2, "o")):
      ax.scatter(meas, np.concatenate([r["per_seed"][f"pred{o}_{q}"] for r in rows]),
                 marker=mk, s=12, alpha=0.5, label=f"order {o}")
    lim = np.nanmax(np.abs(meas)) * 1.2
    ax.plot([-lim, lim], [-lim, lim], "k-", lw=0.8)
    ax.set(xscale="symlog", yscale="symlog", xlabel="measured", ylabel="predicted", title=title)
    ax.legend(fontsize=8)
  finite = [r["time_to_target"] for r in rows if np.isfinite(r["time_to_target"])]
  top = 1.5 * max(finite) if finite else 1.0  # drawn for "not reached"
  n = len(axes) // 2
  for j, fam in enumerate(fams):
    ax = axes[n + j]
    step0 = min(r["prune_step"] for r in rows if r["family"] == fam)
    for i, m in enumerate(MEASURES):
      pts = sorted((r["fraction"], r["time_to_target"]) for r in rows
                   if r["family"] == fam and r["measure"] == m and r["prune_step"] == step0)
      if pts:
        x, y = np.array(pts).T  # offset a little: coinciding measures stay visible
        ax.plot(x + 0.008 * (i - 2), np.where(np.isfinite(y), y, top), "-",
                marker="osD^v"[i], ms=5, color=f"C{i}", label=m)
    ax.axhline(top, color="0.6", ls=":", lw=1)
    ax.set(yscale="log", xlabel="fraction pruned", ylabel="median t to target (top: never)",
           title=f"{fam}, pruned at step {step0}")
    ax.legend(fontsize=7)
  plots.save(fig, path, "pruning: Taylor predictions, and time to recover against fraction")
