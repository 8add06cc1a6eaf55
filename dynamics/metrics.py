"""The shared metrics module: theory beside simulation, on plain arrays.

Every experiment, test, plot and report computes its agreement figures with
these functions, so the number a test asserts, the number in `summary.json`
and the number on a figure are the same number. Nothing here knows about a
model; inputs are numpy or jax arrays, outputs numpy arrays or floats (the
laziness measures at the end return jax arrays and trace under `jit`).

Time is the last axis of a trajectory unless `axis` says otherwise.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats


def relative_error(empirical, predicted, *, axis: int = -1,
                   reduce: str = "max") -> np.ndarray:
  """Error of a trajectory relative to the scale of the prediction.

  `r(t) = |e(t) - p(t)| / max_t |p(t)|`, reduced over time by its maximum
  (`reduce='max'`, a relative sup-norm error) or its mean (`'mean'`).
  Normalising by the trajectory's own scale keeps the figure meaningful
  where the prediction passes through 0 (a sigmoid starting at `u0 ~ 0`).

  Args:
    empirical, predicted: broadcastable arrays with a time axis `axis`.
    reduce: `'max'` or `'mean'`.

  Returns:
    The broadcast shape without the time axis.
  """
  r = pointwise_relative_error(empirical, predicted, axis=axis)
  if reduce == "max":
    return np.max(r, axis=axis)
  if reduce == "mean":
    return np.mean(r, axis=axis)
  raise ValueError(f"reduce must be 'max' or 'mean', got {reduce!r}.")


def pointwise_relative_error(empirical, predicted, *, axis: int = -1
                             ) -> np.ndarray:
  """`r(t) = |e(t) - p(t)| / max_t |p(t)|`, before reducing over time."""
  e, p = np.broadcast_arrays(np.asarray(empirical, np.float64),
                             np.asarray(predicted, np.float64))
  scale = np.nanmax(np.abs(p), axis=axis, keepdims=True)
  return np.abs(e - p) / np.where(scale > 0, scale, 1.0)


def r_squared(empirical, predicted, *, axis: int = -1) -> np.ndarray:
  """Coefficient of determination `1 - SS_res / SS_tot` of the prediction."""
  e, p = np.broadcast_arrays(np.asarray(empirical, np.float64),
                             np.asarray(predicted, np.float64))
  ss_res = np.sum((e - p) ** 2, axis=axis)
  ss_tot = np.sum((e - np.mean(e, axis=axis, keepdims=True)) ** 2, axis=axis)
  return 1.0 - ss_res / np.where(ss_tot > 0, ss_tot, np.inf)


def time_to_fraction(t, u, target, fraction: float = 0.5) -> np.ndarray:
  """First time a trajectory reaches `fraction * target`, interpolated.

  The trajectory moves from `u[..., 0]` towards `target`; the level counts
  as reached once `u` is at or past it in that direction (so a trajectory
  already past the level gives `t[0]`). Linear interpolation between the two
  samples around the crossing; `nan` when the level is never reached. The
  resolution is the logging interval (`lr * log_every` in theory time): log
  densely enough to resolve the transition you time.

  Args:
    t: `[T]` increasing times.
    u: `[..., T]` trajectories.
    target: broadcastable to `u[..., 0]` (the asymptote, e.g. `s`).
    fraction: the level as a fraction of `target`.

  Returns:
    `u.shape[:-1]`.
  """
  t, u = np.asarray(t, np.float64), np.asarray(u, np.float64)
  target = np.broadcast_to(np.asarray(target, np.float64), u.shape[:-1])[..., None]
  level = fraction * target
  # the direction of travel is towards the target, so a trajectory that
  # starts between the level and the target has already passed the level
  direction = np.where(target[..., 0] >= u[..., 0], 1.0, -1.0)[..., None]
  reached = direction * (u - level) >= 0
  first = np.argmax(reached, axis=-1)
  ever = np.any(reached, axis=-1)
  prev = np.maximum(first - 1, 0)
  take = lambda a, i: np.take_along_axis(a, i[..., None], axis=-1)[..., 0]
  u1, u0 = take(u, first), take(u, prev)
  t1, t0 = t[first], t[prev]
  lv = level[..., 0]
  w = np.where(u1 != u0, (lv - u0) / np.where(u1 != u0, u1 - u0, 1.0), 1.0)
  out = np.where(first == 0, t[0], t0 + np.clip(w, 0.0, 1.0) * (t1 - t0))
  return np.where(ever, out, np.nan)


def seed_stats(x, *, axis: int = 0, confidence: float = 0.95) -> dict:
  """Mean, standard deviation and a Student-t confidence interval of the mean.

  Non-finite entries (diverged seeds) are left out and counted in `n`.

  Returns:
    dict of arrays shaped like `x` without `axis`: `mean`, `std` (ddof 1),
    `sem`, `ci_low`, `ci_high`, `n`.
  """
  x = np.asarray(x, np.float64)
  ok = np.isfinite(x)
  n = ok.sum(axis=axis)
  xz = np.where(ok, x, 0.0)
  mean = xz.sum(axis=axis) / np.maximum(n, 1)
  dev = np.where(ok, x - np.expand_dims(mean, axis), 0.0)
  std = np.sqrt((dev**2).sum(axis=axis) / np.maximum(n - 1, 1))
  sem = std / np.sqrt(np.maximum(n, 1))
  half = stats.t.ppf(0.5 + confidence / 2, np.maximum(n - 1, 1)) * sem
  half = np.where(n > 1, half, np.nan)
  mean = np.where(n > 0, mean, np.nan)
  return {"mean": mean, "std": np.where(n > 1, std, np.nan), "sem": sem,
          "ci_low": mean - half, "ci_high": mean + half, "n": n}


def compare(empirical, predicted, *, axis: int = -1) -> dict:
  """Every agreement figure of a trajectory against its prediction.

  Args:
    empirical: `[..., T]` (e.g. `[seeds, modes, T]`).
    predicted: broadcastable to `empirical`.
    axis: the time axis.

  Returns:
    dict of arrays with the time axis removed: `max_rel_error`,
    `mean_rel_error` (see `relative_error`) and `r2`.
  """
  return {
      "max_rel_error": relative_error(empirical, predicted, axis=axis,
                                      reduce="max"),
      "mean_rel_error": relative_error(empirical, predicted, axis=axis,
                                       reduce="mean"),
      "r2": r_squared(empirical, predicted, axis=axis),
  }


# ---- laziness: how far training moved the weights and the kernel ----------
# jax.numpy, so that a train function's `metrics_fn` can log them inside the
# compiled trajectory; they take numpy arrays as well.

def relative_weight_change(params, params0) -> jax.Array:
  """`||theta - theta0|| / ||theta0||` over every leaf of two parameter
  pytrees of the same structure (Euclidean norm of all entries together)."""
  sq = lambda tree: sum(jnp.sum(jnp.square(jnp.asarray(a)))
                        for a in jax.tree_util.tree_leaves(tree))
  diff = jax.tree_util.tree_map(lambda a, b: jnp.asarray(a) - jnp.asarray(b),
                                params, params0)
  return jnp.sqrt(sq(diff) / sq(params0))


def kernel_distance(k, k0) -> jax.Array:
  """`||K - K0||_F / ||K0||_F` over the last two axes (a kernel drift)."""
  k, k0 = jnp.asarray(k), jnp.asarray(k0)
  return jnp.linalg.norm(k - k0, axis=(-2, -1)) / jnp.linalg.norm(k0, axis=(-2, -1))


def kernel_alignment(k, y) -> jax.Array:
  """Kernel-target alignment (Cristianini et al. 2002),
  `<K, Y Y^T>_F / (||K||_F ||Y Y^T||_F)`, in [-1, 1] for a PSD `K`; 1 when `K`
  is proportional to `Y Y^T`. `k: [..., n, n]`, `y: [n]` or `[n, c]`."""
  k, y = jnp.asarray(k), jnp.asarray(y)
  y = y.reshape(y.shape[0], -1)
  yy = y @ y.T
  return (jnp.sum(k * yy, axis=(-2, -1))
          / (jnp.linalg.norm(k, axis=(-2, -1)) * jnp.linalg.norm(yy)))


def effective_rank(w) -> jax.Array:
  """Effective rank of a matrix (Roy & Vetterli 2007): `exp(H(p))` with
  `p_i = sigma_i / sum_j sigma_j` its normalised singular values and `H` the
  entropy; `r` for `r` equal singular values, between 1 and `min(shape)`.
  Batched over leading axes."""
  s = jnp.linalg.svd(jnp.asarray(w), compute_uv=False)
  p = s / jnp.sum(s, axis=-1, keepdims=True)
  return jnp.exp(-jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0),
                          axis=-1))


def loglog_slope(x, y) -> float | None:
  """Least-squares slope of `log y` against `log x` over the finite, positive
  pairs; None with fewer than two distinct `x`."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
  if ok.sum() < 2 or len(set(x[ok])) < 2:
    return None
  return float(np.polyfit(np.log(x[ok]), np.log(y[ok]), 1)[0])


def log_parabola_min(x, y) -> float:
  """Where `y` is least over positive `x`: the vertex of the parabola in `log
  x` through the smallest `y` and its two neighbours (clipped to them), or the
  smallest `y`'s `x` at an end of the grid or where the parabola opens down."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  i = int(np.argmin(y))
  if not 0 < i < len(x) - 1:
    return float(x[i])
  lx = np.log(x[i - 1:i + 2])
  a, b, _ = np.polyfit(lx, y[i - 1:i + 2], 2)
  return float(np.exp(np.clip(-b / (2 * a), lx[0], lx[-1]))) if a > 0 else float(x[i])
