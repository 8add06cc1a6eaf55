"""Experiments by model name: `get(config.model.name)` -> module with
`validate(config)` and `run(config, progress) -> {arrays, summary, table, plot}`,
optionally `total_steps(config)` (progress bar; default `train.num_steps`),
and for sweeps `HPARAMS`, `hparams`, `make_train`, `make_segments`, `analyze`."""

from __future__ import annotations

import importlib

from dynamics import config as cfg

EXPERIMENTS = {"deep_linear": "dynamics.experiments.deep_linear",
               "relu_ntk": "dynamics.experiments.relu_ntk",
               "lsa_icl": "dynamics.experiments.lsa_icl",
               "pruning": "dynamics.experiments.pruning"}


def get(config):
  """The experiment module named by `config.model.name`, validated config."""
  name = cfg.one_of(config, "model.name", tuple(EXPERIMENTS))
  module = importlib.import_module(EXPERIMENTS[name])
  module.validate(config)
  return module
