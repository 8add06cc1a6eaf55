"""The training engine: an experiment's pieces as a whole trajectory, one
`lax.scan` a segment, `vmap`ped over rows (grid point x seed).

The engine owns the step. From an experiment's `init` and `loss`
(`dynamics.experiments`) it builds, for one row,

    start(row) -> state, step-0 observations
    advance(state, step0) -> state, (observations, t) at the next `num_logs` logged steps

where one step is

    g = grad_params loss(config, state, data, fold_in(batch_key, k))
    d = direction(g)                  # sgd: g; momentum: a trace of g; adam: scaled moments
    params <- params - lr_k d         # lr_k = train.lr x lr_scale x decay(k)
    t <- t + lr_k                     # time as applied (docs/conventions.md): lr x k,
                                      # rounded once, for a constant step

and records the first step whose loss is not finite (`diverged_at`). A run is
a sequence of `advance` calls (segments) on rows kept padded and sharded on
the devices between calls; `Runner` drives them, so the sweep can checkpoint
the state between segments and show progress on the host, and a trajectory
cut into segments is the same, bit for bit, as one run through: every segment
runs one compiled program.

Seeds (docs/conventions.md): seed `i` of a run uses
`fold_in(PRNGKey(seed), i)`, split into an init key and a batch key; step `k`
draws from `fold_in(batch_key, k)` (with `train.batches = 'shared'`, from one
key every seed of a point shares). Nothing in a seed's trajectory depends on
the other seeds, their number, or how they are batched or sharded, beyond
floating-point rounding of batched matmuls.
"""

from __future__ import annotations

import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dynamics import _rows

PyTree = Any

OPTIMIZERS = ("sgd", "momentum", "adam")
DECAYS = ("constant", "cosine")
BATCHES = ("per_seed", "shared")


def make_optimizer(name: str, lr, *, momentum: float = 0.9,
                   decay_steps: int | None = None) -> optax.GradientTransformation:
  """An optax optimizer by name (`OPTIMIZERS`); `lr` may be traced.

  `'sgd'` is plain gradient descent `theta <- theta - lr grad L`, whose
  trajectories match gradient flow at time `t = lr * steps`. `decay_steps`
  decays `lr` to 0 by a cosine over that many steps. The runner builds the
  same updates from `direction` and its own step size.
  """
  if decay_steps:
    lr = optax.cosine_decay_schedule(lr, decay_steps)
  if name == "sgd":
    return optax.sgd(lr)
  if name == "momentum":
    return optax.sgd(lr, momentum=momentum)
  if name == "adam":
    return optax.adam(lr)
  raise ValueError(f"Unknown optimizer {name!r}; known: {OPTIMIZERS}.")


def direction(name: str, *, momentum: float = 0.9) -> optax.GradientTransformation:
  """The update before the step size: `g` (sgd), the heavy-ball trace
  `m <- momentum m + g` (momentum), or Adam's bias-corrected `m_hat /
  (sqrt(v_hat) + eps)` (optax's `scale_by_adam` defaults). `optax.sgd(lr)`,
  `optax.sgd(lr, momentum)` and `optax.adam(lr)` are `-lr` times these."""
  if name == "sgd":
    return optax.identity()
  if name == "momentum":
    return optax.trace(decay=momentum)
  if name == "adam":
    return optax.scale_by_adam()
  raise ValueError(f"Unknown optimizer {name!r}; known: {OPTIMIZERS}.")


def masked(optimizer: optax.GradientTransformation, mask: PyTree
           ) -> optax.GradientTransformation:
  """`optimizer` restricted to the entries where `mask` is 1 (a 0/1 pytree like
  the parameters, e.g. `theory.pruning.prune_mask`): gradients are zeroed
  there before the optimizer sees them and updates after, so a pruned
  parameter set to 0 stays exactly 0 with any optax optimizer."""
  keep = lambda tree: jax.tree_util.tree_map(
      lambda x, m: jnp.where(m > 0, x, jnp.zeros_like(x)), tree, mask)

  def update(grads, state, params=None):
    updates, state = optimizer.update(keep(grads), state, params)
    return keep(updates), state

  return optax.GradientTransformation(optimizer.init, update)


class TrainState(NamedTuple):
  """One row's scan state."""
  params: PyTree       # what the loss is differentiated in
  opt_state: PyTree    # the direction's state (momentum, Adam moments)
  consts: dict         # init's other entries: per seed, unchanged by training
  key: jax.Array       # the row's batch key
  lr: jax.Array        # [] train.lr x lr_scale
  t: jax.Array         # [] time so far: the sum of the step sizes applied
  t_carry: jax.Array   # [] Kahan compensation of t (float32 runs of many steps)
  diverged_at: jax.Array  # [] int32, first step whose loss was not finite; -1
  row: dict            # the row's inputs (its key, grid point, batched config fields)


class Schedule(NamedTuple):
  """What the engine reads of `config.train` (static for a compiled group)."""
  num_steps: int
  log_every: int
  optimizer: str = "sgd"
  momentum: float = 0.9
  decay: str = "constant"
  batches: str = "per_seed"

  @classmethod
  def of(cls, config) -> "Schedule":
    tr = config.train
    return cls(int(tr.num_steps), int(tr.log_every), tr.get("optimizer", "sgd"),
               float(tr.get("momentum", 0.9)), tr.get("decay", "constant"),
               tr.get("batches", "per_seed"))

  @property
  def num_logs(self) -> int:
    return self.num_steps // self.log_every


def split_state(state: dict, who: str = "init") -> tuple[PyTree, dict]:
  """`(params, consts)` of an experiment's state dict."""
  if not isinstance(state, dict) or "params" not in state:
    raise ValueError(f"{who}() must return a dict with 'params' (and any per-seed "
                     f"constants), got {type(state).__name__}.")
  if "opt_state" in state:
    raise ValueError(f"{who}() returned a constant named 'opt_state': that name is the "
                     f"optimizer's state, which observe() sees; rename the constant.")
  return state["params"], {k: v for k, v in state.items() if k != "params"}


def _kahan(t, c, x):
  y = x - c
  s = t + y
  return s, (s - t) - y


def row_program(experiment, bind: Callable, data_of: Callable, schedule: Schedule,
                num_logs: int):
  """`(start, advance, advance_into)` row functions (`dynamics._rows` shape
  `fn(row, shared)`): `advance` returns its `num_logs` logged steps (planning
  traces it); `advance_into` writes a traced number of them into whole-run
  buffers carried between calls (the runner's program).

  Args:
    experiment: the module (`init`, `loss`, optional `observe`).
    bind: `bind(row) -> config`: the row's config, its batched fields traced.
    data_of: `data_of(row, shared) -> data`: the row's grid point's `setup`
      arrays.
    schedule: `Schedule.of(config)`.
    num_logs: logged steps one `advance` call takes.

  `row` holds `key` (the seed's key) and what `bind`/`data_of` read; `shared`
  holds the data and `step0` (the step an advance call starts at) and, for
  `train.batches = 'shared'`, `batch_key`.
  """
  direction_fn = direction(schedule.optimizer, momentum=schedule.momentum)
  observe = getattr(experiment, "observe", None)
  decay = (optax.cosine_decay_schedule(1.0, schedule.num_steps)
           if schedule.decay == "cosine" else None)

  def watch(config, params, consts, data, opt_state):
    if observe is None:
      return {"loss": experiment.loss(config, {**consts, "params": params}, data, None)}
    return observe(config, {**consts, "params": params, "opt_state": opt_state}, data)

  def start(row, shared):
    config, data = bind(row), data_of(row, shared)
    init_key, batch_key = jax.random.split(row["key"])
    params, consts = split_state(experiment.init(config, init_key, data))
    leaf = jax.tree_util.tree_leaves(params)[0]
    dtype = leaf.dtype if jnp.issubdtype(leaf.dtype, jnp.floating) else jnp.float32
    lr = jnp.asarray(config.train.lr, dtype) * jnp.asarray(consts.get("lr_scale", 1.0), dtype)
    zero = jnp.zeros((), dtype)
    opt_state = direction_fn.init(params)
    state = TrainState(params, opt_state, consts, batch_key, lr, zero, zero,
                       -jnp.ones((), jnp.int32), row)
    return state, watch(config, params, consts, data, opt_state)

  def logger(state: TrainState, shared):
    """`log(s, i)`: logged step `i` of a call starting at `shared['step0']`."""
    config, data = bind(state.row), data_of(state.row, shared)
    consts = state.consts

    def loss_of(params, key):
      return experiment.loss(config, {**consts, "params": params}, data, key)

    grad = jax.value_and_grad(loss_of)

    def step(s: TrainState, k):
      key = jax.random.fold_in(shared["batch_key"] if "batch_key" in shared else s.key, k)
      loss, g = grad(s.params, key)
      d, opt_state = direction_fn.update(g, s.opt_state, s.params)
      lr_k = s.lr if decay is None else s.lr * decay(k).astype(s.lr.dtype)
      params = jax.tree_util.tree_map(lambda p, u: p - u * lr_k.astype(u.dtype), s.params, d)
      t, c = (s.t, s.t_carry) if decay is None else _kahan(s.t, s.t_carry, lr_k)
      diverged = jnp.where((s.diverged_at < 0) & ~jnp.isfinite(loss), k.astype(jnp.int32),
                           s.diverged_at)
      return s._replace(params=params, opt_state=opt_state, t=t, t_carry=c,
                        diverged_at=diverged), None

    def log(s: TrainState, i):
      first = shared["step0"] + i * schedule.log_every
      s, _ = jax.lax.scan(step, s, first + jnp.arange(schedule.log_every))
      if decay is None:  # a constant step: t = lr x steps, rounded once
        s = s._replace(t=s.lr * (first + schedule.log_every).astype(s.lr.dtype))
      return s, (watch(config, s.params, consts, data, s.opt_state), s.t)

    return log

  def advance(state: TrainState, shared):
    return jax.lax.scan(logger(state, shared), state, jnp.arange(num_logs))

  def advance_into(state_logs, shared):
    """`shared['count']` logged steps from `shared['step0']` (both traced: one
    program runs a call of any length), each written into the row's
    whole-run buffers `logs = (observations, t)` `[num_logs_total, ...]`."""
    state, logs = state_logs
    log = logger(state, shared)
    at = shared["step0"] // schedule.log_every

    def body(i, carry):
      s, buffers = carry
      s, out = log(s, i)
      buffers = jax.tree_util.tree_map(
          lambda b, o: jax.lax.dynamic_update_index_in_dim(b, o.astype(b.dtype), at + i, 0),
          buffers, out)
      return s, buffers

    state, logs = jax.lax.fori_loop(0, shared["count"], body, (state, logs))
    return (state, logs), state.diverged_at  # the last: a marker to wait on
  return start, advance, advance_into


MIN_SEGMENT_STEPS = 100  # each call costs up to a few ms on a CPU (docs/performance.md)
SEGMENTS = 20  # segments a long trajectory is cut into: progress and checkpoints at each 5%
SEGMENT_S = 0.5  # seconds a segment runs at least, once the second one has been timed


def segment_logs(num_logs: int, log_every: int = 1, target: int | None = None) -> int:
  """Logged steps of a run's first two segments (and of every segment of a
  run whose segments take over `SEGMENT_S`): a divisor of `num_logs` near
  `num_logs / target` (default `SEGMENTS`), at least 1, and of at least
  `MIN_SEGMENT_STEPS` steps where the run has them: each segment is one
  call, which costs up to a few ms on two CPU devices, where the host thread
  shares the cores with both (`docs/performance.md`)."""
  want = max(1, num_logs // (target or SEGMENTS), -(-MIN_SEGMENT_STEPS // log_every))
  divisors = [d for d in range(1, num_logs + 1) if num_logs % d == 0]
  return min(divisors, key=lambda d: (abs(d - want), d))


class Runner:
  """Runs the rows of one compiled group: start, then segments of `advance`.

  `rows`: the row inputs (leading axis; `key` and what `bind` reads);
  `shared`: inputs every row shares (the data). The start and a fixed-length
  segment are traced once each for planning (`_rows.profile`); the start and
  the segment of any length (`advance_into`) are compiled once on first use.

  Segments: the first two run `seg_logs` logged steps (about 5% of the run);
  from the second one's time on, a segment runs `seg_logs` or as many as take
  `SEGMENT_S`, whichever is more (`adaptive=False`: always `seg_logs`). Every
  segment runs the same compiled program (the count is an argument), which
  writes into whole-run buffers kept on the devices, so how a run is cut
  changes nothing in it, bit for bit, and a run of a fraction of a second is
  a handful of calls. (The buffers are not donated: on a CPU a donating call
  waits for the one before it, and `deep_linear_small` at 256 seeds ran 25%
  slower.)
  """

  def __init__(self, experiment, bind, data_of, schedule: Schedule, rows, shared,
               *, devices=None, chunk=None, seg_logs: int | None = None,
               adaptive: bool = True):
    self.schedule = schedule
    self._experiment, self._bind, self._data_of = experiment, bind, data_of
    self.seg_logs = seg_logs or segment_logs(schedule.num_logs, schedule.log_every)
    self.adaptive = adaptive
    start, advance, into = row_program(experiment, bind, data_of, schedule, self.seg_logs)
    self.start_fn, self.advance_fn = _rows.vmap_rows(start), _rows.vmap_rows(advance)
    self.into_fn = _rows.vmap_rows(into)
    self.rows, self.shared = rows, dict(shared)
    self.num_rows = jax.tree_util.tree_leaves(rows)[0].shape[0]
    self.devices, self.chunk = devices, chunk
    chunkable = schedule.batches != "shared"  # a chunk would draw the shared batches again
    self.start_profile = _rows.profile(self.start_fn, rows, self._shared(0))
    self.state_shape = self.start_profile.out[0]  # per row
    self.first_shape = self.start_profile.out[1]
    # planning reads the fixed-length segment (its largest arrays are a
    # segment's, not the whole-run buffers, which each step touches once)
    self.advance_profile = _rows.profile(self.advance_fn, self.state_shape, self._shared(0))
    self.chunkable = chunkable
    self.calls = 0  # segments of the last run

  def params0(self, a: int, b: int):
    """The initial `params` of rows `a:b` (numpy): `init` again, compiled
    once per group, in the run's precision."""
    if getattr(self, "_init_fn", None) is None:
      def one(row, shared):
        config = self._bind(row)
        key = jax.random.split(row["key"])[0]
        return split_state(self._experiment.init(config, key, self._data_of(row, shared)))[0]
      self._init_fn = _rows.vmap_rows(one)
    rows = jax.tree_util.tree_map(lambda x: x[a:b], self.rows)
    return _rows.run_rows(self._init_fn, rows, self._shared(0), devices=self.devices)

  def _shared(self, step0: int) -> dict:
    return {**self.shared, "step0": jnp.asarray(step0, jnp.int32)}

  def plan(self, num_rows: int):
    """`(start_plan, advance_plan, padded rows)` for `num_rows` rows."""
    adv = _rows.plan_rows(self.advance_profile, num_rows, devices=self.devices,
                          chunk=self.chunk, chunkable=self.chunkable)
    start = _rows.plan_rows(self.start_profile, num_rows, devices=self.devices,
                            chunk=adv.chunk, chunkable=self.chunkable)
    if len(start.devices) != len(adv.devices):
      start = _rows.RowPlan(start.devices, adv.chunk)
    return start, adv, _rows.padded(num_rows, adv)

  def _buffers(self, num_padded: int, logged=None, done: int = 0):
    """Whole-run `(observations, t)` buffers `[rows, num_logs, ...]` on the
    host: zeros, with the first `done` logged steps from `logged` (a
    checkpoint's list of `(observations, t)`)."""
    total = self.schedule.num_logs
    obs = {k: np.zeros((num_padded, total) + v.shape[1:], v.dtype)
           for k, v in self.first_shape.items()}
    t = np.zeros((num_padded, total), self.state_shape.t.dtype)
    if done:
      logged = list(logged)
      n = logged[0][1].shape[0]
      for k in obs:
        obs[k][:n, :done] = np.concatenate([o[k] for o, _ in logged], axis=1)[:, :done]
      t[:n, :done] = np.concatenate([tt for _, tt in logged], axis=1)[:, :done]
    return obs, t

  def run(self, a: int, b: int, *, resume=None, on_segment=None):
    """Rows `a:b` from step 0, or from `resume = (done_logs, state, first,
    logged)` (a checkpoint's content). `on_segment(done_logs, state, first,
    logged)` is called after the start (0) and every segment (progress,
    checkpoints; `state` on the devices, padded; `logged`, iterated, copies
    the logged steps so far to the host, before the next segment reuses the
    buffers). Returns `(first, logged, t, state)` on the host: step-0
    observations `[R, ...]`, the logged observations `[R, L-1, ...]`, their
    times `[R, L-1]` and the final state (padded rows dropped)."""
    n = b - a
    start_plan, adv_plan, num_padded = self.plan(n)
    rows = jax.tree_util.tree_map(lambda x: x[a:b], self.rows)
    if resume is None:
      state, first = _rows.call(self.start_fn, _rows.shard_rows(rows, start_plan, num_padded),
                                self._shared(0), start_plan)
      if list(start_plan.devices) != list(adv_plan.devices):
        state = _rows.shard_rows(_rows.to_host(state, num_padded), adv_plan, num_padded)
      else:  # one input sharding for every segment: advance compiles once
        state = _rows.place(state, adv_plan)
      first = _rows.to_host(first, n)
      done, logs = 0, self._buffers(num_padded)
    else:
      done, state, first, logged = resume
      state = _rows.shard_rows(state, adv_plan, num_padded)
      logs = self._buffers(num_padded, logged, done)
    logs = _rows.shard_rows(logs, adv_plan, num_padded)
    if on_segment is not None and resume is None:
      on_segment(0, state, first, _Logged(logs, 0, n))
    total, every = self.schedule.num_logs, self.schedule.log_every
    shared = _rows.replicate(self.shared, adv_plan)  # placed once, not at every segment
    markers, per_log, self.calls = [], None, 0
    while done < total:
      count = self.seg_logs
      if self.adaptive and per_log is not None:
        count = max(count, int(SEGMENT_S / max(per_log, 1e-12)))
      count = min(count, total - done)
      began = time.perf_counter()
      (state, logs), marker = _rows.call(
          self.into_fn, (state, logs),
          {**shared, "step0": np.int32(done * every), "count": np.int32(count)}, adv_plan)
      self.calls += 1
      if self.adaptive and self.calls <= 2:  # the first compiles; the second is timed
        jax.block_until_ready(marker)
        if self.calls == 2:
          per_log = (time.perf_counter() - began) / count
      # Two segments in flight: the host waits for the one before the
      # previous (progress, checkpoints and interrupts then follow the
      # devices within two segments), so the devices always have the next one
      # queued.
      markers.append(marker)
      if len(markers) > 2:
        jax.block_until_ready(markers.pop(0))
      done += count
      if on_segment is not None:
        on_segment(done, state, first, _Logged(logs, done, n))
    state = _rows.to_host(state, n)
    obs, t = _rows.to_host(logs, n)
    return first, obs, t, state


class _Logged:
  """The logged steps so far, handed to `on_segment`: iterating copies them
  from the devices (one `(observations, t)` pair)."""

  def __init__(self, logs, done, num_rows):
    self._logs, self._done, self._n, self._host = logs, done, num_rows, None

  def __iter__(self):
    if self._host is None:
      obs, t = _rows.to_host(self._logs, self._n)
      self._host = ({k: v[:, :self._done] for k, v in obs.items()}, t[:, :self._done])
    yield self._host


def seed_keys(seed: int, num_seeds: int, start: int = 0) -> jax.Array:
  """Keys of seeds `start, ..., start + num_seeds - 1`: `fold_in(PRNGKey(seed), i)`."""
  base = jax.random.PRNGKey(seed)
  return jax.vmap(lambda i: jax.random.fold_in(base, i))(
      jnp.arange(start, start + num_seeds, dtype=jnp.uint32))


def shared_batch_key(seed: int) -> jax.Array:
  """The batch key every seed of a point shares under `train.batches = 'shared'`."""
  return jax.random.fold_in(jax.random.PRNGKey(seed), np.uint32(2**32 - 1))


def trajectory(params: PyTree, *, loss_fn: Callable, data: tuple,
               optimizer: optax.GradientTransformation,
               metrics_fn: Callable[[PyTree], dict], num_steps: int,
               log_every: int, key: jax.Array | None = None,
               batch_size: int | None = None):
  """One trajectory outside the runner (tests, notebooks): `num_steps` steps of
  `optimizer` on `loss_fn(params, *data)`, `metrics_fn(params)` at steps `0,
  log_every, ..., num_steps`. `data` may be a sampler `data(key) -> tuple`
  (fresh samples every step from `fold_in(key, step)`); `batch_size` draws
  minibatches without replacement. Returns `(final params, metrics [L, ...],
  diverged_at)`."""
  if num_steps % log_every:
    raise ValueError(f"num_steps={num_steps} must be a multiple of log_every={log_every}.")
  key = jax.random.PRNGKey(0) if key is None else key
  grad_fn = jax.value_and_grad(loss_fn)
  online = callable(data)

  def step(carry, k):
    p, s, div = carry
    batch = data(jax.random.fold_in(key, k)) if online else data
    if not online and batch_size is not None:
      n = jax.tree_util.tree_leaves(data)[0].shape[0]
      if batch_size < n:
        idx = jax.random.choice(jax.random.fold_in(key, k), n, (batch_size,), replace=False)
        batch = jax.tree_util.tree_map(lambda a: a[idx], data)
    loss, g = grad_fn(p, *batch)
    u, s = optimizer.update(g, s, p)
    div = jnp.where((div < 0) & ~jnp.isfinite(loss), k, div)
    return (optax.apply_updates(p, u), s, div), None

  def log(carry, i):
    carry, _ = jax.lax.scan(step, carry, i * log_every + jnp.arange(log_every))
    return carry, metrics_fn(carry[0])

  carry = (params, optimizer.init(params), -jnp.ones((), jnp.int32))
  carry, logged = jax.lax.scan(log, carry, jnp.arange(num_steps // log_every))
  first = metrics_fn(params)
  logged = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a[None], b]), first, logged)
  return carry[0], logged, carry[2]


def timed(fn, *args):
  """`(seconds, fn(*args))`, blocking until the result is ready."""
  t = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  return time.perf_counter() - t, out
