"""A tanh MLP against its empirical-NTK linearization (docs/experiments.md walks through it).

Public API only. Each seed's theory is its linearization around init, `f_lin(k) = y +
(I - lr K/n)^k (f0 - y)` with the empirical NTK `K` (`theory.ntk.gradient_descent_mse`,
exact for the linear model). The distance to it falls at least like 1/sqrt(width) (Lee
et al. 2019), like 1/width for a smooth activation (docs/ntk.md); the sweep fits the slope.
"""

import jax.numpy as jnp
import numpy as np

from dynamics import config as cfg
from dynamics import logged_times, make_optimizer, metrics, plots, trajectory
from dynamics.models import mlp
from theory import ntk

HPARAMS = {"train.lr": "lr"}  # every lr of a width runs in one compiled call


def validate(config):
  cfg.integer(config, "model.width"), cfg.integer(config, "model.depth")
  cfg.schedule(config)  # train.lr > 0, num_steps a multiple of log_every


def data(config):
  """Inputs on the sphere of radius sqrt(d), target y = x_0 x_1 (the task seed)."""
  x = np.random.default_rng(config.task.seed).normal(size=(config.task.n + 8, config.task.d))
  x *= np.sqrt(config.task.d) / np.linalg.norm(x, axis=1, keepdims=True)
  return x[:config.task.n], x[:config.task.n, 0] * x[:config.task.n, 1], x[config.task.n:]


def make_train(config):
  x, y, x_test = (jnp.asarray(a, jnp.float32) for a in data(config))
  f = lambda p, x: mlp.apply(p, x, activation="tanh")
  loss = lambda p, x, y: 0.5 * jnp.mean((f(p, x) - y) ** 2)

  def train(key, hp):
    p0 = mlp.init(key, config.task.d, (config.model.width,) * config.model.depth)
    state, logged = trajectory(
        p0, loss_fn=loss, data=(x, y), optimizer=make_optimizer("sgd", hp["lr"]),
        metrics_fn=lambda p: {"loss": loss(p, x, y), "f_test": f(p, x_test)},
        num_steps=config.train.num_steps, log_every=config.train.log_every)
    return {**logged, "diverged_at": state.diverged_at, "f0": f(p0, x),
            "k": ntk.empirical_ntk(f, p0, x, x), "k_test": ntk.empirical_ntk(f, p0, x_test, x)}

  return train


CONSTANTS = ("f0", "k", "k_test")  # per seed, not logged over steps


def theory(config, out):
  """Each seed's linearization, from its own init and kernel."""
  _, y, _ = data(config)
  step, _ = logged_times(config)
  f, ft = zip(*(ntk.gradient_descent_mse(out["k"][s], y, config.train.lr, step, out["f0"][s],
                                         out["k_test"][s], out["f_test"][s, 0])
                for s in range(len(out["k"]))))
  return {"loss": 0.5 * np.mean((np.asarray(f) - y) ** 2, -1), "f_test": np.asarray(ft)}


def summarize(config, out, pred):
  """Distance to the linearization: max over t of |f - f_lin| / max |f_lin|."""
  cmp = metrics.compare(np.moveaxis(out["f_test"], 1, -1), np.moveaxis(pred["f_test"], 1, -1))
  return {"distance": float(np.mean(cmp["max_rel_error"]))}


def by_lr(points):  # {lr: (widths, distances)}
  out = {}
  for pt in points:
    w, d = out.setdefault(pt.config.train.lr, ([], []))
    w.append(pt.config.model.width), d.append(pt.summary.get("distance", np.nan))
  return out


def sweep_summary(config, points):
  return {f"slope_lr_{lr}": float(np.polyfit(np.log(w), np.log(d), 1)[0])
          for lr, (w, d) in by_lr(points).items() if len(w) > 1}


def sweep_plot(config, points, summary, path):
  fig, (ax,) = plots.figure()
  for lr, (w, d) in sorted(by_lr(points).items()):
    ax.loglog(w, d, "o-", label=f"lr {lr}: slope {summary.get(f'slope_lr_{lr}', np.nan):.2f}")
  for power, style in ((-0.5, "k--"), (-1.0, "k:")):
    ax.loglog(w, d[0] * (np.array(w) / w[0]) ** power, style, label=f"slope {power}")
  ax.set(xlabel="width m", ylabel="distance to the linearization", title="tanh MLP")
  ax.legend()
  plots.save(fig, path)
