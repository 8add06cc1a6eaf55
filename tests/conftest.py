"""Experiment-scale tests are marked `slow` and run only with --runslow;
CI runs every other test, at reduced sizes."""

import pytest


def pytest_addoption(parser):
  parser.addoption("--runslow", action="store_true", default=False,
                   help="also run experiment-scale tests marked slow")


def pytest_collection_modifyitems(config, items):
  if config.getoption("--runslow"):
    return
  skip = pytest.mark.skip(reason="experiment-scale: run with --runslow")
  for item in items:
    if "slow" in item.keywords:
      item.add_marker(skip)
