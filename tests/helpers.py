"""Shared test helpers: the repository root and its configs, through the
public loader `dynamics.load_config`; tests run each config's smoke variant
(`get_config("smoke")`: the same grid shape, seconds long)."""

import os

from dynamics import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config(name: str, overrides=(), *, smoke: bool = True):
  """`configs/<name>.py` (its smoke variant unless `smoke=False`) with
  `overrides` (`"field=value"` or pairs)."""
  return load_config(os.path.join(ROOT, "configs", f"{name}.py"), overrides,
                     arg="smoke" if smoke else None)


def assert_plan_refuses(name: str, field: str, value) -> None:
  """`configs/<name>.py` (one point) with `field` set to `value` is refused
  by `sweep.plan` with a `ValueError` naming the field, before anything runs."""
  import pytest

  from dynamics import sweep
  c = config(name, ["sweep={}"])
  section, _, key = field.rpartition(".")
  (c[section] if section else c)[key] = value
  with pytest.raises(ValueError, match=field.replace(".", r"\.")):
    sweep.plan(c)
