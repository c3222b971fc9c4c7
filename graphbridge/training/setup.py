"""What a run trains, built from config and data before anything is compiled."""

from __future__ import annotations

from typing import Iterable
from graphbridge import defaults
from graphbridge.core.graph import Edge
from graphbridge.core.errors import GraphError
import dataclasses
from typing import Callable, Sequence
from graphbridge.core import fields
from graphbridge.core.errors import ConfigError
from graphbridge.data import dataset as dataset_lib
from graphbridge.data import positives as positives_lib
from graphbridge.model import objective as objective_lib
from graphbridge.model import objectives as objectives_lib
from graphbridge.core.graph import ModalityGraph
from graphbridge.model.translators import EdgeLayout, TranslatorArch, dtype_from_name
from graphbridge.core.fields import get as _get
from graphbridge.core.routes import parse_route
from graphbridge.core.fields import names


def check_against_graph(
  config, graph, dataset=None, frozen_given: Iterable[str] | None = None, eval_paths: bool = True
) -> None:
  """ConfigError for config values that name edges or nodes the graph (built from the config and
  the data) does not have: graph.frozen, loss.supervised_edges (which also need train pairs),
  loss.cycle_starts, eval.paths. Runs before anything is compiled."""
  problems = []
  edges = {e.name for e in graph.edges}
  listing = ", ".join(sorted(edges)) or "none"
  for e in names(_get(config, "graph.frozen")):
    if Edge.parse(e).name not in edges:
      problems.append(
        f"graph.frozen names {e}, which is not an edge of the graph (edges: {listing})"
      )
    elif frozen_given is not None and Edge.parse(e).name not in set(frozen_given):
      problems.append(
        f"graph.frozen names {e}, but no trained parameters are given for it: frozen edges come "
        "from a trained run (graphbridge-graft sets them); leave graph.frozen empty to train it"
      )
  for e in names(_get(config, "loss.supervised_edges")):
    name = Edge.parse(e).name
    if name not in edges:
      problems.append(
        f"loss.supervised_edges names {e}, which is not an edge of the graph (edges: {listing})"
      )
    elif dataset is not None and not len(dataset.pairs_for(*name.split("->"))):
      problems.append(f"loss.supervised_edges names {e}, but the data has no train pairs for it")
  for node in names(_get(config, "loss.cycle_starts")):
    if node not in graph.node_names:
      problems.append(
        f"loss.cycle_starts names {node!r}, which is not a node of the graph "
        f"({', '.join(graph.node_names)})"
      )
  if eval_paths:
    for route in names(_get(config, "eval.paths")):
      try:
        parse_route(graph, route)
      except (GraphError, KeyError, ValueError) as exc:
        problems.append(f"eval.paths route {route!r}: {exc}")
  if problems:
    raise ConfigError("invalid config for this graph:\n  " + "\n  ".join(problems))


@dataclasses.dataclass(frozen=True)
class Setup:
  """Everything static about a run: graph, translator layout, objective, dtypes, batch size.

  `plan` is the step's objective (objective_lib.Objective): the graph's `objectives_lib.LossPlan`,
  `cmcr.CMCRObjective`, or any strategy's own."""

  layout: EdgeLayout
  plan: objective_lib.Objective
  compute_dtype: str
  batch_size: int
  infonce_positives: tuple  # (("a->b", "label" | "pair"), ...) per pair set of the data
  positive_choices: tuple = ()  # ((pair set, choice, why), ...) as printed on the plan line

  @property
  def graph(self) -> ModalityGraph:
    return self.layout.graph


def linear_rank_from_config(model_cfg, graph_plan: bool = True) -> int:
  """model.linear_rank with auto (-1) read as on (the widest hidden layer), for the graph loss plan
  (graph_plan), and as 0 for strategies with their own objective; resolve_linear_rank also reads
  the data."""
  rank = int(model_cfg.get("linear_rank", defaults.default("model.linear_rank")))
  if rank != -1:
    return rank
  return max(tuple(model_cfg.hidden) or (256,)) if graph_plan else 0


def resolve_linear_rank(model_cfg, dataset, graph_plan: bool = True) -> tuple[int, str]:
  """(TranslatorArch.linear, why) for a run: model.linear_rank, where -1 (auto) is the widest
  hidden layer (256 by default: the path costs at most one more hidden layer) where the run trains
  the translator graph's own loss plan (every edge on its own pairs, so each can start as the
  ridge map of them) and every pair set of the data is instance-level by the rule of
  loss.infonce_positives="auto"; else 0 (no linear path): class-level pairs (random rows of one
  class) make the ridge map a regression onto class means, and there the MLP already beats it
  (digits 0.956 against 0.746); strategies with their own objective (pivot, pairwise, C-MCR)
  keep the architecture they were measured with."""
  rank = int(model_cfg.get("linear_rank", defaults.default("model.linear_rank")))
  if rank != -1:
    return rank, "asked for"
  if not graph_plan:
    return 0, "auto: the strategy has its own objective"
  n_sets, class_level = positives_lib.class_level_pair_sets(dataset)
  if not n_sets:
    return 0, "auto: no pair sets"
  if class_level:
    return 0, "auto: class-level pair sets " + ", ".join(class_level)
  return linear_rank_from_config(model_cfg), f"auto: all {n_sets} pair sets instance-level"


def arch_from_config(
  model_cfg, graph_plan: bool = True, linear: int | None = None
) -> TranslatorArch:
  """The translator architecture of model_cfg; linear: the resolved linear path (None:
  linear_rank_from_config, i.e. without reading the data)."""
  return TranslatorArch(
    hidden=tuple(model_cfg.hidden),
    activation=model_cfg.activation,
    layer_norm=bool(model_cfg.layer_norm),
    residual=bool(model_cfg.residual),
    impl=model_cfg.impl,
    edge_apply=model_cfg.edge_apply,
    linear=linear_rank_from_config(model_cfg, graph_plan) if linear is None else linear,
  )


def loss_settings_from_config(loss_cfg) -> objectives_lib.LossSettings:
  sup = fields.names(loss_cfg.supervised_edges)
  starts = fields.names(loss_cfg.cycle_starts)
  return objectives_lib.LossSettings(
    edge_cos=float(loss_cfg.edge_cos),
    infonce=float(loss_cfg.infonce),
    temperature=float(loss_cfg.temperature),
    learn_temperature=bool(loss_cfg.learn_temperature),
    cycle_weights=tuple(float(w) for w in loss_cfg.cycle_weights),
    supervised_edges=sup or None,
    cycle_starts=starts or None,
    aligned_batches=bool(loss_cfg.aligned_batches),
    structure=float(loss_cfg.structure),
    structure_temperature=float(loss_cfg.structure_temperature),
  )


def virtual_nodes_from_config(config) -> dict[str, int]:
  """graph.virtual_nodes = "shared:256,common:128": nodes with no data (projection spaces)."""
  return fields.virtual_nodes(config.graph.get("virtual_nodes", ""))


def graph_from_config(config, dataset: dataset_lib.Dataset) -> ModalityGraph:
  edges = fields.names(config.graph.get("edges", ""))
  virtual = virtual_nodes_from_config(config)
  if edges:
    graph = ModalityGraph.build({**dataset.dims, **virtual})
    for e in edges:
      graph = graph.add_edge(e)
  else:
    graph = dataset.default_graph()
    for name, dim in virtual.items():
      graph = graph.add_node(name, dim)
  for e in fields.names(config.graph.get("extra_edges", "")):
    if Edge.parse(e) not in graph.edges:
      graph = graph.add_edge(e)
  dataset.check_graph(graph, virtual=virtual)
  return graph


def build_setup(
  config,
  dataset: dataset_lib.Dataset,
  graph: ModalityGraph | None = None,
  frozen: Sequence[str] = (),
  objective: Callable | None = None,
  training: bool = False,
  linear_rank: int | None = None,
) -> Setup:
  """Static setup of a run. objective(layout, dataset, config) builds a strategy objective
  (default: the translator graph's loss plan from config.loss). training: the setup is for `train`,
  so every edge in graph.frozen must be among `frozen` (edges whose trained parameters are given).
  linear_rank: the translators' linear path as resolved by the caller (self-training rounds decide
  it once, on the data's own pairs); None: resolve_linear_rank on `dataset`."""
  graph = graph or graph_from_config(config, dataset)
  check_against_graph(
    config, graph, dataset, frozen_given=frozen if training else None, eval_paths=objective is None
  )
  dataset.check_train_pairs()
  frozen = tuple(frozen) + fields.names(config.graph.get("frozen", ""))
  if linear_rank is None:
    linear_rank = resolve_linear_rank(config.model, dataset, graph_plan=objective is None)[0]
  layout = EdgeLayout.build(
    graph, arch_from_config(config.model, objective is None, linear_rank), frozen=frozen
  )
  if objective is not None:
    plan = objective(layout, dataset, config)
  else:
    paired = [e for e in graph.edges if len(dataset.pairs_for(e.src, e.dst))]
    plan = objectives_lib.build_plan(
      layout,
      loss_settings_from_config(config.loss),
      paired,
      data_nodes=[n for n in graph.node_names if n in dataset.modalities],
    )
  dtype_from_name(config.model.compute_dtype)  # validate early
  requested = config.loss.infonce_positives
  if requested not in positives_lib.POSITIVES:
    raise ConfigError(f"loss.infonce_positives={requested!r}: choose 'auto', 'label' or 'pair'")
  choices = {
    f"{a}->{b}": positives_lib.choose_positives(dataset, a, b, requested) for a, b in dataset.pairs
  }
  return Setup(
    layout,
    plan,
    config.model.compute_dtype,
    int(config.data.batch_size),
    tuple((k, v[0]) for k, v in choices.items()),
    tuple((k, *v) for k, v in choices.items()),
  )


def describe_positives(setup: Setup) -> str:
  """'InfoNCE positives: image<->text label (class-level pairs ...), ...' for the plan line."""
  return "InfoNCE positives: " + ", ".join(
    f"{k.replace('->', '<->')} {c} ({why})" for k, c, why in setup.positive_choices
  )
