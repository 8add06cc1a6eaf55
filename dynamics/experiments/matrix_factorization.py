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
step is `train.lr` times `m / (N s*^(2 - 2/N))` (`lr_scale`): the product's
curvature along a learned mode of strength `s*`, so one `train.lr` suits
every depth and `m`; time is `t = train.lr x lr_scale x steps`.

Logged: the loss, the reconstruction error `||W - M||_F / ||M||_F` over all
entries, the singular values of `W`, and two velocities of each: the formula
`theory.deep_linear.singular_value_velocity` (the flow's `d sigma_r / dt` for a
balanced factorization) and the actual derivative of `sigma_r(W)` along the
gradient of the factors (`jax.jvp` through the SVD). The report sets them
side by side over the run, and across points gives the error against `m` per
depth: deeper factorizations recover `M` from fewer entries.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dynamics import config as cfg
from dynamics import linalg, metrics, plots
from dynamics.models import deep_linear as model
from theory import deep_linear as theory_dl


def target_strength(config) -> float:
  """`s* = d / sqrt(rank)`, every non-zero singular value of `M`."""
  return config.task.d / np.sqrt(config.task.rank)


def setup(config) -> dict:
  """`M`, the 0/1 mask of its first `num_observed` entries, `m`, `lr_scale`."""
  n = cfg.integer(config, "model.depth")
  d, rank = cfg.integer(config, "task.d"), cfg.integer(config, "task.rank")
  if rank > d:
    cfg.fail("task.rank", f"({rank}) must be at most task.d ({d}).")
  m = cfg.integer(config, "task.num_observed")
  if m > d * d:
    cfg.fail("task.num_observed", f"({m}) must be at most task.d^2 ({d * d}).")
  cfg.integer(config, "task.seed", minimum=0)
  cfg.positive(config, "init.scale")
  k_u, k_v, k_order = jax.random.split(jax.random.PRNGKey(config.task.seed), 3)
  u, _ = jnp.linalg.qr(jax.random.normal(k_u, (d, rank)))
  v, _ = jnp.linalg.qr(jax.random.normal(k_v, (d, rank)))
  order = np.asarray(jax.random.permutation(k_order, d * d))
  mask = np.zeros(d * d)
  mask[order[:m]] = 1.0
  return {"target": (u * target_strength(config)) @ v.T,
          "mask": jnp.asarray(mask.reshape(d, d), u.dtype), "m": jnp.asarray(m, u.dtype),
          "lr_scale": jnp.asarray(m / (n * target_strength(config) ** (2 - 2 / n)), u.dtype)}


def init(config, key, data) -> dict:
  d, dtype = config.task.d, data["target"].dtype
  params = [config.init.scale * linalg.orthonormal(k, d, d, dtype)
            for k in jax.random.split(key, config.model.depth)]
  return {"params": params, "lr_scale": data["lr_scale"]}


def loss(config, state, data, key):
  w = model.end_to_end(state["params"])
  return 0.5 * jnp.sum(data["mask"] * (w - data["target"]) ** 2) / data["m"]


def observe(config, state, data) -> dict:
  p, target = state["params"], data["target"]
  w = model.end_to_end(p)
  u, s, vt = linalg.svd(w)
  proj = jnp.einsum("ir,ij,rj->r", u, data["mask"] * (w - target) / data["m"], vt)
  g = jax.grad(lambda q: loss(config, {"params": q}, data, None))(p)
  svals = lambda e: linalg.svd(model.end_to_end([a - e * b for a, b in zip(p, g)]))[1]
  _, actual = jax.jvp(svals, (jnp.zeros((), w.dtype),), (jnp.ones((), w.dtype),))
  return {"loss": loss(config, state, data, None),
          "error": jnp.linalg.norm(w - target) / jnp.linalg.norm(target), "sigma": s,
          "velocity": actual,
          "velocity_formula": theory_dl.singular_value_velocity(s, proj, config.model.depth)}


def _point(r) -> dict:
  """Seed means of the final reconstruction error, loss and effective rank;
  the worst seed's velocity gap `max_{t,r} |actual - formula| / max_{t,r}
  |formula|`."""
  kept, logged = r.traj.kept, r.traj.logged
  v, vf = (np.asarray(logged[k], np.float64)[kept] for k in ("velocity", "velocity_formula"))
  gap = np.nanmax(np.abs(v - vf), axis=(1, 2)) / np.nanmax(np.abs(vf), axis=(1, 2))
  sigma = np.asarray(logged["sigma"], np.float64)[kept, -1]
  error = np.asarray(logged["error"], np.float64)[kept, -1]
  rank = metrics.effective_rank(jnp.asarray(sigma[:, None, :] * np.eye(sigma.shape[1])))
  return {"depth": int(r.config.model.depth), "num_observed": int(r.config.task.num_observed),
          "observed_fraction": r.config.task.num_observed / r.config.task.d ** 2,
          "error": float(np.mean(error)), "error_std": float(np.std(error)),
          "loss": float(np.mean(np.asarray(logged["loss"], np.float64)[kept, -1])),
          "effective_rank": float(np.mean(np.asarray(rank))),
          "sigma_top": np.mean(sigma[:, :r.config.task.rank + 2], 0).tolist(),
          "velocity_gap": float(np.max(gap))}


def report(config, results) -> dict:
  """Per point the error and the velocity gap; the error against the number
  of observed entries per depth (the figure), the worst velocity gap."""
  rows = [_point(r) if r.traj.kept.any() else {} for r in results]
  done = sorted((r for r in rows if r), key=lambda r: (r["depth"], r["num_observed"]))
  fig, (ax,) = plots.figure(1, size=(6.6, 4.0))
  for n in sorted({r["depth"] for r in done}):
    pts = [r for r in done if r["depth"] == n]
    ax.errorbar([r["num_observed"] for r in pts], [r["error"] for r in pts],
                yerr=[r["error_std"] for r in pts], fmt="o-", ms=4, label=f"depth {n}")
  d, rank = config.task.d, config.task.rank
  ax.axvline(rank * (2 * d - rank), color="k", ls=":", lw=0.8,
             label="r (2d - r): degrees of freedom")
  ax.set(yscale="log", xlabel="observed entries m", ylabel="||W - M||_F / ||M||_F (seed mean)",
         title=f"{d} x {d} matrix of rank {rank}")
  ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
  by_depth = {str(n): {str(r["num_observed"]): r["error"] for r in done if r["depth"] == n}
              for n in sorted({r["depth"] for r in done})}
  return {"points": rows, "figure": fig, "error_vs_observed": by_depth,
          "velocity_gap_max": max((r["velocity_gap"] for r in done), default=None)}
