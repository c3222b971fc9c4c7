"""Grafting a modality onto a trained run, whatever strategy trained it (launch/graft.py).

The strategy that trained `from_workdir` does the graft (`Strategy.graft`): translator graphs add a
node and its edges against the frozen old edges (strategies/translator_graft.py), DMVAE an encoder
and decoder against the frozen old modules. Either way the old workdir is only read and its
checkpoint items are copied byte for byte. `train_base` trains the first half of the worked example
in docs/grafting.md: the run without the modality to graft.
"""

from __future__ import annotations

import copy
import os
import time
from typing import Callable

import ml_collections

from graphbridge import defaults
from graphbridge.core.routes import route_nodes
from graphbridge.core import fields
from graphbridge.core.errors import CheckpointError, GraftError
from graphbridge.data import readers as readers_lib
from graphbridge.data.dataset import Dataset, subset_modalities
from graphbridge.runs import validate as validate_lib
from graphbridge.strategies import registry as strategies
from graphbridge.strategies import reporting
from graphbridge.strategies.base import Strategy, graft_settings
from graphbridge.training import lock as lock_lib
from graphbridge.training.writers import log_process0 as _log


def base_modalities(config, dataset: Dataset) -> tuple[str, ...]:
  """graft.base_modalities, or every modality of the data except graft.modality."""
  spec = graft_settings(config)
  named = fields.names(spec.base_modalities)
  if named:
    return named
  modality = str(spec.modality)
  if modality not in dataset.modalities:
    raise GraftError(
      f"graft.modality={modality!r} is not in the data {dataset.source} "
      f"(modalities: {', '.join(dataset.names)})"
    )
  return tuple(m for m in dataset.names if m != modality)


def _graftable(name: str) -> Strategy:
  """The strategy `name`; GraftError if it cannot graft."""
  strategy = strategies.get(name)
  if type(strategy).graft is Strategy.graft:
    able = [n for n in strategies.names() if type(strategies.get(n)).graft is not Strategy.graft]
    raise GraftError(f"strategy={name!r}: grafting extends runs of {' or '.join(map(repr, able))}")
  return strategy


def _load_data(config, dataset: Dataset | None) -> Dataset:
  if dataset is not None:
    return dataset
  config = defaults.complete(config)
  dataset = readers_lib.load_named(config.data.path or config.data.name)
  return readers_lib.resolve_unsplit(dataset, str(config.data.unsplit))


def graft(
  config: ml_collections.ConfigDict,
  from_workdir: str,
  workdir: str,
  dataset: Dataset | None = None,
  report: bool = True,
  plots: bool = True,
  log: Callable[[str], None] = _log,
):
  """Graft config.graft.modality onto the run in `from_workdir`; checkpoints, metrics, graft.json
  and the report (zero-shot rows of the new modality included) go to `workdir`.

  Resumes an interrupted graft in `workdir`. Raises GraftError before writing anything if the
  graft cannot be done."""
  t0 = time.perf_counter()
  graft_settings(config)
  validate_lib.validate(config, extra_sections=("graft",))
  config = defaults.complete(config)
  if not os.path.isdir(from_workdir):
    raise GraftError(
      f"--from_workdir={from_workdir}: no such directory (the trained run to graft onto)"
    )
  try:
    trained_by = strategies.for_workdir(from_workdir)
  except CheckpointError as exc:
    raise GraftError(f"cannot graft onto {from_workdir}: {exc}") from None
  strategy = _graftable(str(config.strategy))
  if trained_by.name != strategy.name:
    raise GraftError(
      f"the run in {from_workdir} was trained with strategy={trained_by.name!r}; the config "
      f"says strategy={strategy.name!r}: graft with the strategy that trained it"
    )
  result = strategy.graft(
    config, from_workdir, workdir, _load_data(config, dataset), report=report, plots=plots, log=log
  )
  log(f"graft total {time.perf_counter() - t0:.1f}s")
  return result


def train_base(
  config: ml_collections.ConfigDict,
  workdir: str,
  dataset: Dataset | None = None,
  report: bool = True,
  plots: bool = True,
  log: Callable[[str], None] = _log,
):
  """Train the run without the new modality: the data restricted to base_modalities(config).
  Returns the training's last stage result."""
  t0 = time.perf_counter()
  graft_settings(config)
  validate_lib.validate(config, extra_sections=("graft",))
  config = defaults.complete(config)
  strategy = _graftable(str(config.strategy))
  dataset = _load_data(config, dataset)
  data = subset_modalities(dataset, base_modalities(config, dataset))
  dropped = [m for m in dataset.names if m not in data.names]
  # eval.paths of the graft (e.g. audio->text->image) name the modality the base graph lacks
  routes = [r for r in fields.names(config.eval.paths) if not set(route_nodes(r)) & set(dropped)]
  config = copy.deepcopy(config)
  config.eval.paths = ",".join(routes)
  log(f"base graph on {', '.join(data.names)} (without {', '.join(dropped) or 'nothing'})")
  log(f"data: {data.source}\n{data.summary()}")
  with lock_lib.WorkdirLock(workdir, log=log):  # one writer, to the report
    run = strategy.train_base(config, workdir, data, log=log)
    if report:
      reporting.report(
        run.model, run.model.config, data, workdir, results=run.results, plots=plots, log=log
      )
  log(
    f"total {time.perf_counter() - t0:.1f}s (train {run.seconds:.1f}s incl. compile "
    f"{sum(r.compile_seconds for r in run.results):.1f}s)"
  )
  return run.result
