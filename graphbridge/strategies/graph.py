"""The seed method: translators on the edges of the data's pair graph (or config.graph.edges),
per-edge cosine + InfoNCE, cycles, optional contrastive fine-tuning phase, all from config.loss;
then, where every pair set is instance-level, rounds of self-training on gated pseudo-pairs of
unpaired rows (pseudo.py)."""

from __future__ import annotations

import json
import os
import shutil
import time
from typing import Callable

import jax

from graphbridge.data.dataset import Dataset
from graphbridge.strategies import pseudo as pseudo_lib
from graphbridge.strategies import translator_graft
from graphbridge.strategies.base import Log, StrategyRun
from graphbridge.strategies.translator import Stage, TranslatorStrategy, run_stages
from graphbridge.training import setup as setup_lib
from graphbridge.training import selection as selection_lib
from graphbridge.training import trainer as trainer_lib

PUBLISHED = (
  "kept_round.json"  # in a workdir whose outputs were copied from a round's (publish_round)
)
ROUND_OUTPUTS = ("checkpoints", "metrics.jsonl", "tensorboard")


def stages(config, dataset) -> list[Stage]:
  return [Stage("translator graph", setup_lib.graph_from_config(config, dataset))]


class GraphStrategy(TranslatorStrategy):
  """The translator graph; trains pseudo.rounds rounds of self-training after the first (each from
  scratch, on the data grown by the accepted pseudo-pairs)."""

  def train(self, config, dataset: Dataset, workdir: str | None, log: Log = print) -> StrategyRun:
    t0 = time.perf_counter()
    requested = int(config.pseudo.rounds)
    rounds, why = pseudo_lib.resolve_rounds(requested, dataset)
    if requested != 0:
      log(f"pseudo-pairs: {rounds} round{'' if rounds == 1 else 's'} ({why})")
    if rounds == 0:
      return self.finish(
        config,
        run_stages(self, self.plan(config, dataset), config, dataset, workdir, log),
        dataset,
        workdir,
        time.perf_counter() - t0,
      )
    round_dir = lambda r: (
      workdir if (workdir is None or r == rounds) else os.path.join(workdir, f"round{r}")
    )
    trained_rounds, round_results = [], []
    # one set of held-back pairs for every round: each round starts from the same closed-form
    # maps of the data's own pairs and is selected on the same pairs, never on pseudo-pairs
    holdout = selection_lib.PairHoldout.for_run(config, dataset)

    def train_round(ds, r):
      trained_rounds.append(r)
      round_results.append(
        trainer_lib.train(config, round_dir(r), dataset=ds, log=log, holdout=holdout)
      )
      return round_results[-1]

    # each round rebuilds the graph from its data: accepted pseudo-pairs may add edges
    result, trained_on, pseudo_history = pseudo_lib.self_train(
      config,
      dataset,
      train_round,
      lambda res: self.make_aligner(res.setup.layout, res.params, res.setup.compute_dtype),
      log=log,
      holdout=holdout if holdout.select else None,
    )
    if workdir is not None and trained_rounds[-1] != rounds and jax.process_index() == 0:
      # stopped early: the kept model is a round's (process 0 writes, as for checkpoints)
      publish_round(round_dir(trained_rounds[-1]), workdir, trained_rounds[-1], rounds, log)
    # every round's result (timing and steps count them all); the model is the last round's
    assert result is round_results[-1]
    run = self.finish(config, round_results, trained_on, workdir, time.perf_counter() - t0)
    run.model.meta["pseudo_rounds"] = pseudo_history  # report.json: what each round's gate chose
    return run

  def graft(
    self,
    config,
    from_workdir: str,
    workdir: str,
    dataset: Dataset,
    report: bool = True,
    plots: bool = True,
    log: Log = print,
  ):
    """New node and edges trained against the frozen old graph (translator_graft.py)."""
    return translator_graft.graft(
      self, config, from_workdir, workdir, dataset, report=report, plots=plots, log=log
    )


def publish_round(
  round_dir: str, workdir: str, kept: int, rounds: int, log: Callable[[str], None] = print
) -> None:
  """Self-training stopped before its last round (no pseudo-pair passed the gate), so the kept model
  lives in round_dir, not in the workdir where a finished run's model is. Copy its checkpoints,
  metrics.jsonl and tensorboard events into the workdir, so `graphbridge.load(workdir)`,
  launch/evaluate.py and the report's training curves find them, and record the copy in
  kept_round.json. Outputs already in the workdir are replaced only when an earlier copy put them
  there (a rerun); anything else there is left as it is, with a message."""
  marker = os.path.join(workdir, PUBLISHED)
  copied_before = os.path.exists(marker)
  kept_out = [name for name in ROUND_OUTPUTS if os.path.exists(os.path.join(workdir, name))]
  if kept_out and not copied_before:
    log(
      f"pseudo-pairs: kept round {kept}'s model is in {round_dir}; {workdir} already holds "
      f"{', '.join(kept_out)} from another run, left as they are"
    )
    return
  for name in ROUND_OUTPUTS:
    src, dst = os.path.join(round_dir, name), os.path.join(workdir, name)
    if not os.path.exists(src):
      continue
    tmp = dst + ".copying"
    for stale in (tmp, dst):
      if os.path.isdir(stale):
        shutil.rmtree(stale)
      elif os.path.exists(stale):
        os.remove(stale)
    (shutil.copytree if os.path.isdir(src) else shutil.copy2)(src, tmp)
    os.replace(tmp, dst)
  with open(marker, "w") as f:
    json.dump({"round": kept, "rounds": rounds, "copied_from": os.path.basename(round_dir)}, f)
  log(
    f"pseudo-pairs: kept the model of round {kept} ({os.path.basename(round_dir)}/); its "
    f"checkpoints and metrics are copied into {workdir}"
  )


STRATEGY = GraphStrategy(
  "graph", stages, summary="translator graph: per-edge cosine + InfoNCE, cycles"
)
