"""Finite-width mean-field networks against their infinite-width kernel
dynamics, across richness gamma0 (Bordelon & Pehlevan 2022; docs/dmft.md).

A grid point is one width `model.width` (N) and richness `model.gamma0`. The
task is fixed by `task.seed`: `task.n` (P) Gaussian inputs in `R^d` with a
linear teacher's targets `y = x . beta / sqrt(d)`, `|beta|^2 = d`. The model,
`model.depth` weight layers (default 2), every weight N(0, 1) per seed:

    h^1 = W x / sqrt(d),   h^(l+1) = V_l h^l / sqrt(N),   f(x) = a . h^(depth-1) / (gamma0 N),

or, with `model.activation` relu, tanh or erf (depth 2), `f(x) = a . phi(h^1) / (gamma0 N)`.

trained by full-batch gradient descent on `gamma0^2 N L`, `L = 1/(2P) sum (f -
y)^2`: the step `gamma0^2 N lr` on every parameter, so that time is `t = lr x
steps` (docs/conventions.md). Logged: the loss `L`, the outputs `f` on the
training points, the last hidden layer's kernel `H = h h^T / N`, the readout's
`A = |a|^2 / N`, the NTK's alignment with the targets and, at depth >= 3, every
hidden layer's `H_layers` and `G_layers` (`g^l . g^l / N`, `g^l = gamma0 N
df/dh^l`).

`theory`, named like the observations (the runner compares them): at depth 2,
`theory.dmft.deep_linear_flow` from the infinite-width start (`f = 0, H = K, A =
1`) and `f_own`, the same equations from the seed's own `(f, H, A)` at step 0,
exact at every width, so that its gap is gradient descent's O(lr) alone. At
depth >= 3, `theory.dmft.deep_linear_gd`: infinite-width gradient descent at the
run's own lr and steps, so that the gap is the finite width's alone. With an
activation, `theory.dmft.single_site_flow` on `model.samples` units drawn once
per task, logged as the features' kernel `Phi = phi(h) phi(h)^T / N` and the
gradients' `G = (a^2 phi'(h)) phi'(h)^T / N`.
`report` measures per point the finite-width gap `max_t |f_N - f_inf|` per
seed (RMS over seeds) and of the seed mean, and draws the loss and the
alignment against t per gamma0 and the gaps against width with their slopes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dynamics import config as cfg
from dynamics import metrics, plots
from theory import dmft


def setup(config) -> dict:
  p, d = cfg.integer(config, "task.n"), cfg.integer(config, "task.d")
  cfg.integer(config, "task.seed", minimum=0)
  cfg.integer(config, "model.width")
  cfg.integer(config, "model.depth", minimum=2)
  cfg.positive(config, "model.gamma0")
  if _act(config) not in ("linear", "relu", "tanh", "erf"):
    cfg.fail("model.activation", "must be 'linear', 'relu', 'tanh' or 'erf'.")
  if _act(config) != "linear":
    cfg.integer(config, "model.samples")
    if _depth(config) != 2:
      cfg.fail("model.activation", "a nonlinear network must have model.depth 2: the "
               "single-site process is the two-layer network's.")
  for field, fixed in (("optimizer", "sgd"), ("decay", "constant")):
    if config.train.get(field, fixed) != fixed:
      cfg.fail(f"train.{field}", f"must be {fixed!r}: the theory is the gradient flow.")
  k_x, k_b = jax.random.split(jax.random.PRNGKey(config.task.seed))
  x = jax.random.normal(k_x, (p, d))
  beta = jax.random.normal(k_b, (d,))
  beta = beta * np.sqrt(d) / jnp.linalg.norm(beta)
  return {"x": x, "y": x @ beta / np.sqrt(d)}


def _depth(config) -> int:
  return int(config.model.get("depth", 2))


def _act(config) -> str:
  return config.model.get("activation", "linear")


def init(config, key, data) -> dict:
  k_w, k_a = jax.random.split(key)
  n, d, dtype = config.model.width, data["x"].shape[1], data["x"].dtype
  params = {"W": jax.random.normal(k_w, (n, d), dtype), "a": jax.random.normal(k_a, (n,), dtype)}
  if _depth(config) > 2:
    params["V"] = jax.random.normal(jax.random.fold_in(key, 2), (_depth(config) - 2, n, n), dtype)
  return {"params": params}


def _hiddens(params, x) -> list:
  """`[h^1, ..., h^(depth-1)]`, each `[P, N]`."""
  hs = [x @ params["W"].T / np.sqrt(x.shape[1])]
  for v in params.get("V", ()):
    hs.append(hs[-1] @ v.T / np.sqrt(v.shape[0]))
  return hs


def _hidden(params, x):
  return _hiddens(params, x)[-1]


def _out(config, params, x):
  phi = dmft._ACTIVATIONS[_act(config)][0]
  return phi(_hidden(params, x)) @ params["a"] / (config.model.gamma0 * params["a"].shape[0])


def loss(config, state, data, key):
  """`gamma0^2 N L`: its gradient step is the mean-field flow's (module docstring)."""
  n = state["params"]["a"].shape[0]
  f = _out(config, state["params"], data["x"])
  return config.model.gamma0**2 * n * 0.5 * jnp.mean((f - data["y"]) ** 2)


def observe(config, state, data) -> dict:
  params, x, y = state["params"], data["x"], data["y"]
  n = params["a"].shape[0]
  f = _out(config, params, x)
  if _act(config) != "linear":   # the features' and the gradients' kernels, [P, P] each
    phi, dphi = dmft._ACTIVATIONS[_act(config)]
    h = _hidden(params, x)
    feats, grads = phi(h) @ phi(h).T / n, (dphi(h) * params["a"] ** 2) @ dphi(h).T / n
    ntk = feats + grads * (x @ x.T / x.shape[1])
    return {"loss": 0.5 * jnp.mean((f - y) ** 2), "f": f, "Phi": feats, "G": grads,
            "alignment": metrics.kernel_alignment(ntk, y)}
  if _depth(config) == 2:
    h = _hidden(params, x)
    big_h, a = h @ h.T / n, params["a"] @ params["a"] / n
    ntk = big_h + a * x @ x.T / x.shape[1]
    return {"loss": 0.5 * jnp.mean((f - y) ** 2), "f": f, "H": big_h, "A": a,
            "alignment": metrics.kernel_alignment(ntk, y)}
  hs = _hiddens(params, x)
  gs = [params["a"]]                       # g^(depth-1) = a, g^l = V_l^T g^(l+1) / sqrt(N)
  for v in params["V"][::-1]:
    gs.insert(0, v.T @ gs[0] / np.sqrt(n))
  h_layers = jnp.stack([h @ h.T / n for h in hs])
  g_layers = jnp.stack([g @ g / n for g in gs])
  below = jnp.concatenate([(x @ x.T / x.shape[1])[None], h_layers[:-1]])
  ntk = jnp.einsum("l,lpq->pq", g_layers, below) + h_layers[-1]
  return {"loss": 0.5 * jnp.mean((f - y) ** 2), "f": f, "H": h_layers[-1], "A": g_layers[-1],
          "alignment": metrics.kernel_alignment(ntk, y), "H_layers": h_layers,
          "G_layers": g_layers}


def theory(config, data, start, t) -> dict:
  """The infinite-width kernel dynamics (float64): depth 2, the flow and `f_own`
  from this seed's own step-0 `(f, H, A)`; deeper, gradient descent at the run's
  lr (`theory.dmft.deep_linear_gd`) at the logged steps."""
  x, y, g = data["x"], data["y"], config.model.gamma0
  if _act(config) != "linear":  # sampled units, the same draw at every point of the task
    # solved once on the logged steps' grid (not on each seed's `t`, which would
    # batch the whole solve over the seeds), then read at `t`
    steps, every = int(config.train.num_steps), int(config.train.log_every)
    grid = config.train.lr * jnp.asarray(sorted(set(range(0, steps + 1, every)) | {steps}),
                                         t.dtype)
    out = dmft.single_site_flow(_act(config), g, x, y, grid,
                                key=jax.random.PRNGKey(config.task.seed + 1),
                                samples=int(config.model.samples), steps=steps)
    out = {n: v[jnp.argmin(jnp.abs(grid[:, None] - t[None]), axis=0)] for n, v in out.items()}
    return {"f": out["f"], "Phi": out["Phi"], "G": out["G"],
            "loss": 0.5 * jnp.mean((out["f"] - y) ** 2, -1),
            "alignment": metrics.kernel_alignment(out["ntk"], y)}
  if _depth(config) > 2:
    lr = config.train.lr
    out = dmft.deep_linear_gd(_depth(config), g, x, y, lr, int(config.train.num_steps))
    at = {n: v[jnp.round(t / lr).astype(int)] for n, v in out.items()}
    return {"f": at["f"], "H": at["H_layers"][:, -1], "A": at["G_layers"][:, -1],
            "H_layers": at["H_layers"], "G_layers": at["G_layers"],
            "loss": 0.5 * jnp.mean((at["f"] - y) ** 2, -1),
            "alignment": metrics.kernel_alignment(at["ntk"], y)}
  inf = dmft.deep_linear_flow(2, g, x, y, t)
  own = dmft.deep_linear_flow(2, g, x, y, t,
                              init={"f": start["f"], "H": start["H"], "A": start["A"]})
  return {"f": inf["f"], "H": inf["H"], "A": inf["A"], "f_own": own["f"],
          "loss": 0.5 * jnp.mean((inf["f"] - y) ** 2, -1),
          "alignment": metrics.kernel_alignment(inf["ntk"], y)}


def _point(r) -> dict:
  k = r.traj.kept
  f, inf = r.traj.logged["f"][k], r.pred["f"][k]
  per_seed = np.max(np.linalg.norm(f - inf, axis=-1), axis=1)
  row = {"width": int(r.config.model.width), "gamma0": float(r.config.model.gamma0),
         "gap_seed": float(np.sqrt(np.mean(per_seed**2))),
         "gap_mean": float(np.max(np.linalg.norm(f.mean(0) - inf[0], axis=-1)))}
  if "f_own" in r.pred:
    row["gap_own"] = float(np.max(np.linalg.norm(f - r.pred["f_own"][k], axis=-1)))
  else:  # the seed mean's distance in its own standard errors (largest over t and points)
    se = f.std(0, ddof=1) / np.sqrt(max(f.shape[0], 2))
    row["mean_z"] = float(np.max(np.abs(f.mean(0) - inf[0]) / np.maximum(se, 1e-30)))
  return row


def report(config, results) -> dict:
  """Per point its gaps; per gamma0 the slopes of the gaps against width; the
  figure: loss and alignment against t at the largest width (theory as black
  lines) and the gaps against width."""
  rows = [_point(r) if r.traj.kept.any() else {} for r in results]
  gammas = sorted({r["gamma0"] for r in rows if r})
  widths = sorted({r["width"] for r in rows if r})
  deep = any("H_layers" in r.pred for r in results)
  fig, axes = plots.figure(4 if deep else 3, 1, size=(4.6, 3.8))
  slopes, layers = {}, {}
  for j, g in enumerate(gammas):
    color = f"C{j}"
    top = [r for r, row in zip(results, rows) if row and row["gamma0"] == g
           and row["width"] == widths[-1]]
    for r in top:
      t = np.median(r.traj.t, 0)
      for ax, name in ((axes[0], "loss"), (axes[1], "alignment")):
        ax.plot(t, np.median(r.traj.logged[name][r.traj.kept], 0), color=color, lw=1.5,
                label=f"gamma0 {g:g}, N {widths[-1]}" if name == "loss" else None)
        ax.plot(t, r.pred[name][0], "k--", lw=0.9)
      if deep:  # each hidden layer's kernel alignment with the targets, deeper darker
        y = r.data["y"]
        sim = metrics.kernel_alignment(np.median(r.traj.logged["H_layers"][r.traj.kept], 0), y)
        th = metrics.kernel_alignment(r.pred["H_layers"][0], y)
        layers[str(g)] = {"width": widths[-1], "t": float(t[-1]),
                          "simulation": np.asarray(sim[-1]).tolist(),
                          "theory": np.asarray(th[-1]).tolist(),
                          "start": np.asarray(th[0]).tolist()}
        for l in range(sim.shape[1]):
          alpha = 0.35 + 0.65 * (l + 1) / sim.shape[1]
          axes[3].plot(t, sim[:, l], color=color, alpha=alpha, lw=1.5,
                       label=f"gamma0 {g:g}, layer {l + 1}")
          axes[3].plot(t, th[:, l], "k--", lw=0.8)
    pts = sorted((row["width"], row["gap_seed"], row["gap_mean"]) for row in rows
                 if row and row["gamma0"] == g)
    w, seed_gap, mean_gap = (np.array(c) for c in zip(*pts))
    slopes[str(g)] = {"seed": metrics.loglog_slope(w, seed_gap),
                      "mean": metrics.loglog_slope(w, mean_gap)}
    axes[2].plot(w, seed_gap, "o-", color=color, label=f"gamma0 {g:g}: one seed "
                 f"(slope {slopes[str(g)]['seed'] or float('nan'):.2f})")
    axes[2].plot(w, mean_gap, "s--", color=color, label=f"seed mean "
                 f"(slope {slopes[str(g)]['mean'] or float('nan'):.2f})")
  axes[0].set(xlabel="t = lr x steps", ylabel="loss", yscale="log",
              title="simulation (color), infinite width (black)")
  axes[1].set(xlabel="t = lr x steps", ylabel="NTK-target alignment")
  w = np.array(widths, float)
  first = max((row["gap_seed"] for row in rows if row and row["width"] == widths[0]),
              default=None)
  for power, style in ((0.5, ":"), (1.0, "-.")) if first else ():  # through the first gap
    axes[2].plot(w, first * (w / w[0]) ** -power, "k" + style, lw=0.8, label=f"N^-{power:g}")
  axes[2].set(xscale="log", yscale="log", xlabel="width N",
              ylabel="max_t |f_N - f_inf|", title="finite-width gap")
  for ax in (axes[0], axes[2]) + ((axes[3],) if deep else ()):
    ax.legend(fontsize=6 if ax is not axes[0] else 7)
  if deep:
    axes[3].set(xlabel="t = lr x steps", ylabel="alignment of H^l with y y^T",
                title=f"hidden layers' kernels, N {widths[-1]}")
  return {"points": rows, "slopes": slopes, **({"layers": layers} if deep else {}),
          "figure": fig}
