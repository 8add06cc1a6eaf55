"""One XLA CPU device per core by default, and when not to use them.

On a CPU JAX shows one device, and a `jit(vmap(train))` over seeds runs as one
XLA program on it. Sharding the seed axis over one device per core runs the
seeds' programs side by side instead: 1.8x on two cores (docs/performance.md).
`configure()` asks JAX for that many CPU devices (`jax_num_cpu_devices`);
`import dynamics` calls it, so every run, sweep and benchmark gets it.

Override with the environment variable `DYNAMICS_CPU_DEVICES=N` (`1` keeps
JAX's single device), or by setting `jax_num_cpu_devices` or
`XLA_FLAGS=--xla_force_host_platform_device_count=N` yourself, which win.
It cannot change a backend that is already running: import `dynamics` before
running any JAX computation.

`compiler_options()` is what the engine compiles its programs with: on a CPU,
LLVM optimisation level 1 instead of XLA's default 3 (`xla_backend_optimization_level`):
compile times fall 2-4x and run times do not change (docs/performance.md).
Override with `DYNAMICS_CPU_OPT_LEVEL=N`, or name the flag in `XLA_FLAGS`.
"""

from __future__ import annotations

import os
import warnings

import jax

ENV = "DYNAMICS_CPU_DEVICES"
OPT_ENV = "DYNAMICS_CPU_OPT_LEVEL"
CPU_OPT_LEVEL = 1


def cpu_device_count() -> int:
  """`DYNAMICS_CPU_DEVICES` if set, else the cores this process may run on."""
  value = os.environ.get(ENV)
  if value is None:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else os.cpu_count() or 1
  if not value.strip().isdigit() or int(value) < 1:
    raise ValueError(f"{ENV}={value!r} must be a positive integer (1 keeps one "
                     "CPU device).")
  return int(value)


def configure(count: int | None = None) -> int | None:
  """Asks JAX for `count` CPU devices (default `cpu_device_count()`).

  Returns the count set, or None when the user already chose one
  (`jax_num_cpu_devices`, the XLA flag) or the backends are already
  initialised (then with a warning, unless the count would not change).
  """
  if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
    return None
  if jax.config.jax_num_cpu_devices not in (-1, None):
    return None
  count = cpu_device_count() if count is None else count
  try:  # JAX refuses once its backends run (a RuntimeError, public behaviour)
    jax.config.update("jax_num_cpu_devices", count)
  except RuntimeError:
    if count > 1 and jax.local_device_count("cpu") == 1:
      warnings.warn(f"dynamics: JAX already runs with one CPU device, so seeds "
                    f"are not sharded over the {count} cores; import dynamics "
                    f"before the first JAX computation.", stacklevel=3)
    return None
  return count


def compiler_options(platform: str | None = None) -> dict | None:
  """XLA options for the engine's `jax.jit`s on `platform` (default: JAX's
  default backend): `{'xla_backend_optimization_level': 1}` on a CPU, where
  LLVM's default level costs 2-4x the compile time for no faster a program;
  `DYNAMICS_CPU_OPT_LEVEL=N` sets N; None elsewhere, or when `XLA_FLAGS`
  names the flag (the user's choice wins)."""
  platform = jax.default_backend() if platform is None else platform
  if platform != "cpu" or "xla_backend_optimization_level" in os.environ.get("XLA_FLAGS", ""):
    return None
  value = os.environ.get(OPT_ENV)
  if value is None:
    return {"xla_backend_optimization_level": CPU_OPT_LEVEL}
  if not value.strip().isdigit() or int(value) > 3:
    raise ValueError(f"{OPT_ENV}={value!r} must be an integer from 0 to 3.")
  return {"xla_backend_optimization_level": int(value)}
