"""Strategies whose model is translators on a graph (graph, pivot, pairwise, C-MCR).

Such a strategy only says what to train: `stages(config, dataset) -> [Stage]`. Each `Stage` is one
call of the trainer (training/trainer.py) with an explicit graph, an optional objective builder and
a few numeric config overrides; nothing about the graph travels through config strings. The stages
run in order, a stage's `freeze_stages` edges taken frozen from earlier ones. Restoring, reporting
and grafting are the same for all of them (`TranslatorModel`, translator_graft.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable, Mapping, Sequence

import ml_collections
import numpy as np

from graphbridge.core.errors import ConfigError, DataError
from graphbridge.core.graph import Edge, ModalityGraph
from graphbridge.core.fields import virtual_nodes
from graphbridge.data.dataset import Dataset
from graphbridge.evaluation.aligners import GraphAligner
from graphbridge.evaluation.report import initial_params
from graphbridge.model import objectives as objectives_lib
from graphbridge.model.translate import translate_paths
from graphbridge.model.translators import EdgeLayout, bucket_param_count, unstack
from graphbridge.strategies.base import Log, Model, Strategy, StrategyRun, with_overrides
from graphbridge.training import setup as setup_lib
from graphbridge.training import trained as trained_lib
from graphbridge.training import trainer as trainer_lib
from graphbridge import defaults

# objective(layout, dataset, stage_config) -> a model.objective.Objective
ObjectiveBuilder = Callable[[Any, Dataset, ml_collections.ConfigDict], Any]
# aligner(layout, params, compute_dtype, name) -> an evaluation.encoding.Aligner
AlignerBuilder = Callable[[Any, Mapping, str, str], Any]


@dataclasses.dataclass(frozen=True)
class Stage:
  """One training run of a strategy.

  name: shown in logs and the dry run ("C-MCR stage 1").
  graph: the translator graph this stage trains (frozen edges included).
  overrides: dotted config fields set for this stage only,
    {"loss.infonce": 1.0, "finetune.steps": 0}; numbers and tuples only (the graph is `graph`,
    never a config string).
  objective: builds the stage's objective; None = the translator graph's loss plan from config.loss.
  freeze_stages: indices of earlier stages whose trained edges take part here, frozen.
  subdir: checkpoint folder under the run's workdir ("stage1"); "" = the workdir itself (the last
    stage must use the workdir: evaluation and resuming read it).
  """

  name: str
  graph: ModalityGraph
  overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  objective: ObjectiveBuilder | None = None
  freeze_stages: tuple[int, ...] = ()
  subdir: str = ""


@dataclasses.dataclass
class TranslatorModel(Model):
  """Translators on a graph: params {bucket_key: stacked} of every edge (translators.compose takes
  them). frozen: edges held fixed in training (a graft's old graph), kept in the "before" model."""

  strategy: str
  layout: EdgeLayout
  params: Mapping
  compute_dtype: str
  config: ml_collections.ConfigDict
  meta: dict
  step: int
  workdir: str | None
  make_aligner: AlignerBuilder
  frozen: tuple[str, ...] = ()
  aligner: Any = None

  def __post_init__(self):
    if self.aligner is None:
      self.aligner = self.make_aligner(self.layout, self.params, self.compute_dtype, self.strategy)
    linear = [
      e
      for e, v in (self.meta.get("bridge") or {}).get("edges", {}).items()
      if v.get("kept") != "trained"
    ]
    if linear and hasattr(self.aligner, "linear_edges"):  # edges at their closed-form start
      self.aligner.linear_edges = frozenset(Edge.parse(e) for e in linear)
    cycle_only = self.meta.get("cycle_only")  # as training saw them (pseudo-pairs included)
    if cycle_only is not None and hasattr(self.aligner, "not_hops"):
      self.aligner.not_hops = frozenset(Edge.parse(e) for e in cycle_only)

  @property
  def graph(self) -> ModalityGraph:
    return self.layout.graph

  @property
  def dims(self) -> dict[str, int]:
    return {n: d for n, d in self.graph.nodes if n not in self.virtual}

  @property
  def virtual(self) -> tuple[str, ...]:
    """Nodes without data (a strategy's projection spaces), as the config and checkpoint declare."""
    declared = set(virtual_nodes(self.config.graph.get("virtual_nodes", "") or ""))
    declared |= set(self.meta.get("virtual_nodes", ()))
    return tuple(n for n in self.graph.node_names if n in declared)

  def edge_params(self) -> dict:
    return unstack(self.layout, self.params)

  def initial_aligner(self, seed: int):
    start = initial_params(self.layout, self.params, seed, self.frozen)
    return self.make_aligner(self.layout, start, self.compute_dtype, self.strategy)

  def report_header(self) -> dict:
    header = {"graph": self.graph.to_dict(), "step": int(self.step)}
    if self.meta.get("bridge"):  # what the closed-form start and per-edge selection chose
      header["bridge"] = self.meta["bridge"]
    if self.meta.get("pseudo_rounds"):  # what each pseudo-pair round's gate accepted
      header["pseudo_rounds"] = self.meta["pseudo_rounds"]
    return header

  def check_data(self, dataset: Dataset) -> None:
    virtual = [n for n in self.virtual if n not in dataset.modalities]
    dataset.check_graph(self.graph, virtual=virtual)

  def translate(self, x: np.ndarray, route: str) -> np.ndarray:
    return translate_paths(self.layout, self.params, self.compute_dtype, [route], x)[route]


@dataclasses.dataclass
class TranslatorStrategy(Strategy):
  """A strategy made of translator stages. aligner: how a trained run embeds queries and galleries
  for evaluation; None = translate along routes of the trained graph (GraphAligner), which also
  covers strategies that meet in a shared virtual node."""

  name: str = dataclasses.field()  # no default (Strategy's "" is for subclasses that set it)
  stages: Callable[[ml_collections.ConfigDict, Dataset], list[Stage]] = dataclasses.field()
  aligner: AlignerBuilder | None = None
  summary: str = ""
  settings: ml_collections.ConfigDict | None = None

  def make_aligner(self, layout, params: Mapping, compute_dtype: str, name: str | None = None):
    if self.aligner is not None:
      return self.aligner(layout, params, compute_dtype, name or self.name)
    return GraphAligner(layout, params, compute_dtype, name=name or self.name)

  def plan(self, config, dataset: Dataset) -> list[Stage]:
    """The stages this strategy would train on `dataset` (nothing built or compiled)."""
    built = self.stages(config, dataset)
    if not built:
      raise ConfigError(f"strategy {self.name!r} returned no stages")
    return built

  def describe(self, config, dataset: Dataset) -> list[str]:
    lines = []
    for name, setup in stage_setups(self, config, dataset):
      layout = setup.layout
      n_params = sum(b.size * bucket_param_count(b) for b in layout.trainable_buckets)
      lines.append(f"{name}: graph {setup.graph.describe()}")
      lines.append(
        f"{name}: plan {setup.plan.describe()}; {n_params:,} trainable parameters; compute dtype "
        f"{setup.compute_dtype}, batch {setup.batch_size}"
      )
    return lines

  def resume_config(self, config, dataset: Dataset):
    """The last stage's config: the one that trains in the workdir itself."""
    return with_overrides(config, self.plan(config, dataset)[-1].overrides)

  def train(self, config, dataset: Dataset, workdir: str | None, log: Log = print) -> StrategyRun:
    t0 = time.perf_counter()
    results = run_stages(self, self.plan(config, dataset), config, dataset, workdir, log)
    return self.finish(config, results, dataset, workdir, time.perf_counter() - t0)

  def finish(
    self, config, results: Sequence, trained_on: Dataset, workdir: str | None, seconds: float
  ) -> StrategyRun:
    """The run of trained stage results: the last stage's translators; their aligner reads which
    edges are paired hops from `trained_on` (pseudo-paired edges are, cycle-only edges are not)."""
    final = results[-1]
    layout = final.setup.layout
    model = TranslatorModel(
      self.name,
      layout,
      final.params,
      final.setup.compute_dtype,
      config,
      {"bridge": final.bridge} if getattr(final, "bridge", None) else {},
      int(final.state["step"]),
      workdir,
      self.make_aligner,
      frozen=tuple(e.name for e in layout.frozen),
    )
    if hasattr(model.aligner, "bind_data"):
      model.aligner.bind_data(trained_on)
    return StrategyRun(self.name, model, list(results), seconds)

  def load(self, workdir: str, step: int | None = None, log: Log | None = None) -> TranslatorModel:
    run = trained_lib.load_trained(workdir, step, log=log)
    resolved = os.path.join(
      workdir, "config.json"
    )  # the config as asked for (a strategy's checkpoint
    config = run.config  # holds its last stage's overrides applied)
    if os.path.isfile(resolved):
      try:
        with open(resolved) as f:
          config = ml_collections.ConfigDict(json.load(f))
      except ValueError as exc:
        raise DataError(
          f"{resolved} is not valid JSON ({exc}); it is the run's config as written at its "
          "start: restore it or delete it (the checkpoints hold a copy)"
        ) from None
    model = TranslatorModel(
      self.name,
      run.layout,
      run.params,
      run.compute_dtype,
      defaults.complete(config),
      run.meta,
      run.step,
      workdir,
      self.make_aligner,
      frozen=tuple(run.meta.get("layout", {}).get("frozen", [])),
    )
    model.skipped = run.skipped
    return model


def stage_setups(
  strategy: TranslatorStrategy, config, dataset: Dataset
) -> list[tuple[str, setup_lib.Setup]]:
  """[(stage name, training.setup.Setup)] the strategy would train, built exactly as training
  builds them (graph, translator layout, loss plan), without compiling or initialising anything."""
  out = []
  planned = strategy.plan(config, dataset)
  for stage in planned:
    frozen = [e.name for j in stage.freeze_stages for e in planned[j].graph.edges]
    out.append(
      (
        stage.name,
        setup_lib.build_setup(
          with_overrides(config, stage.overrides),
          dataset,
          graph=stage.graph,
          frozen=frozen,
          objective=stage.objective,
        ),
      )
    )
  return out


def run_stages(
  strategy: TranslatorStrategy,
  plan: Sequence[Stage],
  config,
  dataset: Dataset,
  workdir: str | None,
  log: Log,
) -> list:
  """Train `plan`'s stages in order (checkpoints under workdir); [trainer.TrainResult per stage]."""
  results = []
  for i, stage in enumerate(plan):
    if len(plan) > 1 or stage.overrides or stage.objective is not None:
      log(stage.name)
    frozen = {}
    for j in stage.freeze_stages:
      if not 0 <= j < i:
        raise ConfigError(
          f"strategy {strategy.name!r}: stage {i} freezes stage {j}, which is not an earlier one"
        )
      frozen.update(results[j].edge_params())
    stage_dir = os.path.join(workdir, stage.subdir) if workdir and stage.subdir else workdir
    results.append(
      trainer_lib.train(
        with_overrides(config, stage.overrides),
        stage_dir,
        dataset=dataset,
        log=log,
        graph=stage.graph,
        objective=stage.objective,
        frozen_params=frozen or None,
      )
    )
  return results


def build_graph(
  dataset: Dataset, edges: Sequence[str], virtual: Mapping[str, int] = ()
) -> ModalityGraph:
  """Every data modality and `virtual` node ({name: dim}, nodes without rows), with `edges` in
  order; checked against the data."""
  virtual = dict(virtual)
  graph = ModalityGraph.build({**dataset.dims, **virtual})
  for e in edges:
    graph = graph.add_edge(e)
  dataset.check_graph(graph, virtual=virtual)
  return graph


def pair_sets(dataset: Dataset) -> list[Edge]:
  return [Edge(a, b) for a, b in dataset.pairs]


def meet_objective(terms: tuple) -> ObjectiveBuilder:
  """Objective builder for projector strategies: InfoNCE (and optional cosine, as the stage's
  config.loss says) on explicit pair terms that meet in a shared node; no cycles."""

  def build(layout, dataset: Dataset, cfg) -> objectives_lib.LossPlan:
    settings = dataclasses.replace(
      setup_lib.loss_settings_from_config(cfg.loss), pair_terms=terms, cycle_weights=(0.0,)
    )
    return objectives_lib.build_plan(layout, settings, pair_sets(dataset))

  return build
