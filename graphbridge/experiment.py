"""One experiment end to end: load data, train, evaluate, write the report. CLIs call this."""

from __future__ import annotations

import os
import time
from typing import Callable

import jax
import ml_collections

from graphbridge import data as data_lib
from graphbridge import evaluate as eval_lib
from graphbridge import train as train_lib


def _log(msg: str) -> None:
  if jax.process_index() == 0:
    print(msg, flush=True)


def load_dataset(config) -> data_lib.Dataset:
  return data_lib.load_named(config.data.get("path") or config.data.name)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       log: Callable[[str], None] = _log) -> dict:
  """Train as `config` says, evaluate retrieval on the test split, write report.{json,md}.

  Returns the report dict ({"rows": [...], "by_hops": [...], "timing": {...}, ...})."""
  t0 = time.perf_counter()
  dataset = load_dataset(config)
  log(f"data: {dataset.source}\n{dataset.summary()}")
  result = train_lib.train(config, workdir, dataset=dataset, log=log)
  t_train = time.perf_counter()
  aligner = eval_lib.GraphAligner(result.setup.layout, result.params, result.setup.compute_dtype)
  extra = [p for p in train_lib._names(config.eval.get("paths", ""))]
  rows = eval_lib.retrieval_rows(aligner, dataset, split=config.eval.split, extra_routes=extra,
                                 ks=tuple(config.eval.ks))
  by_hops = eval_lib.summarize_by_hops(rows)
  report = {
      "strategy": config.strategy, "data": dataset.source, "graph": result.setup.graph.to_dict(),
      "rows": rows, "by_hops": by_hops,
      "timing": {"train_seconds": result.seconds, "compile_seconds": result.compile_seconds,
                 "eval_seconds": time.perf_counter() - t_train, "steps": result.steps_run},
      "final_losses": result.final_metrics,
  }
  log("\nretrieval on the " + config.eval.split + " split (route: query translated into the gallery's space)")
  log(eval_lib.format_table(rows, eval_lib.RETRIEVAL_COLUMNS))
  log("\nby hop distance in the paired-data graph (1 = paired in training, 2+ = zero-shot)")
  log(eval_lib.format_table(by_hops, ("level", "hops", "pairs", "mAP", "R@1", "R@10", "chance_mAP")))
  if workdir:
    eval_lib.write_json(os.path.join(workdir, "report.json"), report)
    with open(os.path.join(workdir, "report.md"), "w") as f:
      f.write(f"# graphbridge report: {config.strategy} on {os.path.basename(dataset.source)}\n\n")
      f.write(f"Graph: {result.setup.graph.describe()}\n\n## Retrieval ({config.eval.split} split)\n\n")
      f.write(eval_lib.format_table(rows, eval_lib.RETRIEVAL_COLUMNS) + "\n\n## By hop distance\n\n")
      f.write(eval_lib.format_table(by_hops, ("level", "hops", "pairs", "mAP", "R@1", "R@10", "chance_mAP")))
      f.write("\n")
    log(f"\nwrote {os.path.join(workdir, 'report.md')} and report.json")
  log(f"total {time.perf_counter() - t0:.1f}s (train {result.seconds:.1f}s incl. compile "
      f"{result.compile_seconds:.1f}s)")
  return report
