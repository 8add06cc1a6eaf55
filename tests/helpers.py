"""Shared test helpers: the repository root and its configs, through the
public loader `dynamics.load_config`."""

import os

from dynamics import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config(name: str, overrides=()):
  """`configs/<name>.py` with `overrides` (`"field=value"` or pairs)."""
  return load_config(os.path.join(ROOT, "configs", f"{name}.py"), overrides)
