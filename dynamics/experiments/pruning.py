"""Early pruning by gradient-flow measures, on every model family.

A grid point is one (family `model.family`, prune step `prune.step`, measure
`prune.measure`, fraction `prune.fraction`); the default grid sweeps all
four. Each seed (`init`) trains by full-batch gradient descent on a fixed
dataset (from `task_seed`, so `L` and `||g||^2` are exact) to the prune step,
scores its parameters with `theory.pruning.importance` (or uniform random
scores, `'random'`), removes `fraction` of them (`prune_mask`, lowest scores,
`prune.scope` 'global' or 'layer'), and predicts the change of the loss and of
`||g||^2` to order 1 and 2 (`predicted_change`). The runner then trains the
pruned network (the mask held: its loss is `L(theta * mask)`, so a removed
weight gets no gradient and stays exactly 0) beside the same seed's dense
one, `train.num_steps` steps at each family's `<family>.lr` (`lr_scale`;
`train.lr` multiplies it). The target loss is the dense run's final loss plus
`prune.target_gap` times the distance from its loss at the prune to its final
loss (0.1: 90% of the way the dense run goes).

The report gives per point the changes at the prune and their Taylor
predictions' errors, the time (`t = lr x steps` after the prune) to the
target and the final loss; across the grid the verdicts on Lubana & Dick's
claims (i)-(iii) (`claims`; docs/pruning.md says what each test means). The
measure is read only in `setup`, so every (measure, fraction) of a (family,
prune step) trains in one compiled call.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dynamics import config as cfg
from dynamics import plots
from dynamics.models import deep_linear, linear_attention, relu_net
from dynamics.tasks import icl_regression
from dynamics.tasks.linear_teacher import linear_teacher
from dynamics.tasks.sphere_teacher import sphere_teacher
from theory import pruning

FAMILIES = ("deep_linear", "relu", "lsa")
MEASURES = pruning.MEASURES + ("random",)
_mul = lambda p, m: jax.tree_util.tree_map(lambda a, b: a * b, p, m)


def family(config):
  """`(init(key) -> params, loss(params, *data), data(key))` of `model.family`."""
  name, dt = config.model.family, cfg.float_dtype(config.precision)
  c = config[name]
  if name == "deep_linear":
    sizes = deep_linear.layer_sizes(c.d, c.d, c.width, c.depth)
    return (lambda k: deep_linear.init_random(k, sizes, c.init_scale, dt),
            lambda p, x, y: 0.5 * jnp.mean(jnp.sum((deep_linear.apply(p, x) - y) ** 2, -1)),
            lambda k: tuple(linear_teacher(
                k, d_in=c.d, d_out=c.d, num_samples=c.num_samples, dtype=dt,
                singular_values=jnp.asarray(c.singular_values, dt))[:2]))
  if name == "relu":
    return (lambda k: relu_net.init(k, c.d, c.width, parameterization="standard", bias=False,
                                    dtype=dt),
            lambda p, x, y: 0.5 * jnp.mean(
                (relu_net.apply(p, x, parameterization="standard") - y) ** 2),
            lambda k: sphere_teacher(k, d=c.d, num_samples=c.num_samples,
                                     teacher_width=c.teacher_width, dtype=dt))
  return (lambda k: linear_attention.init(k, c.d, scale=c.init_scale, dtype=dt),
          linear_attention.loss,
          lambda k: tuple(icl_regression.sample(k, c.num_prompts, c.n_context,
                                                jnp.eye(c.d, dtype=dt))))


def setup(config) -> dict:
  """The family's dataset (from `task_seed`) and the measure's index."""
  fam = cfg.one_of(config, "model.family", FAMILIES)
  cfg.integer(config, "task_seed", minimum=0)
  measure = cfg.one_of(config, "prune.measure", MEASURES)
  cfg.one_of(config, "prune.scope", pruning.SCOPES)
  if not cfg.nonnegative(config, "prune.fraction") < 1:
    cfg.fail("prune.fraction", f"must lie in [0, 1), got {config.prune.fraction}.")
  cfg.integer(config, "prune.step", minimum=0)
  if not cfg.positive(config, "prune.target_gap") < 1:
    cfg.fail("prune.target_gap", f"must lie in (0, 1), got {config.prune.target_gap}.")
  cfg.positive(config, f"{fam}.lr")
  for f in {"deep_linear": ("d", "width", "depth", "num_samples"), "lsa": ("d", "n_context",
            "num_prompts"), "relu": ("d", "width", "num_samples", "teacher_width")}[fam]:
    cfg.integer(config, f"{fam}.{f}")
  if fam != "relu":
    cfg.nonnegative(config, f"{fam}.init_scale")
  data = family(config)[2](jax.random.PRNGKey(config.task_seed))
  return {"data": data, "measure": jnp.asarray(MEASURES.index(measure), jnp.int32)}


_sq = lambda tree: sum(jnp.vdot(x, x) for x in jax.tree_util.tree_leaves(tree))


def init(config, key, data) -> dict:
  """Train to the prune step, score, prune, predict the change (module docstring)."""
  fam_init, fam_loss, _ = family(config)
  lr = config[config.model.family].lr
  loss_c = lambda p: fam_loss(p, *data["data"])
  k_init, k_rand = jax.random.split(key)
  params = jax.lax.fori_loop(0, config.prune.step, lambda _, p: jax.tree_util.tree_map(
      lambda a, g: a - lr * g, p, jax.grad(loss_c)(p)), fam_init(k_init))

  leaves, tree = jax.tree_util.tree_flatten(params)
  uniform = lambda: jax.tree_util.tree_unflatten(tree, [  # 'random'
      jax.random.uniform(k, x.shape, x.dtype)
      for k, x in zip(jax.random.split(k_rand, len(leaves)), leaves)])
  scores = [lambda m=m: pruning.importance(loss_c, params, m) for m in pruning.MEASURES]
  mask = pruning.prune_mask(jax.lax.switch(data["measure"], scores + [uniform]),
                            config.prune.fraction, scope=config.prune.scope)
  pruned = _mul(params, mask)
  watch = lambda p: (loss_c(p), _sq(jax.grad(loss_c)(p)))
  (l0, g0), (l1, g1) = watch(params), watch(pruned)
  pred = {o: pruning.predicted_change(loss_c, params, mask, order=o) for o in (1, 2)}
  return {"params": {"pruned": pruned, "dense": params}, "mask": mask,
          "lr_scale": jnp.asarray(lr, l0.dtype), "loss_before": l0, "grad_norm_before": g0,
          "d_loss": l1 - l0, "d_grad_norm": g1 - g0,
          **{f"pred{o}_{q}": p[k] for o, p in pred.items()
             for q, k in (("d_loss", "loss"), ("d_grad_norm", "grad_norm"))}}


def loss(config, state, data, key):
  """The pruned network's loss `L(theta * mask)` plus the dense one's."""
  fam_loss, p = family(config)[1], state["params"]
  return (fam_loss(_mul(p["pruned"], state["mask"]), *data["data"])
          + fam_loss(p["dense"], *data["data"]))


def observe(config, state, data) -> dict:
  fam_loss, p, d = family(config)[1], state["params"], data["data"]
  off = jax.tree_util.tree_map(lambda a, m: jnp.where(m > 0, 0.0, jnp.abs(a)), p["pruned"],
                               state["mask"])
  return {"loss": fam_loss(p["pruned"], *d), "dense_loss": fam_loss(p["dense"], *d),
          "grad_norm": _sq(jax.grad(fam_loss)(p["pruned"], *d)),
          "pruned_weight_sum": sum(jnp.sum(x) for x in jax.tree_util.tree_leaves(off))}


def _median(x) -> float:
  """Median with `nan` (target never reached) counted as infinite."""
  x = np.asarray(x, np.float64)
  return float(np.median(np.where(np.isnan(x), np.inf, x)))


def _point(r) -> dict:
  """Medians over seeds of the time to the target, the changes at the prune
  and the final loss; the Taylor predictions' median relative errors."""
  s, lg, kept = r.traj.start, r.traj.logged, r.traj.kept
  final, start = lg["dense_loss"][kept, -1], s["loss_before"][kept]
  target = final + r.config.prune.target_gap * (start - final)
  t = r.traj.t[kept].mean(0)
  times = [float(t[np.nonzero(l <= g)[0][0]]) if np.any(l <= g) else np.nan
           for l, g in zip(lg["loss"][kept], target)]
  rel = lambda p, q: float(np.median(np.abs(s[p][kept] - s[q][kept])
                                     / np.maximum(np.abs(s[q][kept]), 1e-12)))
  return {"family": r.config.model.family, "prune_step": int(r.config.prune.step),
          "measure": r.config.prune.measure, "fraction": float(r.config.prune.fraction),
          "time_to_target": _median(times), "reached": int(np.isfinite(times).sum()),
          "abs_d_loss": _median(np.abs(s["d_loss"][kept])),
          "d_grad_norm": _median(s["d_grad_norm"][kept]),
          "final_loss": _median(lg["loss"][kept, -1]), "dense_final_loss": _median(final),
          **{f"order{o}_{q}_rel_error": rel(f"pred{o}_{q}", q)
             for o in (1, 2) for q in ("d_loss", "d_grad_norm")},
          "max_pruned_weight": float(np.max(lg["pruned_weight_sum"][kept, -1]))}


def claims(points: list[dict]) -> dict:
  """Each claim per (family, prune step, fraction) setting. (i) magnitude
  reaches the target no later (median time; never counts as infinite) than
  every other measure (`beats_random`: than 'random'); settings where no
  measure reaches it are left out. (ii) loss preservation changes the loss
  least at the prune (median |dL|), and at the earliest prune step reaches
  the target no later than magnitude. (iii) GraSP ('gradient_norm') raises
  ||g||^2 (median d||g||^2 > 0) and ends worse (median final loss) than
  'gradient_norm_abs' and 'magnitude'."""
  out, settings = {"i": [], "ii": [], "iii": []}, {}
  for s in points:
    settings.setdefault((s["family"], s["prune_step"], s["fraction"]), {})[s["measure"]] = s
  first = {f: min(k[1] for k in settings if k[0] == f) for f, _, _ in settings}
  for (fam, step, frac), by in sorted(settings.items()):
    t = {m: s["time_to_target"] for m, s in by.items()}
    where = {"family": fam, "prune_step": step, "fraction": frac}
    reached = any(np.isfinite(v) for v in t.values())
    if "magnitude" in by and reached:
      out["i"].append({**where, "holds": all(t["magnitude"] <= v for v in t.values()),
                       "beats_random": t["magnitude"] <= t.get("random", np.inf),
                       "time_to_target": t})
    if "loss_preservation" in by:
      dl = {m: s["abs_d_loss"] for m, s in by.items()}
      early = step == first[fam] and "magnitude" in by and reached
      fast = t["loss_preservation"] <= t["magnitude"] if early else None
      smallest = all(dl["loss_preservation"] <= v for v in dl.values())
      out["ii"].append({**where, "smallest_abs_d_loss": smallest,
                        "faster_than_magnitude": fast, "holds": smallest and fast is not False})
    if "gradient_norm" in by:
      fl = {m: s["final_loss"] for m, s in by.items()}
      raised = by["gradient_norm"]["d_grad_norm"] > 0
      worse = all(fl["gradient_norm"] > fl[m] for m in ("gradient_norm_abs", "magnitude")
                  if m in fl)
      out["iii"].append({**where, "raises_grad_norm": raised, "ends_worse": worse,
                         "holds": raised and worse})
  verdicts = {}
  for k, rows in out.items():
    held = sum(r["holds"] for r in rows)
    verdicts[k] = ("untested" if not rows else "holds" if held == len(rows) else
                   "fails" if held == 0 else f"holds in {held} of {len(rows)} settings")
  if out["i"]:
    verdicts["i"] += f" (beats random in {sum(r['beats_random'] for r in out['i'])})"
  return {"verdicts": verdicts, "settings": out}


def report(config, results) -> dict:
  """Per point its numbers; the claims' verdicts; the figure: the Taylor
  predictions against the measured changes, and per family the median time
  to the target against the pruned fraction, per measure."""
  rows = [_point(r) if r.traj.kept.any() else {} for r in results]
  done = [r for r in rows if r]
  fams = sorted({r["family"] for r in done}, key=FAMILIES.index)
  rel = lambda s, o, q: np.abs(s[f"pred{o}_{q}"] - s[q]) / np.maximum(np.abs(s[q]), 1e-12)
  errors = {f: {str(fr): {f"order{o}_{q}": float(np.median(np.concatenate([  # every seed
      rel(r.traj.start, o, q) for r in results if r.config.model.family == f
      and r.config.prune.fraction == fr]))) for o in (1, 2) for q in ("d_loss", "d_grad_norm")}
      for fr in sorted({r["fraction"] for r in done})} for f in fams}
  fig, axes = plots.figure(max(2, len(fams)), 2, size=(4.8, 4.0))
  for ax, q in ((axes[0], "d_loss"), (axes[1], "d_grad_norm")):
    meas = np.concatenate([res.traj.start[q] for res in results])
    for o, mk in ((1, "x"), (2, "o")):
      ax.scatter(meas, np.concatenate([res.traj.start[f"pred{o}_{q}"] for res in results]),
                 marker=mk, s=12, alpha=0.5, label=f"order {o}")
    lim = np.nanmax(np.abs(meas)) * 1.2
    ax.plot([-lim, lim], [-lim, lim], "k-", lw=0.8, label="predicted = measured")
    ax.set(xscale="symlog", yscale="symlog", xlabel="measured", ylabel="Taylor prediction",
           title=f"change of {'the loss' if q == 'd_loss' else '||g||^2'} at the prune")
    ax.legend(fontsize=8)
  finite = [r["time_to_target"] for r in done if np.isfinite(r["time_to_target"])]
  top = 1.5 * max(finite) if finite else 1.0  # drawn for "not reached"
  n = len(axes) // 2
  for j, fam in enumerate(fams):
    ax, step0 = axes[n + j], min(r["prune_step"] for r in done if r["family"] == fam)
    for i, m in enumerate(MEASURES):
      pts = sorted((r["fraction"], r["time_to_target"]) for r in done
                   if r["family"] == fam and r["measure"] == m and r["prune_step"] == step0)
      if pts:
        x, y = np.array(pts).T  # offset a little: coinciding measures stay visible
        ax.plot(x + 0.008 * (i - 2), np.where(np.isfinite(y), y, top), "-",
                marker="osD^v"[i], ms=5, color=f"C{i}", label=m)
    ax.axhline(top, color="0.6", ls=":", lw=1)
    ax.set(yscale="log", xlabel="fraction pruned", ylabel="median t to target (top: never)",
           title=f"{fam}, pruned at step {step0}")
    ax.legend(fontsize=7)
  return {"points": rows, "figure": fig, "claims": claims(done), "prediction_errors": errors,
          "max_pruned_weight_after_training":
              max((r["max_pruned_weight"] for r in done), default=None)}
