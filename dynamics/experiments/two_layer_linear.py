"""Two-layer linear networks from lambda-balanced inits: the exact flow, and
how far the NTK moves as lambda goes from 0 (rich) to large |lambda| (lazy).

A grid point is one `init.lam` and `init.scale` (and lr); every seed draws
its own lambda-balanced init: `W1 = A diag(sqrt(max(-lam, 0) + scale^2 c))
B^T` (`A`, `B` random orthogonal, `c` uniform in [0.5, 1.5]) and `W2 = O (W1
W1^T + lam I)^{1/2}` (`O` random with orthonormal columns), so that `W2^T W2
- W1 W1^T = lam I`. The teacher is `Sigma_yx` with singular values
`task.singular_values` (fixed random singular vectors); training is full-batch
gradient descent on the whitened-input loss of `docs/conventions.md`,
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
from dynamics import logged_times, make_optimizer, metrics, plots, trajectory
from theory import deep_linear as dl

HPARAMS = {"init.lam": "lam", "init.scale": "scale", "train.lr": "lr"}
CONSTANTS = ("w1_0", "w2_0")
TABLE = ("loss", "ntk_drift")


def validate(config) -> None:
  cfg.integer(config, "model.hidden")
  cfg.integer(config, "task.d_in")
  cfg.integer(config, "task.d_out")
  cfg.integer(config, "task.seed", minimum=0)
  cfg.numbers(config, "task.singular_values", minimum=0.0)
  cfg.positive(config, "init.scale")
  lam = cfg.get(config, "init.lam")
  if not isinstance(lam, (int, float)) or isinstance(lam, bool) or not np.isfinite(lam):
    cfg.fail("init.lam", f"must be a finite number, got {lam!r}")
  h, d_in, d_out = config.model.hidden, config.task.d_in, config.task.d_out
  if not h <= min(d_in, d_out):
    cfg.fail("model.hidden", f"must be at most min(task.d_in, task.d_out) = "
             f"{min(d_in, d_out)} for a lambda-balanced init of any sign, got {h}")
  if len(config.task.singular_values) > min(d_in, d_out):
    cfg.fail("task.singular_values", f"at most min(d_in, d_out) = {min(d_in, d_out)} values")
  cfg.schedule(config)


def teacher(config) -> np.ndarray:
  t = config.task
  rng = np.random.default_rng(t.seed)
  u, _ = np.linalg.qr(rng.normal(size=(t.d_out, t.d_out)))
  v, _ = np.linalg.qr(rng.normal(size=(t.d_in, t.d_in)))
  s = np.asarray(t.singular_values, np.float64)
  return u[:, :len(s)] @ np.diag(s) @ v[:, :len(s)].T


def _probe_ntk(w1tw1, w2w2t):
  """`Theta(e_i, e_j)` as a `[d_in d_out, d_in d_out]` matrix."""
  d_in, d_out = w1tw1.shape[-1], w2w2t.shape[-1]
  eye_in, eye_out = jnp.eye(d_in, dtype=w1tw1.dtype), jnp.eye(d_out, dtype=w1tw1.dtype)
  return jnp.kron(eye_in, w2w2t) + jnp.kron(w1tw1, eye_out)


def make_train(config):
  h, d_in, d_out = config.model.hidden, config.task.d_in, config.task.d_out
  dtype = cfg.float_dtype(config.precision)
  syx = jnp.asarray(teacher(config), dtype)
  loss = lambda p: 0.5 * jnp.sum((syx - p["w2"] @ p["w1"]) ** 2)

  def init(key, lam, scale):
    k_a, k_b, k_o, k_c = jax.random.split(key, 4)
    a = jnp.linalg.qr(jax.random.normal(k_a, (h, h), dtype))[0]
    b = jnp.linalg.qr(jax.random.normal(k_b, (d_in, d_in), dtype))[0][:, :h]
    o = jnp.linalg.qr(jax.random.normal(k_o, (d_out, h), dtype))[0]
    c = jax.random.uniform(k_c, (h,), dtype, 0.5, 1.5)
    sv = jnp.sqrt(jnp.maximum(-lam, 0.0) + scale**2 * c)
    w1 = a @ jnp.diag(sv) @ b.T
    # W1 W1^T + lam I = A diag(sv^2 + lam) A^T exactly
    w2 = o @ a @ jnp.diag(jnp.sqrt(jnp.maximum(sv**2 + lam, 0.0))) @ a.T
    return {"w1": w1, "w2": w2}

  def train(key, hp):
    params = init(key, hp["lam"], hp["scale"])
    grams = lambda p: (p["w1"].T @ p["w1"], p["w2"] @ p["w2"].T)
    theta0 = _probe_ntk(*grams(params))

    def metrics_fn(p):
      g1, g2 = grams(p)
      return {"loss": loss(p), "w": p["w2"] @ p["w1"], "w1tw1": g1, "w2w2t": g2,
              "ntk_drift": metrics.kernel_distance(_probe_ntk(g1, g2), theta0)}

    state, logged = trajectory(
        params, loss_fn=lambda p, _: loss(p), data=(syx[None],),  # the population loss
        optimizer=make_optimizer("sgd", hp["lr"]),
        metrics_fn=metrics_fn, num_steps=config.train.num_steps,
        log_every=config.train.log_every)
    return {**logged, "w1_0": params["w1"], "w2_0": params["w2"],
            "diverged_at": state.diverged_at}

  return train


def theory(config, out: dict) -> dict:
  """`two_layer_flow` from each seed's init at the logged times."""
  _, t = logged_times(config)
  syx = teacher(config)
  flows = [dl.two_layer_flow(t, w1, w2, syx) for w1, w2 in zip(out["w1_0"], out["w2_0"])]
  pred = {k: np.stack([f[k] for f in flows]) for k in ("w", "w1tw1", "w2w2t")}
  pred["loss"] = 0.5 * np.sum((syx - pred["w"]) ** 2, axis=(-2, -1))
  theta = np.stack([np.asarray(_probe_ntk(jnp.asarray(a), jnp.asarray(b)))
                    for a, b in zip(pred["w1tw1"].reshape(-1, *pred["w1tw1"].shape[-2:]),
                                    pred["w2w2t"].reshape(-1, *pred["w2w2t"].shape[-2:]))])
  theta = theta.reshape(pred["w"].shape[:2] + theta.shape[-2:])
  pred["ntk_drift"] = np.asarray(metrics.kernel_distance(theta, theta[:, :1]))
  return pred


def summarize(config, out: dict, pred: dict) -> dict:
  """The map's and the drift's largest error against the flow, relative to
  each trajectory's scale (seed max), and the final NTK drift, simulated and
  predicted (seed means)."""
  flat = lambda a: np.moveaxis(np.asarray(a, np.float64).reshape(a.shape[0], a.shape[1], -1),
                               1, -1)
  w_err = metrics.relative_error(flat(out["w"]), flat(pred["w"]))        # [S, entries]
  drift, drift_pred = np.asarray(out["ntk_drift"])[:, -1], pred["ntk_drift"][:, -1]
  return {"lam": float(config.init.lam), "scale": float(config.init.scale),
          "lr": float(config.train.lr),
          "w_max_rel_error": float(np.nanmax(w_err)),
          "drift_abs_error": float(np.nanmax(np.abs(drift - drift_pred))),
          "ntk_drift": float(metrics.seed_stats(drift)["mean"]),
          "ntk_drift_pred": float(metrics.seed_stats(drift_pred)["mean"])}


def text(config, summary: dict) -> str:
  return (f"  map vs flow: max rel error {summary['w_max_rel_error']:.2e}; final NTK drift "
          f"{summary['ntk_drift']:.3g} (flow {summary['ntk_drift_pred']:.3g})")


def sweep_summary(config, points) -> dict:
  rows = [p.summary for p in points]
  return {"worst_w_rel_error": max(r["w_max_rel_error"] for r in rows),
          "worst_drift_abs_error": max(r["drift_abs_error"] for r in rows)}


def sweep_text(config, summary: dict) -> str:
  return (f"worst map error against the flow {summary['worst_w_rel_error']:.2e}, worst NTK "
          f"drift error {summary['worst_drift_abs_error']:.2e}")


def sweep_plot(config, points, summary, path) -> None:
  """The NTK's final drift against lambda, per init scale: the flow's as a
  line, the networks' (seed means) as points."""
  fig, (ax,) = plots.figure(1)
  for i, scale in enumerate(sorted({p.summary["scale"] for p in points})):
    rows = sorted((p.summary for p in points if p.summary["scale"] == scale),
                  key=lambda r: r["lam"])
    lam = [r["lam"] for r in rows]
    ax.plot(lam, [r["ntk_drift_pred"] for r in rows], "-", color=f"C{i}",
            label=f"two_layer_flow, scale {scale:g}")
    ax.plot(lam, [r["ntk_drift"] for r in rows], "o", color=f"C{i}",
            label=f"gradient descent, scale {scale:g}")
  ax.set(yscale="log", xlabel="lambda (W2^T W2 - W1 W1^T = lambda I)",
         ylabel="||Theta_T - Theta_0||_F / ||Theta_0||_F",
         title="rich near lambda = 0, lazy at large |lambda|")
  ax.legend(fontsize=7)
  plots.save(fig, path)
