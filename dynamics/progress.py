"""A thread-safe tqdm bar fed from inside compiled scans (`jax.debug.callback`)."""

from __future__ import annotations

import threading

from tqdm.auto import tqdm


class Progress:
  """`progress(step)` moves the bar to `step`; callbacks from several devices
  or vmapped seeds report the same step and only the largest counts. The bar
  appears only for runs longer than `delay` seconds."""

  def __init__(self, total: int, desc: str = "", delay: float = 2.0):
    self._bar = tqdm(total=total, desc=desc, unit="step", delay=delay,
                     dynamic_ncols=True)
    self._lock = threading.Lock()

  def __call__(self, step: int) -> None:
    with self._lock:
      if step > self._bar.n:
        self._bar.update(step - self._bar.n)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self._bar.close()
