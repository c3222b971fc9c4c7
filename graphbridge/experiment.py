"""One experiment end to end: load data, train, evaluate, write the report. CLIs call this."""

from __future__ import annotations

import json
import os
import time
from typing import Callable

import jax
import ml_collections

from graphbridge import data as data_lib
from graphbridge import report as report_lib
from graphbridge import train as train_lib
from graphbridge import workdir_lock
from graphbridge import writers as writers_lib


_log = writers_lib.log_process0  # the default `log` of every entry point


def load_dataset(config) -> data_lib.Dataset:
  """In RAM, or memory-mapped and normalised per batch with data.host_sampling (data.load_for_config)."""
  return data_lib.load_for_config(config)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       log: Callable[[str], None] = _log, plots: bool = True) -> dict:
  """Train as `config` says, evaluate on the eval split, write report.{json,md} and plots (report.py).

  Returns the report dict ({"rows": [...], "by_hops": [...], "gap": [...], "silhouette": [...],
  "reconstruction": [...], "timing": {...}, ...})."""
  from graphbridge import config_check
  t0 = time.perf_counter()
  config_check.validate(config)
  dataset = load_dataset(config)
  log(f"data: {dataset.source}\n{dataset.summary()}")
  with workdir_lock.WorkdirLock(workdir, log=log):  # one writer per workdir, to the report
    return _train_and_evaluate(config, workdir, dataset, log, plots, t0)


def _train_and_evaluate(config, workdir, dataset, log, plots, t0) -> dict:
  from graphbridge import strategies as strat_lib
  fresh = workdir and not os.path.isdir(os.path.join(workdir, "checkpoints"))
  if fresh and jax.process_index() == 0:
    write_config(config, workdir)
  run = strat_lib.run_strategy(config, dataset, workdir, log=log)
  if workdir and not fresh and jax.process_index() == 0:  # once the checkpoints accepted the config
    write_config(config, workdir)
  if workdir and sum(r.steps_run for r in run.results) == 0:
    log(nothing_trained_message(workdir, train_lib.total_steps(config)))
    kept = existing_report(workdir, int(run.results[-1].state["step"]))
    if kept is not None:
      log(f"kept report.json, report.md and the figures of step {kept['step']} in {workdir}; "
          f"graphbridge-evaluate --workdir={workdir} writes a new report")
      return kept
  if hasattr(run, "report"):  # a strategy that is not a translator graph reports itself (dmvae)
    report = run.report(config, dataset, workdir, log=log, plots=plots)
  else:
    report = report_lib.report_for_training(config, workdir, run.results, dataset, run.aligner,
                                           {"strategy": config.strategy}, plots=plots, log=log)
  timing = report["timing"]
  log(f"total {time.perf_counter() - t0:.1f}s (train {timing['train_seconds']:.1f}s incl. compile "
      f"{timing['compile_seconds']:.1f}s)")
  return report


def existing_report(workdir: str, step: int) -> dict | None:
  """report.json of `workdir` if it reports `step` (a finished run evaluated before), else None."""
  path = os.path.join(workdir, "report.json")
  try:
    with open(path) as f:
      report = json.load(f)
  except (OSError, ValueError):
    return None
  return report if report.get("step") == step and os.path.exists(os.path.join(workdir, "report.md")) else None


def write_config(config: ml_collections.ConfigDict, workdir: str) -> str:
  """The resolved config (defaults, variant and overrides applied) as workdir/config.json."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "config.json")
  with open(path + ".tmp", "w") as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")
  os.replace(path + ".tmp", path)
  return path


def nothing_trained_message(workdir: str, steps: int) -> str:
  return (f"nothing trained: {workdir} already holds the final checkpoint (step {steps}); evaluating it as "
          "it is. Use a new --workdir to train again, or raise --config.train.steps to continue")
