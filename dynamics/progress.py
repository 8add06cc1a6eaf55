"""The engine's progress bar, fed from inside compiled scans.

`dynamics.train.make_advance` ticks (`jax.debug.callback`, no batched operand,
so one host call per chunk of rows, not one per seed) every few logged
intervals. The ticks go to the bar of the running call, which the row runner
opens (`bar`) and tells what one tick is worth (`expect`); with no bar open a
tick does nothing. The unit is the seed-step: one optimizer step of one seed
(or grid-point row), so the rate the bar shows is the engine's throughput.

How many steps one row takes is counted while the row function is traced
(`counting`, `count`), so the bar knows its total before anything runs.
"""

from __future__ import annotations

import contextlib
import threading

from tqdm.auto import tqdm

_lock = threading.Lock()
_active: "Bar | None" = None   # the bar of the running call (one per process)
_counted: list | None = None   # steps counted while tracing, when asked


def count(steps: int) -> None:
  """Called at trace time by `make_advance`: a row will take `steps` more steps."""
  if _counted is not None:
    _counted.append(int(steps))


@contextlib.contextmanager
def counting():
  """`with counting() as steps:` the steps traced inside, `sum(steps)` after."""
  global _counted
  outer, _counted = _counted, []
  try:
    yield _counted
  finally:
    _counted = outer


def tick(steps: int) -> None:
  """Host side of a tick: `steps` more steps done by the rows of one chunk."""
  bar = _active
  if bar is not None:
    bar._tick(steps)


class Bar:
  """A tqdm bar in seed-steps that appears for runs longer than `delay` s."""

  def __init__(self, total: int, desc: str = "train", delay: float = 2.0,
               disable: bool = False):
    import sys
    self._bar = tqdm(total=int(total), desc=desc, unit="seed-step", unit_scale=True,
                     delay=delay, dynamic_ncols=True, disable=disable,
                     mininterval=0.1 if sys.stderr.isatty() else 10)  # logs: a line per 10 s
    self.n = 0            # seed-steps counted so far
    self.ticks = 0        # ticks received
    self._done = 0        # seed-steps of finished calls
    self._cap = 0         # where the running call ends
    self._per_step = 0    # seed-steps one ticked step of one chunk is worth

  def _move(self, new: int) -> None:
    if new > self.n:
      self._bar.update(new - self.n)
      self.n = new

  def _tick(self, steps: int) -> None:
    with _lock:
      self.ticks += 1
      self._move(min(self.n + steps * self._per_step, self._cap))

  @contextlib.contextmanager
  def expect(self, rows_per_chunk: int, work: int):
    """One call of the runner: `work` seed-steps, ticks from chunks of
    `rows_per_chunk` rows. The bar lands on its end when the call returns."""
    with _lock:
      self._per_step, self._cap = rows_per_chunk, self._done + work
    try:
      yield
    finally:
      with _lock:
        self._done = self._cap
        self._per_step = 0
        self._move(self._done)

  def skip(self, work: int) -> None:
    """Work already done (resumed from disk): counted, not timed."""
    with _lock:
      self._done += work
      self._cap = self._done
      self._move(self._done)

  def write(self, text: str) -> None:
    self._bar.write(text)


@contextlib.contextmanager
def bar(total: int, desc: str = "train", **kwargs):
  """Opens the bar that ticks go to; nested calls keep the outer bar."""
  global _active
  if _active is not None:
    yield _active
    return
  b = Bar(total, desc, **kwargs)
  _active = b
  try:
    yield b
  finally:
    _active = None
    b._bar.close()


def active() -> "Bar | None":
  return _active
