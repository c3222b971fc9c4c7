"""Evaluating a trained workdir, whatever strategy trained it (launch/evaluate.py)."""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Sequence

from graphbridge.core.errors import DataError
from graphbridge.data import readers as readers_lib
from graphbridge.data.dataset import Dataset
from graphbridge.evaluation.report import EvalOptions, _formats
from graphbridge.strategies import registry as strategies
from graphbridge.strategies import reporting
from graphbridge.strategies.base import Model
from graphbridge.training import lock as lock_lib


def load_model(
  workdir: str, step: int | None = None, log: Callable[[str], None] | None = None
) -> Model:
  """The model in `workdir` (newest usable checkpoint, or `step`), restored by its own strategy."""
  return strategies.for_workdir(workdir).load(workdir, step, log=log)


def model_dataset(model: Model, data: str | None = None) -> Dataset:
  """`data` (a .npz / folder / named set), or the data the model was trained on, checked against
  it."""
  source = (
    data
    or model.config.data.path
    or model.config.data.name
    or model.meta.get("data", {}).get("source", "")
  )
  try:
    # as training split it (data.unsplit=auto), else as the file is: a run trained already is
    # evaluated, with the report's warning, rather than stopped
    dataset = readers_lib.resolve_unsplit(
      readers_lib.load_named(source), "auto" if model.config.data.unsplit == "auto" else "same"
    )
  except DataError as exc:
    if data:
      raise
    raise DataError(
      f"{exc} (the data the run in {model.workdir} was trained on; pass --data=FILE to "
      "evaluate on another copy)"
    ) from exc
  model.check_data(dataset)
  return dataset


def evaluate_workdir(
  workdir: str,
  data: str | None = None,
  paths: Sequence[str] = (),
  split: str | None = None,
  out: str | None = None,
  step: int | None = None,
  plots: bool = True,
  log: Callable[[str], None] = print,
  plot_dpi: int | None = None,
  plot_formats: Sequence[str] | None = None,
) -> dict:
  """Restore a trained run and write its report into `out` (default: workdir).

  data: a .npz / folder to evaluate on instead of the run's own data (same modalities and dims)."""
  model = load_model(workdir, step, log=log)
  dataset = model_dataset(model, data)
  trained_on = model.meta.get("data", {}).get("fingerprint")
  if trained_on and trained_on != dataset.fingerprint():
    log(f"note: {dataset.source} is not the data this run was trained on; evaluating anyway")
  options = EvalOptions.from_config(
    model.config,
    split=split,
    plot_dpi=plot_dpi,
    plot_formats=_formats(plot_formats) if plot_formats else None,
  )
  if paths:
    options = dataclasses.replace(options, extra_routes=tuple(paths))
  log(f"run: {workdir} step {model.step}; data: {dataset.source}\n{dataset.summary()}")
  with lock_lib.WorkdirLock(out or workdir, log=log):  # no report written over a running job's
    return reporting.report(
      model,
      model.config,
      dataset,
      out or workdir,
      header={"workdir": os.path.abspath(workdir)},
      metrics_dir=workdir,
      options=options,
      plots=plots,
      log=log,
    )
