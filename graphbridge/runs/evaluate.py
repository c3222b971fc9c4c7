"""Evaluating a trained workdir, whatever strategy trained it (launch/evaluate.py)."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable, Sequence

from graphbridge.core.errors import CheckpointCorruptError, DataError
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


def reported_step(out: str) -> int | None:
  """The step report.json in `out` reports (None: no readable report there)."""
  try:
    with open(os.path.join(out, "report.json")) as f:
      step = json.load(f).get("step")
  except (OSError, ValueError, AttributeError):
    return None
  return int(step) if isinstance(step, int) else None


def check_not_replacing_newer(out: str, model: Model) -> None:
  """CheckpointCorruptError where `model` is an older step than the report in `out` (its newer
  steps were skipped as damaged): that report is of a step that verified when it was written, and
  an older step's numbers must not replace it unasked."""
  reported = reported_step(out)
  if reported is None or reported <= model.step:
    return
  problem = dict(model.skipped).get(reported) or model.skipped[0][1]
  raise CheckpointCorruptError(
    f"{os.path.join(out, 'report.json')} reports step {reported}, which is damaged now "
    f"({problem}); not replacing it with a report of step {model.step}, the newest step that "
    f"verifies: pass --out=DIR to write that report elsewhere, or --step={model.step} to "
    "replace it",
    reported,
    None,
  )


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

  data: a .npz / folder to evaluate on instead of the run's own data (same modalities and dims).
  Without `step`, newer damaged steps are skipped, each with a line in `log`; the report then says
  so (report.json "skipped_steps", a note in report.md) and never replaces a report of a newer
  step in `out` (CheckpointCorruptError: --out elsewhere, or --step to replace it on purpose)."""
  model = load_model(workdir, step, log=log)  # a damaged newer step: one line, then an older one
  header = {"workdir": os.path.abspath(workdir)}
  if model.skipped:
    check_not_replacing_newer(out or workdir, model)
    header["skipped_steps"] = [{"step": int(s), "problem": p} for s, p in model.skipped]
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
      header=header,
      metrics_dir=workdir,
      options=options,
      plots=plots,
      log=log,
    )
