"""One experiment end to end: load data, train, evaluate, write the report. CLIs call this."""

from __future__ import annotations

import json
import os
import time
from typing import Callable
import jax
import ml_collections
from graphbridge.core.errors import WorkdirError
from graphbridge.data import dataset as dataset_lib
from graphbridge.data import readers as readers_lib
from graphbridge.training import optimizer as optimizer_lib
from graphbridge.training import lock as lock_lib
from graphbridge.training import writers as writers_lib
from graphbridge.runs import validate as validate_lib
from graphbridge.strategies import registry as strategies
from graphbridge.strategies import reporting
from graphbridge import defaults


_log = writers_lib.log_process0  # the default `log` of every entry point


def load_dataset(config) -> dataset_lib.Dataset:
  """In RAM, or memory-mapped and normalised per batch with data.host_sampling
  (data.load_for_config)."""
  return readers_lib.load_for_config(config)


def train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir: str,
  log: Callable[[str], None] = _log,
  plots: bool = True,
) -> dict:
  """Train as `config` says, evaluate on the eval split, write report.{json,md} and plots
  (report.py).

  Returns the report dict ({"rows": [...], "by_hops": [...], "gap": [...], "silhouette": [...],
  "reconstruction": [...], "timing": {...}, ...})."""
  t0 = time.perf_counter()
  if workdir is not None and not str(workdir).strip():
    raise WorkdirError("the workdir is empty: name the directory for the run's checkpoints")
  validate_lib.validate(config)
  config = defaults.complete(config)
  dataset = load_dataset(config)
  log(f"data: {dataset.source}\n{dataset.summary()}")
  with lock_lib.WorkdirLock(workdir, log=log):  # one writer per workdir, to the report
    return _train_and_evaluate(config, workdir, dataset, log, plots, t0)


def _train_and_evaluate(config, workdir, dataset, log, plots, t0) -> dict:
  fresh = workdir and not os.path.isdir(os.path.join(workdir, "checkpoints"))
  if fresh and jax.process_index() == 0:
    write_config(config, workdir)
  run = strategies.get(config.strategy).train(config, dataset, workdir, log=log)
  if workdir and not fresh and jax.process_index() == 0:  # once the checkpoints accepted the config
    write_config(config, workdir)
  if workdir and sum(r.steps_run for r in run.results) == 0:
    log(nothing_trained_message(workdir, optimizer_lib.total_steps(config)))
    kept = existing_report(workdir, int(run.results[-1].state["step"]))
    if kept is not None:
      log(
        f"kept report.json, report.md and the figures of step {kept['step']} in {workdir}; "
        f"graphbridge-evaluate --workdir={workdir} writes a new report"
      )
      return kept
  report = reporting.report(
    run.model, config, dataset, workdir, results=run.results, plots=plots, log=log
  )
  stages = "rounds" if config.strategy == "graph" else "stages"  # pseudo-pair rounds
  log(closing_line(report["timing"], len(run.results), time.perf_counter() - t0, stages))
  return report


def closing_line(timing: dict, stages: int, seconds: float, what: str = "stages") -> str:
  """The run's last line: wall time, and the training's seconds, steps and compile time over every
  stage (pseudo-pair rounds, C-MCR's stages) it ran."""
  over = f" over {stages} {what}" if stages > 1 else ""
  return (
    f"total {seconds:.1f}s (train {timing['train_seconds']:.1f}s, {timing['steps']} steps{over}, "
    f"incl. compile {timing['compile_seconds']:.1f}s)"
  )


def existing_report(workdir: str, step: int) -> dict | None:
  """report.json of `workdir` if it reports `step` (a finished run evaluated before), else None."""
  path = os.path.join(workdir, "report.json")
  try:
    with open(path) as f:
      report = json.load(f)
  except (OSError, ValueError):
    return None
  return (
    report
    if report.get("step") == step and os.path.exists(os.path.join(workdir, "report.md"))
    else None
  )


def write_config(config: ml_collections.ConfigDict, workdir: str) -> str:
  """The resolved config (defaults, variant and overrides applied) as workdir/config.json."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "config.json")
  with open(path + ".tmp", "w") as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")
  os.replace(path + ".tmp", path)
  return path


def nothing_trained_message(workdir: str, steps: int) -> str:
  return (
    f"nothing trained: {workdir} already holds the final checkpoint (step {steps}); evaluating it "
    "as it is. Use a new --workdir to train again, or raise --config.train.steps to continue"
  )
