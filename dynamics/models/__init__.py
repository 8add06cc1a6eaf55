"""Models as `(init, apply)` pairs of pure functions over plain pytrees
(docs/conventions.md), and wrappers that act on any `apply`."""

from __future__ import annotations

from typing import Callable


def centered(apply_fn: Callable, params0, alpha) -> Callable:
  """`f_alpha(params, x) = alpha (f(params, x) - f(params0, x))`: the model
  of lazy training by output scaling (Chizat, Oyallon & Bach 2019), zero at
  init whatever `alpha`. Trained with step `lr / alpha^2` it approaches, as
  `alpha -> inf`, the linearisation around `params0` (`theory.ntk.linearized`)
  at time `t = lr x steps`, with gap `O(1 / alpha)`. `alpha` may be traced."""
  def apply(params, x):
    return alpha * (apply_fn(params, x) - apply_fn(params0, x))
  return apply
