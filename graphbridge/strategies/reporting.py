"""The report of a model, whatever strategy trained it: one path from a `Model` (a finished
training, a restored workdir, a graft) to report.{json,md} and the figures."""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping, Sequence

from graphbridge.evaluation.report import EvalOptions, run_report, with_route_options
from graphbridge.linear.aligners import PosthocAligner
from graphbridge.strategies.base import Log, Model, timing
from graphbridge.training.writers import METRICS_FILE, read_metrics


def report_aligner(model: Model, config, dataset, options: EvalOptions | None = None):
  """The aligner a report of `model` scores: the model's, wrapped by config.posthoc, with the
  options' route mode and CSLS setting (what Run.search and Run.index use too)."""
  options = options or EvalOptions.from_config(config)
  aligner = model.aligner
  if config.posthoc != "none":
    aligner = PosthocAligner(aligner, config.posthoc, dataset)
  return with_route_options(aligner, options)


def report(
  model: Model,
  config,
  dataset,
  out_dir: str | None,
  results: Sequence = (),
  header: Mapping | None = None,
  metrics_dir: str | None = None,
  options: EvalOptions | None = None,
  plots: bool = True,
  log: Log = print,
) -> dict:
  """Evaluate `model` on `dataset` as config.eval says, print the compact table and write the
  report into out_dir (None: print only).

  results: the training stages' results (report.json's timing and final losses); header: more
  top-level entries; metrics_dir: where metrics.jsonl is (training curves; default out_dir);
  options: instead of config.eval. config.posthoc wraps the model's aligner."""
  options = options or EvalOptions.from_config(config)
  options = dataclasses.replace(
    options, extra_routes=tuple(model.report_routes(dataset)) + tuple(options.extra_routes)
  )
  aligner = report_aligner(model, config, dataset, options)
  full_header = {**model.report_header(), "strategy": model.strategy}
  if results:
    full_header.update(timing=timing(results), final_losses=results[-1].final_metrics)
  full_header.update(header or {})
  metrics_dir = metrics_dir or out_dir
  rows = read_metrics(os.path.join(metrics_dir, METRICS_FILE)) if metrics_dir else []
  return run_report(
    aligner,
    dataset,
    out_dir or None,
    model.initial_aligner(options.seed),
    options,
    full_header,
    rows,
    plots=plots,
    log=log,
  )
