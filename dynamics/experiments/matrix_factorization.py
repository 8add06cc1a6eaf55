"""Deep matrix factorization for matrix completion (Arora, Cohen, Hu & Luo 2019).

A grid point is one depth `model.depth` and one number of observed entries
`task.num_observed`. The target is a `d x d` matrix `M = U diag(s*) V^T` of
rank `task.rank` with equal singular values `s* = d / sqrt(rank)` (so
`||M||_F = d`, entries of order 1), drawn from `task.seed` with the order in
which its entries are observed; a point observes the first `num_observed`
(nested sets: more observations add entries). The model is the product
`W = W_N ... W_1` of square factors (`dynamics.models.deep_linear`), from the
balanced init `W_l = init.scale * Q_l`, `Q_l` random orthogonal (per seed),
trained by full-batch gradient descent on

    L(W) = 1/(2m) sum_{(i,j) observed} (W_ij - M_ij)^2,     m = num_observed

(the loss of docs/conventions.md with the observed entries as samples). The
step is `train.lr` times `m / (N s*^(2 - 2/N))` (`step_size`): the product's
curvature along a learned mode of strength `s*`, so one `train.lr` suits
every depth and `m`; time is `t = step_size x steps`.

Logged: the loss, the reconstruction error `||W - M||_F / ||M||_F` over all
entries, the singular values of `W`, and two velocities of each: the formula
`theory.deep_linear.singular_value_velocity` (the flow's `d sigma_r / dt` for a
balanced factorization) and the actual derivative of `sigma_r(W)` along the
gradient of the factors (`jax.jvp` through the SVD). The summary sets them
side by side over the run, and across points the sweep gives the error
against `m` per depth: deeper factorizations recover `M` from fewer entries.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dynamics import config as cfg
from dynamics import make_optimizer, metrics, plots, trajectory
from dynamics.experiments import logged_times
from dynamics.models import deep_linear as model
from theory import deep_linear as theory_dl

HPARAMS = {"train.lr": "lr", "task.num_observed": "num_observed", "init.scale": "scale"}
TABLE = ("loss", "error")


def validate(config) -> None:
  cfg.integer(config, "model.depth")
  d = cfg.integer(config, "task.d")
  rank = cfg.integer(config, "task.rank")
  if rank > d:
    cfg.fail("task.rank", f"({rank}) must be at most task.d ({d}).")
  m = cfg.integer(config, "task.num_observed")
  if m > d * d:
    cfg.fail("task.num_observed", f"({m}) must be at most task.d^2 ({d * d}).")
  cfg.integer(config, "task.seed", minimum=0)
  cfg.positive(config, "init.scale")
  cfg.positive(config, "train.lr")
  cfg.schedule(config)


def target_strength(config) -> float:
  """`s* = d / sqrt(rank)`, every non-zero singular value of `M`."""
  return config.task.d / np.sqrt(config.task.rank)


def step_size(config) -> float:
  """`train.lr * m / (N s*^(2 - 2/N))` (module docstring)."""
  n = config.model.depth
  return float(config.train.lr * config.task.num_observed
               / (n * target_strength(config) ** (2 - 2 / n)))


def hparams(config) -> dict:
  dtype = cfg.float_dtype(config.precision)
  return {"lr": jnp.asarray(step_size(config), dtype),
          "num_observed": jnp.asarray(config.task.num_observed, dtype),
          "scale": jnp.asarray(config.init.scale, dtype)}


def log_times(config):
  step, _ = logged_times(config)
  return step, step_size(config) * step


def task(config, num_observed, dtype):
  """`(M, mask)`: the target and the 0/1 mask of its first `num_observed`
  entries in the task's order (`num_observed` may be traced)."""
  t = config.task
  k_u, k_v, k_order = jax.random.split(jax.random.PRNGKey(t.seed), 3)
  u, _ = jnp.linalg.qr(jax.random.normal(k_u, (t.d, t.rank), dtype))
  v, _ = jnp.linalg.qr(jax.random.normal(k_v, (t.d, t.rank), dtype))
  target = (u * target_strength(config)) @ v.T
  order = jax.random.permutation(k_order, t.d * t.d)
  rank_of = jnp.zeros(t.d * t.d, dtype).at[order].set(jnp.arange(t.d * t.d, dtype=dtype))
  return target, (rank_of < num_observed).astype(dtype).reshape(t.d, t.d)


def make_train(config):
  n, d = config.model.depth, config.task.d
  dtype = cfg.float_dtype(config.precision)
  draw = jax.nn.initializers.orthogonal()

  def train(key, hp):
    target, mask = task(config, hp["num_observed"], dtype)
    m = hp["num_observed"]
    objective = lambda p, mask_, target_: 0.5 * jnp.sum(
        mask_ * (model.end_to_end(p) - target_) ** 2) / m
    loss = lambda p: objective(p, mask, target)
    params = [hp["scale"] * draw(k, (d, d), dtype) for k in jax.random.split(key, n)]

    def metrics_fn(p):
      w = model.end_to_end(p)
      u, s, vt = jnp.linalg.svd(w)
      grad_w = mask * (w - target) / m
      proj = jnp.einsum("ir,ij,rj->r", u, grad_w, vt)
      g = jax.grad(loss)(p)
      svals = lambda e: jnp.linalg.svd(model.end_to_end(
          [a - e * b for a, b in zip(p, g)]), compute_uv=False)
      _, actual = jax.jvp(svals, (jnp.zeros((), dtype),), (jnp.ones((), dtype),))
      return {"loss": loss(p), "error": jnp.linalg.norm(w - target) / jnp.linalg.norm(target),
              "sigma": s, "velocity": actual,
              "velocity_formula": theory_dl.singular_value_velocity(s, proj, n)}

    state, logged = trajectory(
        params, loss_fn=objective, data=(mask, target),
        optimizer=make_optimizer("sgd", hp["lr"]),
        metrics_fn=metrics_fn, num_steps=config.train.num_steps,
        log_every=config.train.log_every)
    return {**logged, "diverged_at": state.diverged_at}

  return train


def summarize(config, out: dict, _pred: dict) -> dict:
  """Seed means of the final reconstruction error, loss and effective rank;
  the worst seed's velocity gap `max_{t,r} |actual - formula| / max_{t,r}
  |formula|`."""
  v, vf = (np.asarray(out[k], np.float64) for k in ("velocity", "velocity_formula"))
  gap = np.nanmax(np.abs(v - vf), axis=(1, 2)) / np.nanmax(np.abs(vf), axis=(1, 2))
  sigma = np.asarray(out["sigma"], np.float64)[:, -1]
  mean = lambda x: float(metrics.seed_stats(np.asarray(x, np.float64))["mean"])
  return {"depth": int(config.model.depth), "num_observed": int(config.task.num_observed),
          "observed_fraction": config.task.num_observed / config.task.d ** 2,
          "error": mean(out["error"][:, -1]), "error_std": float(np.std(out["error"][:, -1])),
          "loss": mean(out["loss"][:, -1]),
          "effective_rank": mean(np.asarray(metrics.effective_rank(
              jnp.asarray(np.asarray(sigma)[:, None, :] * np.eye(sigma.shape[1]))))),
          "sigma_top": np.mean(sigma[:, :config.task.rank + 2], 0).tolist(),
          "velocity_gap": float(np.max(gap))}


def text(config, summary: dict) -> str:
  s = summary
  return (f"  depth {s['depth']}, {s['num_observed']} entries observed: error "
          f"{s['error']:.3g} (seed std {s['error_std']:.2g}), loss {s['loss']:.2g}, effective "
          f"rank {s['effective_rank']:.3g}; d sigma/dt against the formula: worst gap "
          f"{s['velocity_gap']:.2g}")


def plot(config, out, _pred, summary, path) -> None:
  """Singular values of `W` against t (every seed), and the actual `d sigma_r
  / dt` against the formula (every seed, mode and logged step)."""
  _, t = log_times(config)
  fig, (ax, ax_v) = plots.figure(2)
  sigma = np.asarray(out["sigma"])
  for r in range(min(sigma.shape[-1], config.task.rank + 3)):
    for s in range(sigma.shape[0]):
      ax.plot(t[1:], sigma[s, 1:, r], color=f"C{r}", lw=0.8,
              label=f"sigma_{r + 1}" if s == 0 else None)
  ax.axhline(target_strength(config), color="k", ls="--", lw=0.8, label="s* of M")
  ax.set(xscale="log", yscale="log", xlabel="t = step size x steps",
         ylabel="singular values of W (every seed)",
         title=f"depth {summary['depth']}, {summary['num_observed']} observed entries")
  ax.legend(fontsize=7)
  vf, v = np.asarray(out["velocity_formula"]).ravel(), np.asarray(out["velocity"]).ravel()
  ax_v.plot(vf, v, ".", ms=2, alpha=0.5)
  lim = [np.nanmin(vf), np.nanmax(vf)]
  ax_v.plot(lim, lim, "k--", lw=0.8, label="y = x")
  ax_v.set(xlabel="-N (sigma^2)^(1-1/N) <grad L, u v^T>",
           ylabel="d sigma / dt (autodiff)",
           title=f"worst relative gap {summary['velocity_gap']:.2g}")
  ax_v.legend(fontsize=7)
  plots.save(fig, path)


def sweep_summary(config, points) -> dict:
  rows = sorted((p.summary for p in points), key=lambda r: (r["depth"], r["num_observed"]))
  return {"error_vs_observed": {str(n): {str(r["num_observed"]): r["error"] for r in rows
                                         if r["depth"] == n}
                                for n in sorted({r["depth"] for r in rows})},
          "velocity_gap_max": max((r["velocity_gap"] for r in rows), default=None)}


def sweep_text(config, summary: dict) -> str:
  lines = ["reconstruction error ||W - M||_F / ||M||_F (seed mean) by depth:"]
  for n, row in summary["error_vs_observed"].items():
    lines.append(f"  depth {n}: " + ", ".join(f"m={m}: {e:.3g}" for m, e in row.items()))
  lines.append(f"worst gap between d sigma/dt and the formula: {summary['velocity_gap_max']:.2g}")
  return "\n".join(lines)


def sweep_plot(config, points, summary, path) -> None:
  """Reconstruction error against the number of observed entries, per depth."""
  fig, (ax,) = plots.figure(1)
  for n in sorted({p.summary["depth"] for p in points}):
    rows = sorted((p.summary for p in points if p.summary["depth"] == n),
                  key=lambda r: r["num_observed"])
    ax.errorbar([r["num_observed"] for r in rows], [r["error"] for r in rows],
                yerr=[r["error_std"] for r in rows], fmt="o-", ms=4, label=f"depth {n}")
  d, r = config.task.d, config.task.rank
  ax.axvline(r * (2 * d - r), color="k", ls=":", lw=0.8, label="r (2d - r): degrees of freedom")
  ax.set(yscale="log", xlabel="observed entries m", ylabel="||W - M||_F / ||M||_F",
         title=f"{d} x {d} matrix of rank {r}")
  ax.legend(fontsize=8)
  plots.save(fig, path)
