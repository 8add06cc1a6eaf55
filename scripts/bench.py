"""Benchmarks: named workloads on whatever backend JAX finds.

    python scripts/bench.py [WORKLOAD ...] [--seeds N ...] [--steps T] [--json]

Prints a table and one JSON line per (workload, seed count) with `workload`,
`seeds`, `steps`, `seed_steps_per_s`, `compile_s`, `run_s` (median of
`--repeats` runs after a warm-up), `gflops` (from the FLOP count of the plain
formulation: forward `2 P sum(fan_in fan_out)` per seed-step, backward twice
that), `peak_fraction` (of the best 2048x2048 float32 matmul measured in the
same process), `peak_rss_mb` (the row's process: every row runs in a fresh
subprocess unless `--in_process`), `loop_speedup` (over a Python loop of
single jitted steps, one seed at a time, in the same process) and, for
`empirical_ntk`, `seconds` and, for its fast, general and batched
(`batch_size` examples at a time) paths, `*_s` and `*_temp_gb` (the compiled
program's temporary memory). With `--json` only the JSON lines are printed.
Results and the commands: docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dynamics import curvature, io
from dynamics import train as engine
from dynamics.models import deep_linear, linear_attention, relu_net
from dynamics.tasks import icl_regression
from dynamics.tasks.linear_teacher import linear_teacher
from theory import ntk

SHARPNESS_ITERS = 20  # relu_train_sharpness: Hessian-vector products per logged step

DEFAULT_SEEDS = {"deep_linear": (1, 64, 1024), "deep_linear_stats": (1, 64, 1024),
                 "deep_linear_small": (1, 256, 4096), "deep_linear_small_stats": (1, 256, 4096),
                 "relu_train": (1, 16, 64), "relu_train_sharpness": (1, 16, 64),
                 "lsa_icl": (1, 16), "lsa_icl_shared": (1, 16), "lsa_icl_tokens": (1, 16),
                 "empirical_ntk": (1,),
                 "sweep": (64,)}
DEFAULT_STEPS = {"deep_linear": 2000, "deep_linear_stats": 2000, "deep_linear_small": 5000,
                 "deep_linear_small_stats": 5000,
                 "relu_train": 2000, "relu_train_sharpness": 2000, "lsa_icl": 2000, "lsa_icl_shared": 2000,
                 "lsa_icl_tokens": 2000,
                 "empirical_ntk": 0, "sweep": 2000}


def _timed(fn, *args):
  t = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  return time.perf_counter() - t, out


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  jax.block_until_ready(f(a))
  best = min(_timed(f, a)[0] for _ in range(repeats))
  return 2 * n**3 / best / 1e9


# --- workloads: an experiment's pieces (`init`, `loss`, `observe`) and data,
# run by the engine's own runner (`dynamics.train.Runner`: start, then
# segments of the compiled scan, as every experiment runs), the pieces of a
# single Python-loop step, and the FLOPs of a seed-step ---

def _experiment(init, loss, observe, data, lr, steps, log_every, batches="per_seed"):
  exp = types.SimpleNamespace(init=lambda c, k, d: {"params": init(k)},
                              loss=lambda c, s, d, k: loss(s["params"], d, k),
                              observe=lambda c, s, d: observe(s["params"], d))
  config = types.SimpleNamespace(train=types.SimpleNamespace(lr=lr))
  schedule = engine.Schedule(steps, log_every, batches=batches)
  return exp, config, schedule, data


def _deep_linear(depth, d, hidden, p, lr, steps, log_every, stats=False):
  log_every = log_every if steps % log_every == 0 else steps
  sizes = deep_linear.layer_sizes(d, d, hidden, depth)
  task = linear_teacher(jax.random.PRNGKey(0), d_in=d, d_out=d, num_samples=p,
                        singular_values=jnp.linspace(3.0, 0.5, d))
  if stats:
    data = {"xy": deep_linear.statistics(task.x, task.y)}
    loss = lambda w, dd, k: deep_linear.stats_loss(w, *dd["xy"])
  else:
    data = {"xy": (task.x, task.y)}
    loss = lambda w, dd, k: 0.5 * jnp.mean(jnp.sum((deep_linear.apply(w, dd["xy"][0])
                                                    - dd["xy"][1]) ** 2, -1))
  data.update(u=task.u_modes, v=task.v_modes)
  observe = lambda w, dd: {"loss": loss(w, dd, None),
                           "u": deep_linear.mode_strengths(w, dd["u"], dd["v"])}
  init = lambda key: deep_linear.init_random(key, sizes, 0.5)
  flops = 6 * p * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
  return _experiment(init, loss, observe, data, lr, steps, log_every), \
      (init, lambda w: loss(w, data, None), optax.sgd(lr)), flops


def _relu_train(steps, d=64, m=1024, p=512, lr=0.5, sharpness=False):
  k_x, k_t = jax.random.split(jax.random.PRNGKey(0))
  x = jax.random.normal(k_x, (p, d))
  y = relu_net.apply(relu_net.init(k_t, d, 16, bias=False), x)
  loss = lambda w, dd, k: 0.5 * jnp.mean((relu_net.apply(w, dd["x"]) - dd["y"]) ** 2)
  init = lambda key: relu_net.init(key, d, m, bias=False)
  data = {"x": x, "y": y}
  observe = lambda w, dd: {"loss": loss(w, dd, None)}
  if sharpness:  # the Hessian's top eigenvalue at every logged step, 20 products
    observe = lambda w, dd: {"loss": loss(w, dd, None), "sharpness": curvature.top_eigenvalues(
        lambda v: loss(v, dd, None), w, num_iters=SHARPNESS_ITERS)[0]}
  return _experiment(init, loss, observe, data, lr, steps, max(steps // 20, 1)), \
      (init, lambda w: loss(w, data, None), optax.sgd(lr)), 6 * p * (d * m + m)


def _lsa_icl(steps, d=10, n=40, batch=512, lr=0.05, shared=False, moments=True):
  cs = jnp.eye(d)
  evals = tuple(icl_regression.sample(jax.random.PRNGKey(1), 1024, n, cs))
  init = lambda key: linear_attention.init(key, d)
  # fresh prompts every step, drawn from the step key: as moments (the
  # experiment's default for Gaussian inputs) or as tokens
  if moments:
    draw = lambda k: tuple(icl_regression.sample_moments(k, batch, n, cs, 0.0))
    loss_fn = linear_attention.loss_moments
  else:
    draw = lambda k: tuple(icl_regression.sample(k, batch, n, cs))
    loss_fn = linear_attention.loss
  loss = lambda w, dd, k: loss_fn(w, *draw(k))
  observe = lambda w, dd: {"loss": linear_attention.loss(w, *dd["evals"])}
  # the plain layer W_PV (Z M Z^T) W_KQ Z on [d+1, N+1] tokens, forward + 2x backward
  e, t = d + 1, n + 1
  flops = 3 * batch * (2 * e * e * t * 2 + 2 * e**3 * 2)
  return _experiment(init, loss, observe, {"evals": evals}, lr, steps, max(steps // 20, 1),
                     "shared" if shared else "per_seed"), \
      (init, lambda w, k: loss_fn(w, *draw(k)), optax.sgd(lr)), flops


def build(workload: str, steps: int):
  if workload == "deep_linear":
    return _deep_linear(3, 16, 32, 256, 0.05, steps, 10)
  if workload == "deep_linear_stats":
    return _deep_linear(3, 16, 32, 256, 0.05, steps, 10, stats=True)
  if workload == "deep_linear_small":
    return _deep_linear(2, 8, 16, 64, 0.05, steps, 50)
  if workload == "deep_linear_small_stats":
    return _deep_linear(2, 8, 16, 64, 0.05, steps, 50, stats=True)
  if workload == "relu_train":
    return _relu_train(steps)
  if workload == "relu_train_sharpness":
    return _relu_train(steps, sharpness=True)
  if workload == "lsa_icl":
    return _lsa_icl(steps)
  if workload == "lsa_icl_shared":
    return _lsa_icl(steps, shared=True)
  if workload == "lsa_icl_tokens":
    return _lsa_icl(steps, moments=False)
  raise ValueError(f"unknown workload {workload!r}; known: {', '.join(DEFAULT_SEEDS)}")


def loop_rate(pieces, steps: int, seeds: int = 2) -> float:
  """Seed-steps per second of a Python loop of single jitted GD steps."""
  init, loss, opt = pieces
  online = loss.__code__.co_argcount == 2  # loss(w, key): fresh data per step

  @jax.jit
  def step(w, s, k):
    g = jax.grad(loss)(w, k) if online else jax.grad(loss)(w)
    updates, s = opt.update(g, s, w)
    return optax.apply_updates(w, updates), s

  keys = engine.seed_keys(123, seeds)
  w = init(keys[0])
  jax.block_until_ready(step(w, opt.init(w), keys[0]))
  n = min(steps, 200)
  t = time.perf_counter()
  for i in range(seeds):
    key = keys[i]
    w = init(key)
    s = opt.init(w)
    for j in range(n):
      w, s = step(w, s, jax.random.fold_in(key, j) if online else key)
  jax.block_until_ready(w)
  return seeds * n / (time.perf_counter() - t)


NTK_SIZE = {"d": 64, "m": 4096, "n": 1024}


def run_row(workload: str, seeds: int, steps: int, repeats: int, peak: float) -> dict:
  row = {"workload": workload, "seeds": seeds, "steps": steps,
         "backend": jax.default_backend(), "devices": jax.device_count()}
  if workload == "empirical_ntk":
    return {**row, **_ntk_row(repeats, **NTK_SIZE)}
  if workload == "sweep":
    return {**row, **_sweep_row(seeds, steps, repeats)}
  (exp, config, schedule, data), pieces, flops = build(workload, steps)
  shared = {"data": data}
  if schedule.batches == "shared":
    shared["batch_key"] = engine.shared_batch_key(0)
  runner = engine.Runner(exp, lambda row: config, lambda row, sh: sh["data"], schedule,
                         {"key": engine.seed_keys(0, seeds)}, shared)
  first, _ = _timed(lambda: runner.run(0, seeds))  # compiles the start and the scan
  run_s = float(np.median([_timed(lambda: runner.run(0, seeds))[0] for _ in range(repeats)]))
  _, adv, _ = runner.plan(seeds)
  row.update(devices=len(adv.devices), chunk=adv.chunk, segments=runner.calls,
             compile_s=first - run_s)
  rate = seeds * steps / run_s
  row.update(run_s=run_s, seed_steps_per_s=rate, gflops=flops * rate / 1e9,
             peak_fraction=flops * rate / 1e9 / peak,
             loop_speedup=rate / loop_rate(pieces, steps))
  return row


def _ntk_row(repeats, d=64, m=4096, n=1024) -> dict:
  """The fast ReLU path, the general per-example-Jacobian path and the
  general path in blocks of `batch_size` examples: seconds and the compiled
  program's temporary memory (XLA's `memory_analysis`)."""
  params = relu_net.init(jax.random.PRNGKey(0), d, m)
  x = jax.random.normal(jax.random.PRNGKey(1), (n, d))
  batch_size = max(1, min(256, n // 4))
  fast = jax.jit(lambda p, a: ntk.relu_empirical_ntk(p, a, a))
  general = jax.jit(lambda p, a: ntk.empirical_ntk(relu_net.apply, p, a, a))
  batched = jax.jit(lambda p, a: ntk.empirical_ntk(relu_net.apply, p, a, a,
                                                   batch_size=batch_size))
  out = {"batch_size": batch_size}
  for name, f in (("fast", fast), ("general", general), ("batched", batched)):
    t = time.perf_counter()
    compiled = f.lower(params, x).compile()
    jax.block_until_ready(compiled(params, x))
    out[f"{name}_first_call_s"] = time.perf_counter() - t
    out[f"{name}_s"] = float(np.median([_timed(compiled, params, x)[0]
                                        for _ in range(repeats)]))
    memory = compiled.memory_analysis()
    out[f"{name}_temp_gb"] = (None if memory is None
                              else memory.temp_size_in_bytes / 1e9)
  out["seconds"] = out["fast_s"]
  out["compile_s"] = out["fast_first_call_s"] - out["fast_s"]
  out["run_s"] = out["fast_s"]
  out.update(seed_steps_per_s=None, gflops=None, peak_fraction=None)
  return out


def _sweep_row(seeds, steps, repeats=3) -> dict:
  """A 16-point lr x init-scale grid of the deep_linear experiment through
  `run_sweep` (planning, the store, the analysis, no figures), against the
  same rows trained by the engine's runner alone."""
  import tempfile

  from dynamics import load_config, sweep
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  config = load_config(os.path.join(root, "configs", "deep_linear.py"))
  config.num_seeds = seeds
  config.model.depth, config.model.width = 3, 32
  config.task.d_in = config.task.d_out = 16
  config.task.num_samples = 256
  config.train.num_steps, config.train.log_every, config.train.lr = steps, 10, 0.05
  config.sweep = {"train": {"lr": (0.01, 0.02, 0.03, 0.05)},
                  "init": {"scale": (0.1, 0.2, 0.3, 0.5)}}
  sweep_times, direct_times = [], []
  for _ in range(repeats):  # alternate the two, each from scratch (each compiles)
    with tempfile.TemporaryDirectory() as tmp:
      t = time.perf_counter()
      sweep.run_sweep(config, os.path.join(tmp, "s"), figures="none", verbose=False)
      sweep_times.append(time.perf_counter() - t)
    t = time.perf_counter()
    (group,) = sweep.plan(config).groups
    group.runner.run(0, group.rows)
    direct_times.append(time.perf_counter() - t)
  sweep_s, direct_s = float(np.median(sweep_times)), float(np.median(direct_times))
  rate = 16 * seeds * steps / sweep_s
  return {"run_s": sweep_s, "direct_s": direct_s, "overhead": sweep_s / direct_s - 1,
          "sweep_runs_s": sweep_times, "direct_runs_s": direct_times,
          "seed_steps_per_s": rate, "compile_s": None, "gflops": None, "peak_fraction": None}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("workloads", nargs="*", default=list(DEFAULT_SEEDS))
  ap.add_argument("--seeds", type=int, nargs="+")
  ap.add_argument("--steps", type=int)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--json", action="store_true")
  ap.add_argument("--in_process", action="store_true",
                  help="run every row in this process (peak_rss_mb is then cumulative)")
  ap.add_argument("--ntk_size", type=int, nargs=3, metavar=("D", "M", "N"),
                  default=(64, 4096, 1024), help="empirical_ntk: input dim, width, points")
  ap.add_argument("--_row", nargs=3, help=argparse.SUPPRESS)
  args = ap.parse_args(argv)
  NTK_SIZE.update(zip("dmn", args.ntk_size))
  if args._row:
    name, seeds, steps = args._row[0], int(args._row[1]), int(args._row[2])
    row = run_row(name, seeds, steps, args.repeats, matmul_peak_gflops())
    row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row["machine"] = io.machine()
    print(json.dumps(row))
    return 0
  for w in args.workloads:
    if w not in DEFAULT_SEEDS:
      ap.error(f"unknown workload {w!r}; known: {', '.join(DEFAULT_SEEDS)}")
  peak = matmul_peak_gflops()
  if not args.json:
    m = io.machine()
    print(f"{m['cpu_model']} ({m['cpu_cores']} cores; {' '.join(m['cpu_flags']) or '-'}; "
          f"caches {m['cpu_caches']}), jax {m['jax']}, XLA_FLAGS {m['xla_flags']!r}")
    print(f"backend {jax.default_backend()}, {jax.device_count()} device(s), "
          f"matmul peak {peak:.1f} GFLOP/s")
    print(f"{'workload':>18} {'seeds':>6} {'steps':>6} {'compile s':>9} {'run s':>8} "
          f"{'seed-steps/s':>13} {'GFLOP/s':>8} {'peak':>6} {'vs loop':>8} {'RSS MB':>7}")
  for w in args.workloads:
    for s in args.seeds or DEFAULT_SEEDS[w]:
      steps = args.steps if args.steps is not None else DEFAULT_STEPS[w]
      if args.in_process:
        row = run_row(w, s, steps, args.repeats, peak)
        row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        row["machine"] = io.machine()
      else:
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--_row", w,
                               str(s), str(steps), "--repeats", str(args.repeats),
                               "--ntk_size", *map(str, args.ntk_size)],
                              capture_output=True, text=True)
        if proc.returncode:
          print(proc.stderr[-2000:], file=sys.stderr)
          return proc.returncode
        row = json.loads(proc.stdout.strip().splitlines()[-1])
      if args.json:
        print(json.dumps(row), flush=True)
      else:
        f = lambda k, fmt: format(row[k], fmt) if row.get(k) is not None else "-"
        print(f"{w:>18} {s:>6} {steps:>6} {f('compile_s', '9.2f')} {f('run_s', '8.3f')} "
              f"{f('seed_steps_per_s', '13.0f')} {f('gflops', '8.1f')} "
              f"{f('peak_fraction', '6.1%')} {f('loop_speedup', '8.1f')} "
              f"{f('peak_rss_mb', '7.0f')}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
