"""What a strategy is: a name, the stages it trains, and how its trained translators are scored.

A strategy turns (config, dataset) into a list of `Stage` objects. Each stage is one call of
`train.train` with an explicit graph, an optional objective builder and a few numeric config
overrides; nothing about the graph travels through config strings. `run_strategy` (in
`strategies/__init__.py`) runs the stages in order, freezing earlier stages' edges where a stage
asks for it, and builds the aligner the evaluation scores.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import ml_collections

from graphbridge import config_check
from graphbridge.data import Dataset
from graphbridge.graph import Edge, ModalityGraph

# objective(layout, dataset, stage_config) -> an `objective_api.Objective`
ObjectiveBuilder = Callable[[Any, Dataset, ml_collections.ConfigDict], Any]
# aligner(layout, params, compute_dtype, name) -> an `evaluate.Aligner`
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


@dataclasses.dataclass(frozen=True)
class Strategy:
  """A registered strategy (see `strategies.register`).

  stages(config, dataset) -> [Stage, ...]: what to train, in order; raise GraphError/ConfigError
    with an actionable message when the data does not fit the strategy.
  aligner: how a trained (or restored) run of this strategy embeds queries and galleries for
    evaluation; None = translate along routes of the trained graph (evaluate.GraphAligner), which
    also covers strategies that meet in a shared virtual node.
  summary: one line for listings and docs.
  """
  name: str
  stages: Callable[[ml_collections.ConfigDict, Dataset], list[Stage]]
  aligner: AlignerBuilder | None = None
  summary: str = ""

  def make_aligner(self, layout, params: Mapping, compute_dtype: str, name: str | None = None):
    if self.aligner is not None:
      return self.aligner(layout, params, compute_dtype, name or self.name)
    from graphbridge.evaluate import GraphAligner
    return GraphAligner(layout, params, compute_dtype, name=name or self.name)


def with_overrides(config: ml_collections.ConfigDict,
                   overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """An unlocked copy of `config` with dotted `overrides` set (the keys must exist)."""
  out = ml_collections.ConfigDict(config.to_dict())
  for dotted, value in overrides.items():
    node = out
    *parents, leaf = dotted.split(".")
    for part in parents:
      node = node[part]
    if leaf not in node:
      raise config_check.ConfigError(f"stage override {dotted!r}: no such config field")
    node[leaf] = value
  return out


def pair_partners(dataset: Dataset, modality: str) -> list[str]:
  """The modalities `modality` has pair sets with, in the data's pair order."""
  return [b if a == modality else a for a, b in dataset.pairs if modality in (a, b)]


def build_graph(dataset: Dataset, edges: Sequence[str],
                virtual: Mapping[str, int] = ()) -> ModalityGraph:
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
  from graphbridge import objectives
  from graphbridge import train as train_lib

  def build(layout, dataset: Dataset, cfg) -> objectives.LossPlan:
    settings = dataclasses.replace(train_lib.loss_settings_from_config(cfg.loss), pair_terms=terms,
                                   cycle_weights=(0.0,))
    return objectives.build_plan(layout, settings, pair_sets(dataset))
  return build
