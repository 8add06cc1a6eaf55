"""Two-layer linear networks from lambda-balanced inits: the exact flow, and
how far the NTK moves as lambda goes from 0 (rich) to large |lambda| (lazy).

A grid point is one `init.lam` and `init.scale` (and lr); every seed draws
its own lambda-balanced init: `W1 = A diag(sqrt(max(-lam, 0) + scale^2 c))
B^T` (`A`, `B` random orthogonal, `c` uniform in [0.5, 1.5]) and `W2 = O (W1
W1^T + lam I)^{1/2}` (`O` random with orthonormal columns), so that `W2^T W2
- W1 W1^T = lam I`. The teacher is `Sigma_yx` with singular values
`task.singular_values` (fixed random singular vectors); training is full-batch
gradient descent on the whitened-input loss of docs/conventions.md,
`1/2 ||Sigma_yx - W2 W1||_F^2` (its constant dropped).

Logged: the loss, the map `W2 W1`, the Gram matrices `W1^T W1` and `W2 W2^T`,
and the NTK's distance from its init, `||Theta_t - Theta_0||_F / ||Theta_0||_F`
on the inputs `e_1 .. e_d_in` (`Theta(e_i, e_j) = delta_ij W2 W2^T + (W1^T
W1)_ij I`). Theory: `theory.deep_linear.two_layer_flow` from each seed's
init, at `t = lr x step` (gradient descent differs by O(lr)).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dynamics import config as cfg
from dynamics import linalg, metrics, plots
from theory import deep_linear as dl


def setup(config) -> dict:
  h = cfg.integer(config, "model.hidden")
  d_in, d_out = cfg.integer(config, "task.d_in"), cfg.integer(config, "task.d_out")
  cfg.integer(config, "task.seed", minimum=0)
  s = cfg.numbers(config, "task.singular_values", minimum=0.0)
  cfg.positive(config, "init.scale")
  lam = cfg.get(config, "init.lam")
  if not isinstance(lam, (int, float)) or isinstance(lam, bool) or not np.isfinite(lam):
    cfg.fail("init.lam", f"must be a finite number, got {lam!r}")
  if not h <= min(d_in, d_out):
    cfg.fail("model.hidden", f"must be at most min(task.d_in, task.d_out) = "
             f"{min(d_in, d_out)} for a lambda-balanced init of any sign, got {h}")
  if len(s) > min(d_in, d_out):
    cfg.fail("task.singular_values", f"at most min(d_in, d_out) = {min(d_in, d_out)} values")
  rng = np.random.default_rng(config.task.seed)
  u, _ = np.linalg.qr(rng.normal(size=(d_out, d_out)))
  v, _ = np.linalg.qr(rng.normal(size=(d_in, d_in)))
  return {"syx": u[:, :len(s)] @ np.diag(s) @ v[:, :len(s)].T}


def ntk_on_basis(w1tw1, w2w2t):
  """`Theta(e_i, e_j)` as a `[d_in d_out, d_in d_out]` matrix."""
  eye_in = jnp.eye(w1tw1.shape[-1], dtype=w1tw1.dtype)
  eye_out = jnp.eye(w2w2t.shape[-1], dtype=w1tw1.dtype)
  return jnp.kron(eye_in, w2w2t) + jnp.kron(w1tw1, eye_out)


def init(config, key, data) -> dict:
  """A lambda-balanced init (module docstring); its weights are constants too
  (`w1_0`, `w2_0`: the flow starts from them)."""
  h, d_in, d_out = config.model.hidden, config.task.d_in, config.task.d_out
  lam, scale, dtype = config.init.lam, config.init.scale, data["syx"].dtype
  k_a, k_b, k_o, k_c = jax.random.split(key, 4)
  a = linalg.qr(jax.random.normal(k_a, (h, h), dtype))[0]
  b = linalg.qr(jax.random.normal(k_b, (d_in, d_in), dtype))[0][:, :h]
  o = linalg.qr(jax.random.normal(k_o, (d_out, h), dtype))[0]
  c = jax.random.uniform(k_c, (h,), dtype, 0.5, 1.5)
  sv = jnp.sqrt(jnp.maximum(-lam, 0.0) + scale**2 * c)
  w1 = a @ jnp.diag(sv) @ b.T
  # W1 W1^T + lam I = A diag(sv^2 + lam) A^T exactly
  w2 = o @ a @ jnp.diag(jnp.sqrt(jnp.maximum(sv**2 + lam, 0.0))) @ a.T
  return {"params": {"w1": w1, "w2": w2}, "w1_0": w1, "w2_0": w2}


def loss(config, state, data, key):
  """The population loss with whitened inputs, `1/2 ||Sigma_yx - W2 W1||_F^2`."""
  p = state["params"]
  return 0.5 * jnp.sum((data["syx"] - p["w2"] @ p["w1"]) ** 2)


def observe(config, state, data) -> dict:
  p = state["params"]
  g1, g2 = p["w1"].T @ p["w1"], p["w2"] @ p["w2"].T
  theta0 = ntk_on_basis(state["w1_0"].T @ state["w1_0"], state["w2_0"] @ state["w2_0"].T)
  return {"loss": loss(config, state, data, None), "w": p["w2"] @ p["w1"], "w1tw1": g1,
          "w2w2t": g2, "ntk_drift": metrics.kernel_distance(ntk_on_basis(g1, g2), theta0)}


def theory(config, data, start, t) -> dict:
  """`two_layer_flow` from the seed's init at its logged times."""
  syx = np.asarray(data["syx"])
  flow = dl.two_layer_flow(np.asarray(t), np.asarray(start["w1_0"]), np.asarray(start["w2_0"]),
                           syx)
  theta = np.stack([np.asarray(ntk_on_basis(jnp.asarray(a), jnp.asarray(b)))
                    for a, b in zip(flow["w1tw1"], flow["w2w2t"])])
  return {"w": flow["w"], "w1tw1": flow["w1tw1"], "w2w2t": flow["w2w2t"],
          "loss": 0.5 * np.sum((syx - flow["w"]) ** 2, axis=(-2, -1)),
          "ntk_drift": np.asarray(metrics.kernel_distance(theta, theta[:1]))}


def _point(r) -> dict:
  """The map's largest error against the flow, relative to each trajectory's
  scale (worst seed), and the final NTK drift, simulated and predicted (seed
  means)."""
  kept = r.traj.kept
  flat = lambda a: np.moveaxis(np.asarray(a, np.float64)[kept].reshape(
      kept.sum(), a.shape[1], -1), 1, -1)
  w_err = metrics.relative_error(flat(r.traj.logged["w"]), flat(r.pred["w"]))
  drift = np.asarray(r.traj.logged["ntk_drift"], np.float64)[kept, -1]
  drift_pred = r.pred["ntk_drift"][kept, -1]
  return {"lam": float(r.config.init.lam), "scale": float(r.config.init.scale),
          "w_max_rel_error": float(np.nanmax(w_err)),
          "drift_abs_error": float(np.nanmax(np.abs(drift - drift_pred))),
          "ntk_drift": float(np.mean(drift)), "ntk_drift_pred": float(np.mean(drift_pred))}


def report(config, results) -> dict:
  """Per point the errors against the flow; the NTK's final drift against
  lambda per init scale (the flow's as a line, the networks' as points)."""
  rows = [_point(r) if r.traj.kept.any() else {} for r in results]
  done = [r for r in rows if r]
  fig, (ax,) = plots.figure(1)
  for i, scale in enumerate(sorted({r["scale"] for r in done})):
    pts = sorted((r for r in done if r["scale"] == scale), key=lambda r: r["lam"])
    lam = [r["lam"] for r in pts]
    ax.plot(lam, [r["ntk_drift_pred"] for r in pts], "-", color=f"C{i}",
            label=f"two_layer_flow, scale {scale:g}")
    ax.plot(lam, [r["ntk_drift"] for r in pts], "o", color=f"C{i}",
            label=f"gradient descent, scale {scale:g}")
  ax.set(yscale="log", xlabel="lambda (W2^T W2 - W1 W1^T = lambda I)",
         ylabel="||Theta_T - Theta_0||_F / ||Theta_0||_F",
         title="rich near lambda = 0, lazy at large |lambda|")
  ax.legend(fontsize=7)
  return {"points": rows, "figure": fig,
          "worst_w_rel_error": max((r["w_max_rel_error"] for r in done), default=None),
          "worst_drift_abs_error": max((r["drift_abs_error"] for r in done), default=None)}
