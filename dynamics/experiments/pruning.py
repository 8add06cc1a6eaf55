"""Early pruning by gradient-flow measures, on every model family.

For each family in `config.families` (`'deep_linear'`, `'relu'`, `'lsa'`:
full-batch gradient descent on a fixed dataset, so `L` and `||g||^2` are
exact), each prune step in `config.prune_steps` and every (measure, fraction,
seed): train to the prune step, score the parameters with
`theory.pruning.importance` (or uniform random scores, `'random'`), remove
`fraction` of them (`prune_mask`, lowest scores, `config.scope` 'global' or
'layer'), and train on with
the mask held (`dynamics.train.masked`). A dense run (fraction 0) per seed
sets the target loss: its final loss plus `config.target_gap` times the
distance from its loss at the prune step to its final loss (0.1: 90% of the
way the dense run goes).

Recorded per row: the loss and `||g||^2` right before and after pruning and
their Taylor predictions of order 1 and 2 (`predicted_change`), the loss
curve after pruning, the time (`t = lr x steps` after the prune) to reach the
target, and the final loss. One compiled call per (family, prune step): the
rows (measure x fraction x seed) are vmapped, measure and fraction traced.
The verdicts on Lubana & Dick's claims (i)-(iii) are computed from these
numbers by `claims` (docs/pruning.md says what each test means).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from dynamics import config as cfg
from dynamics import train as engine
from dynamics.models import deep_linear, linear_attention, relu_net
from dynamics.tasks import icl_regression
from dynamics.tasks.linear_teacher import linear_teacher
from dynamics.tasks.sphere_teacher import sphere_teacher
from theory import pruning

FAMILIES = ("deep_linear", "relu", "lsa")
MEASURES = pruning.MEASURES + ("random",)


def validate(config) -> None:
  cfg.integer(config, "seed", minimum=0)
  cfg.integer(config, "num_seeds")
  cfg.one_of(config, "precision", cfg.PRECISIONS)
  cfg.integer(config, "task_seed", minimum=0)
  for field, options in (("families", FAMILIES), ("measures", MEASURES)):
    value = cfg.get(config, field)
    if isinstance(value, str) or not value or any(v not in options for v in value):
      cfg.fail(field, f"must be a non-empty sequence of {options}, got {value!r}.")
  cfg.one_of(config, "scope", pruning.SCOPES)
  fractions = cfg.numbers(config, "fractions", minimum=0.0)
  if any(f >= 1 for f in fractions):
    cfg.fail("fractions", f"must lie in [0, 1), got {fractions}.")
  steps = cfg.numbers(config, "prune_steps", minimum=0)
  if any(not float(s).is_integer() for s in steps):
    cfg.fail("prune_steps", f"must hold integers, got {steps}.")
  gap = cfg.positive(config, "target_gap")
  if gap >= 1:
    cfg.fail("target_gap", f"must lie in (0, 1), got {gap}.")
  for fam in config.families:
    _, num_steps, log_every = cfg.schedule(config, fam)
    for s in steps:
      if s >= num_steps or (num_steps - s) % log_every:
        cfg.fail("prune_steps", f"({int(s)}) must be below {fam}.num_steps ({num_steps}) "
                 f"and leave a multiple of {fam}.log_every ({log_every}) steps.")
  if "deep_linear" in config.families:
    for f in ("d", "width", "depth", "num_samples"):
      cfg.integer(config, f"deep_linear.{f}")
    cfg.nonnegative(config, "deep_linear.init_scale")
  if "relu" in config.families:
    for f in ("d", "width", "num_samples", "teacher_width"):
      cfg.integer(config, f"relu.{f}")
  if "lsa" in config.families:
    for f in ("d", "n_context", "num_prompts"):
      cfg.integer(config, f"lsa.{f}")
    cfg.nonnegative(config, "lsa.init_scale")


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


def make_train(config, name: str, prune_step: int, progress=None):
  """`train(key, hp) -> dict` for one family and prune step; `hp` holds the
  traced `'measure'` (index into `config.measures`) and `'fraction'`."""
  init, loss, data = family(config, name)
  c = config[name]
  measures = tuple(config.measures)
  remaining = c.num_steps - prune_step
  sgd = engine.make_optimizer("sgd", c.lr)

  def metrics_fn(p):
    return {"loss": loss(p, *data), "grad_norm": _sq(jax.grad(loss)(p, *data))}

  def scores(params, key, measure):
    lossc = lambda p: loss(p, *data)

    def branch(m):
      if m == "random":
        leaves, treedef = jax.tree_util.tree_flatten(params)
        keys = jax.random.split(key, len(leaves))
        return jax.tree_util.tree_unflatten(
            treedef, [jax.random.uniform(k, l.shape, l.dtype) for k, l in zip(keys, leaves)])
      return pruning.importance(lossc, params, m)

    return jax.lax.switch(measure, [lambda m=m: branch(m) for m in measures])

  def train(key, hp):
    k_init, k_data, k_rand = jax.random.split(key, 3)
    params = init(k_init)
    if prune_step:
      state, _ = engine.trajectory(params, loss_fn=loss, data=data, optimizer=sgd,
                                   metrics_fn=lambda p: {}, num_steps=prune_step,
                                   log_every=prune_step, key=k_data)
      params = state.params
    lossc = lambda p: loss(p, *data)
    mask = pruning.prune_mask(scores(params, k_rand, hp["measure"]), hp["fraction"],
                              scope=config.scope)
    pruned = jax.tree_util.tree_map(lambda p, m: p * m, params, mask)
    before, after = metrics_fn(params), metrics_fn(pruned)
    pred = {o: pruning.predicted_change(lossc, params, mask, order=o) for o in (1, 2)}
    state, logged = engine.trajectory(
        pruned, loss_fn=loss, data=data, optimizer=engine.masked(sgd, mask),
        metrics_fn=metrics_fn, num_steps=remaining, log_every=c.log_every, key=k_data,
        progress=None if progress is None else (lambda s: progress(prune_step + s)))
    still_zero = sum(jnp.sum(jnp.where(m > 0, 0.0, jnp.abs(p)))
                     for p, m in zip(jax.tree_util.tree_leaves(state.params),
                                     jax.tree_util.tree_leaves(mask)))
    return {"loss": logged["loss"], "grad_norm": logged["grad_norm"],
            "d_loss": after["loss"] - before["loss"],
            "d_grad_norm": after["grad_norm"] - before["grad_norm"],
            "loss_before": before["loss"], "grad_norm_before": before["grad_norm"],
            **{f"pred{o}_{k}": v for o, p in pred.items()
               for k, v in (("d_loss", p["loss"]), ("d_grad_norm", p["grad_norm"]))},
            "pruned_weight_sum": still_zero, "diverged_at": state.diverged_at}

  return train


def total_steps(config) -> int:
  """Steps of every (family, prune step) call, for the progress bar."""
  return sum(config[f].num_steps for f in config.families) * len(config.prune_steps)


def _rows(config):
  """Row hyperparameters: a dense row (fraction 0) then measure x fraction, each
  for every seed; returns (keys, hp, labels)."""
  combos = [("dense", 0, 0.0)] + [(m, i, float(f)) for i, m in enumerate(config.measures)
                                  for f in config.fractions]
  s = config.num_seeds
  keys = jnp.tile(engine.seed_keys(config.seed, s), (len(combos), 1))
  dtype = cfg.float_dtype(config.precision)
  hp = {"measure": jnp.repeat(jnp.array([c[1] for c in combos], jnp.int32), s),
        "fraction": jnp.repeat(jnp.array([c[2] for c in combos], dtype), s)}
  labels = pd.DataFrame({"measure": np.repeat([c[0] for c in combos], s),
                         "fraction": np.repeat([c[2] for c in combos], s),
                         "seed": np.tile(np.arange(s), len(combos))})
  return keys, hp, labels


def run(config, progress=None) -> dict:
  validate(config)
  keys, hp, labels = _rows(config)
  results, curves, done = [], {}, 0
  for name in config.families:
    c = config[name]
    for step in (int(s) for s in config.prune_steps):
      train = make_train(config, name, step, progress=None if progress is None else (
          lambda s, o=done: progress(o + s)))
      out = jax.tree_util.tree_map(np.asarray, engine.run_rows(
          engine.vmap_rows(train, 1), keys, hp))
      done += c.num_steps
      if progress is not None:
        progress(done)
      t = c.lr * np.arange(0, c.num_steps - step + 1, c.log_every)
      table = labels.copy()
      table["family"], table["prune_step"] = name, step
      for k in ("d_loss", "d_grad_norm", "pred1_d_loss", "pred2_d_loss",
                "pred1_d_grad_norm", "pred2_d_grad_norm", "loss_before",
                "grad_norm_before", "pruned_weight_sum"):
        table[k] = out[k].astype(np.float64)
      table["final_loss"] = out["loss"][:, -1]
      table["diverged"] = out["diverged_at"] >= 0
      dense = (table["measure"] == "dense").values
      final, start = out["loss"][dense, -1], out["loss_before"][dense]
      target = np.tile(final + config.target_gap * (start - final),
                       len(table) // config.num_seeds)
      table["target_loss"] = target
      table["time_to_target"] = [
          _first_below(t, l, tg) for l, tg in zip(out["loss"], target)]
      results.append(table)
      curves[(name, step)] = (t, out["loss"])
  frame = pd.concat(results, ignore_index=True)
  summary = summarize(config, frame)
  arrays = {f"{n}_{s}_loss": v[1] for (n, s), v in curves.items()}
  arrays.update({f"{n}_{s}_t": v[0] for (n, s), v in curves.items()})
  return {"arrays": arrays, "summary": summary, "table": text(summary),
          "frame": frame, "plot": lambda path: plot(config, frame, curves, path)}


def _first_below(t, loss, target) -> float:
  hit = np.nonzero(loss <= target)[0]
  return float(t[hit[0]]) if hit.size else float("nan")


def _median(x) -> float:
  """Median with `nan` (target never reached) counted as infinite."""
  x = np.asarray(x, np.float64)
  return float(np.median(np.where(np.isnan(x), np.inf, x)))


def claims(config, frame: pd.DataFrame) -> dict:
  """Each claim tested per (family, prune step, fraction) setting.

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
  first_step = min(int(s) for s in config.prune_steps)
  for (fam, step, frac), g in frame[frame.measure != "dense"].groupby(
      ["family", "prune_step", "fraction"]):
    by = {m: g[g.measure == m] for m in g.measure.unique()}
    t = {m: _median(d.time_to_target) for m, d in by.items()}
    setting = {"family": fam, "prune_step": int(step), "fraction": float(frac)}
    if "magnitude" in by and any(np.isfinite(v) for v in t.values()):
      others = [m for m in by if m != "magnitude"]
      out["i"].append({**setting, "holds": all(t["magnitude"] <= t[m] for m in others),
                       "beats_random": t["magnitude"] <= t.get("random", np.inf),
                       "time_to_target": t})
    if "loss_preservation" in by:
      dl = {m: _median(np.abs(d.d_loss)) for m, d in by.items()}
      smallest = all(dl["loss_preservation"] <= dl[m] for m in dl)
      early = (step == first_step and "magnitude" in by
               and any(np.isfinite(v) for v in t.values()))
      fast = t["loss_preservation"] <= t["magnitude"] if early else None
      out["ii"].append({**setting, "smallest_abs_d_loss": smallest, "abs_d_loss": dl,
                        "faster_than_magnitude": fast,
                        "holds": smallest and (fast is not False)})
    if "gradient_norm" in by:
      fl = {m: _median(d.final_loss) for m, d in by.items()}
      raised = _median(by["gradient_norm"].d_grad_norm) > 0
      worse = all(fl["gradient_norm"] > fl[m] for m in ("gradient_norm_abs", "magnitude")
                  if m in fl)
      out["iii"].append({**setting, "raises_grad_norm": raised, "ends_worse": worse,
                         "final_loss": fl, "holds": raised and worse})
  verdicts = {}
  for k, rows in out.items():
    held = sum(r["holds"] for r in rows)
    verdicts[k] = ("holds" if rows and held == len(rows) else
                   "fails" if held == 0 else f"holds in {held} of {len(rows)} settings")
    if k == "i":
      verdicts[k] += f" (beats random in {sum(r['beats_random'] for r in rows)})"
  return {"verdicts": verdicts, "settings": out}


def summarize(config, frame: pd.DataFrame) -> dict:
  pruned = frame[frame.measure != "dense"]
  pred = {}
  for (fam, frac), g in pruned.groupby(["family", "fraction"]):
    for q in ("d_loss", "d_grad_norm"):
      for o in (1, 2):
        rel = np.abs(g[f"pred{o}_{q}"] - g[q]) / np.maximum(np.abs(g[q]), 1e-12)
        pred.setdefault(fam, {}).setdefault(str(frac), {})[f"order{o}_{q}_rel_error_median"] = \
            float(np.median(rel))
  return {"claims": claims(config, frame), "prediction_errors": pred,
          "num_seeds": int(config.num_seeds), "diverged_rows": int(frame.diverged.sum()),
          "max_pruned_weight_after_training": float(frame.pruned_weight_sum.max())}


def text(summary: dict) -> str:
  lines = ["Taylor predictions of the change at the prune (median relative error):",
           f"{'family':>12} {'fraction':>8} {'dL o1':>9} {'dL o2':>9} {'dg2 o1':>9} {'dg2 o2':>9}"]
  for fam, by in summary["prediction_errors"].items():
    for frac, e in by.items():
      lines.append(f"{fam:>12} {float(frac):>8.2f} {e['order1_d_loss_rel_error_median']:>9.2e} "
                   f"{e['order2_d_loss_rel_error_median']:>9.2e} "
                   f"{e['order1_d_grad_norm_rel_error_median']:>9.2e} "
                   f"{e['order2_d_grad_norm_rel_error_median']:>9.2e}")
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
  lines.append(f"pruned weights after training: max |theta| {summary['max_pruned_weight_after_training']:.1e}"
               f"; diverged rows: {summary['diverged_rows']}")
  return "\n".join(lines)


def plot(config, frame, curves, path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fams = list(config.families)
  fig, axes = plt.subplots(2, max(3, len(fams)), figsize=(5.2 * max(3, len(fams)), 9))
  pruned = frame[frame.measure != "dense"]
  for ax, q, title in ((axes[0, 0], "d_loss", "change of the loss at the prune"),
                       (axes[0, 1], "d_grad_norm", "change of ||g||^2 at the prune")):
    for o, mk in ((1, "x"), (2, "o")):
      ax.scatter(pruned[q], pruned[f"pred{o}_{q}"], marker=mk, s=12, alpha=0.5,
                 label=f"order {o}")
    lim = np.nanmax(np.abs(pruned[q])) * 1.2
    ax.plot([-lim, lim], [-lim, lim], "k-", lw=0.8)
    ax.set(xscale="symlog", yscale="symlog", xlabel="measured", ylabel="predicted",
           title=title)
    ax.legend(fontsize=8)
  frac = sorted(config.fractions)[len(config.fractions) // 2]
  step0 = min(int(s) for s in config.prune_steps)
  ax = axes[0, 2]
  finite = pruned.time_to_target[np.isfinite(pruned.time_to_target)]
  top = 1.1 * finite.max() if len(finite) else 1.0  # bar height for "not reached"
  for j, fam in enumerate(fams):
    g = pruned[(pruned.family == fam) & (pruned.fraction == frac) & (pruned.prune_step == step0)]
    for i, m in enumerate(config.measures):
      v = g[g.measure == m].time_to_target
      reached = np.isfinite(_median(v))
      ax.bar(j + 0.15 * (i - 2), _median(v) if reached else top, 0.14,
             color=f"C{i}", label=m if j == 0 else None,
             alpha=1.0 if reached else 0.3, hatch=None if reached else "//")
  ax.set_xticks(range(len(fams)), fams)
  ax.set(ylabel="median t to target (pale, hatched: not reached)",
         title=f"time to target, fraction {frac}, prune at step {step0}")
  ax.legend(fontsize=7)
  for j, fam in enumerate(fams):
    ax = axes[1, j]
    t, loss = curves[(fam, step0)]
    lab = frame[(frame.family == fam) & (frame.prune_step == step0)]
    for i, m in enumerate(config.measures):
      rows = ((lab.measure == m) & (lab.fraction == frac)).values
      ax.plot(t, np.median(loss[rows], 0), color=f"C{i}", label=m)
    ax.plot(t, np.median(loss[(lab.measure == "dense").values], 0), "k--", label="dense")
    ax.axhline(np.median(lab[lab.measure == "dense"].target_loss), color="gray", lw=0.8, ls=":")
    ax.set(yscale="log", xlabel="t after pruning (lr x steps)", ylabel="loss (median over seeds)",
           title=f"{fam}: {frac:.0%} pruned at step {step0}")
    ax.legend(fontsize=7)
  for a in axes.ravel():
    if not a.has_data():
      a.axis("off")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
