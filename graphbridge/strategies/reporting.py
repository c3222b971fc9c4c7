"""The report of a model, whatever strategy trained it: one path from a `Model` (a finished
training, a restored workdir, a graft) to report.{json,md}, the figures, and the final numbers and
figures in TensorBoard."""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Mapping, Sequence

from graphbridge.evaluation.report import EvalOptions, final_scalars, run_report, with_route_options
from graphbridge.linear.aligners import PosthocAligner
from graphbridge.strategies.base import Log, Model, timing
from graphbridge.training import writers as writers_lib
from graphbridge.training.writers import METRICS_FILE, read_metrics

ROUND_DIR = re.compile(r"round(\d+)")  # self-training rounds before the last (strategies/graph.py)
KEPT_ROUND = "kept_round.json"  # graph.PUBLISHED: the workdir's outputs are a copy of a round's


def training_rows(metrics_dir: str) -> list[dict]:
  """metrics.jsonl of a run, and where the graph strategy trained rounds of self-training
  (metrics_dir/round0, round1, ..., the last in metrics_dir itself) the rows of every round, each
  tagged {"round": r}. A workdir whose outputs were copied from an earlier round (KEPT_ROUND)
  holds no round of its own."""
  rounds = sorted(
    int(m.group(1))
    for name in (os.listdir(metrics_dir) if os.path.isdir(metrics_dir) else [])
    if (m := ROUND_DIR.fullmatch(name))
    and os.path.isfile(os.path.join(metrics_dir, name, METRICS_FILE))
  )
  own = read_metrics(os.path.join(metrics_dir, METRICS_FILE))
  if not rounds:
    return own
  rows = [
    {**row, "round": r}
    for r in rounds
    for row in read_metrics(os.path.join(metrics_dir, f"round{r}", METRICS_FILE))
  ]
  if not os.path.exists(os.path.join(metrics_dir, KEPT_ROUND)):
    rows += [{**row, "round": rounds[-1] + 1} for row in own]
  return rows


def kept_step(config, rows: Sequence[Mapping]) -> int | None:
  """The step whose params the final model holds under train.keep_best: the last best validated
  step of the last round; None without keep_best or validation."""
  if not config.get("train", {}).get("keep_best", False):
    return None
  final = max((int(r.get("round", 0)) for r in rows), default=0)
  best = [
    r["val/best_step"] for r in rows if int(r.get("round", 0)) == final and "val/best_step" in r
  ]
  return int(best[-1]) if best and best[-1] >= 0 else None


def to_tensorboard(summary: Mapping, config, out_dir: str | None) -> bool:
  """The report's final numbers (scalars, named as final_scalars says, and the HParams tab: the
  config against the headline metrics) and its PNG figures, at the report's step, into
  out_dir/tensorboard: beside the training's events where the report is the run's own (a report
  written elsewhere, e.g. on other data, gets its own). False where nothing is written."""
  writer = writers_lib.final_tensorboard(out_dir, config)
  if writer is None:
    return False
  step = int(summary.get("step") or 0)
  scalars, headline = final_scalars(summary)
  try:
    writer.write_scalars(step, scalars)
    writer.write_hparams(
      step,
      {**writers_lib.hparams_from_config(config), "strategy": str(summary.get("strategy", ""))},
      headline,
      write_metrics=False,  # among `scalars` already
    )
    images = {
      f"report/{key}": os.path.join(out_dir, name)
      for key, name in (summary.get("plots") or {}).items()
      if name.endswith(".png") and os.path.isfile(os.path.join(out_dir, name))
    }
    writer.write_images(step, images)
  finally:
    writer.close()
  return True


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
  report into out_dir (None: print only), and its final numbers and figures into TensorBoard.

  results: the training stages' results (report.json's timing and final losses); header: more
  top-level entries; metrics_dir: where metrics.jsonl is (training curves, every round of
  self-training; default out_dir); options: instead of config.eval. config.posthoc wraps the
  model's aligner."""
  options = options or EvalOptions.from_config(config)
  options = dataclasses.replace(
    options, extra_routes=tuple(model.report_routes(dataset)) + tuple(options.extra_routes)
  )
  aligner = report_aligner(model, config, dataset, options)
  full_header = {**model.report_header(), "strategy": model.strategy}
  if results:
    full_header.update(timing=timing(results), final_losses=results[-1].final_metrics)
  metrics_dir = metrics_dir or out_dir
  rows = training_rows(metrics_dir) if metrics_dir else []
  kept = kept_step(config, rows)
  if kept is not None:
    full_header["kept_step"] = kept  # train.keep_best: the params evaluated are this step's
  full_header.update(header or {})
  summary = run_report(
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
  if out_dir and to_tensorboard(summary, config, out_dir):
    logdir = os.path.join(out_dir, writers_lib.TENSORBOARD_DIR)
    log(f"final metrics and figures in TensorBoard: {logdir}")
  return summary
