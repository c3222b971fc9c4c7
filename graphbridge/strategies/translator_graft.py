"""Grafting: add a modality to a trained graph without retraining or touching what exists.

A graft restores the edges of a trained run (its latest complete checkpoint in `from_workdir`),
adds one new node and its edges to one or more existing nodes (`graft.modality`,
`graft.connect_to`: e.g. audio -> edges audio->text and text->audio), and trains only the new
edges. The old edges are frozen: they sit in frozen buckets of the layout, take part in every pair
term and cycle that passes through them (audio->text->audio trains both new edges) but get no
gradient step and no optimizer state. The new checkpoint holds every edge; the old edges' items are
copied byte for byte from the old checkpoint. The old workdir is only read.

Everything that can be checked is checked before anything is written (`plan_graft`): a missing or
incomplete checkpoint, node dims that differ from the data, a `connect_to` node that is not in the
old graph, a new modality that already is, or that the data does not have.

  plan = plan_graft(config, "/tmp/gb_base", "/tmp/gb_graft")   # checks; writes nothing
  result = graft(config, "/tmp/gb_base", "/tmp/gb_graft")      # train the new edges + report

`train_base` trains the graph *without* the new modality (the data restricted to
`graft.base_modalities`, default: every modality but `graft.modality`): the first half of the
worked example in docs/grafting.md.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from typing import Callable, Mapping
import jax
import ml_collections
import numpy as np
from graphbridge.core import errors
from graphbridge.training import checkpoint as checkpoint_lib
from graphbridge.core import fields
from graphbridge.data import dataset as dataset_lib
from graphbridge.evaluation import tables as tables_lib
from graphbridge.strategies import reporting
from graphbridge.strategies.base import graft_settings
from graphbridge.training import lock as lock_lib
from graphbridge.data.dataset import Dataset
from graphbridge.training import trainer as trainer_lib
from graphbridge.training import trained as trained_lib
from graphbridge.training import setup as setup_lib
from graphbridge.training import writers as writers_lib
from graphbridge.core.errors import GraphError
from graphbridge.core.graph import ModalityGraph, check_modality_name
from graphbridge.core.routes import parse_route
from graphbridge.core.errors import GraftError
from graphbridge.data.dataset import subset_modalities


GRAFT_FILE = "graft.json"


_log = writers_lib.log_process0  # the default `log` of every entry point


@dataclasses.dataclass
class GraftPlan:
  """A checked graft: what is restored, what is added, what is trained. Nothing written yet."""

  config: ml_collections.ConfigDict  # the run config: model copied from the old run
  dataset: dataset_lib.Dataset  # the data restricted to the new graph's nodes
  graph: ModalityGraph  # old graph + new node + new edges
  modality: str
  connect_to: tuple[str, ...]
  new_edges: tuple[str, ...]
  frozen_edges: tuple[str, ...]  # every edge of the old graph
  frozen_params: dict  # {edge_name: params} exactly as restored from the old checkpoint
  from_workdir: str
  from_step: int
  from_step_dir: str
  workdir: str

  def describe(self) -> str:
    return (
      f"graft {self.modality}[{self.graph.dim(self.modality)}] onto {self.from_workdir} (step "
      f"{self.from_step}): train {', '.join(self.new_edges)}; frozen {', '.join(self.frozen_edges)}"
    )


def _inside(path: str, parent: str) -> bool:
  path, parent = os.path.realpath(path), os.path.realpath(parent)
  return path == parent or path.startswith(parent.rstrip(os.sep) + os.sep)


def _restore_old_run(from_workdir: str, log: Callable[[str], None]) -> trained_lib.TrainedRun:
  if not os.path.isdir(from_workdir):
    raise GraftError(
      f"--from_workdir={from_workdir}: no such directory (the trained run to graft onto)"
    )
  try:
    # a damaged newer step of the old run is skipped with a line naming it
    return trained_lib.load_trained(from_workdir, log=log)
  except errors.CheckpointError as exc:
    raise GraftError(f"cannot graft onto {from_workdir}: {exc}") from None


def plan_graft(
  config: ml_collections.ConfigDict,
  from_workdir: str,
  workdir: str,
  dataset: dataset_lib.Dataset | None = None,
  log: Callable[[str], None] = _log,
) -> GraftPlan:
  """Check a graft and restore the old edges; reads `from_workdir` and the data, writes nothing.

  config.graft.modality: the new node (must be in the data, not in the old graph).
  config.graft.connect_to: old nodes to join it to, both directions ("" = every old node the
    data pairs it with). The new edges use the old run's translator architecture.
  Raises GraftError with what to change."""
  spec = graft_settings(config)
  modality = str(spec.modality)
  if not modality:
    raise GraftError(
      "graft.modality is empty: name the modality to add (e.g. --config.graft.modality=audio)"
    )
  try:
    check_modality_name(modality)
  except GraphError as exc:
    raise GraftError(f"graft.modality: {exc}") from None
  from_workdir, workdir = os.path.abspath(from_workdir), os.path.abspath(workdir)
  if _inside(workdir, from_workdir):
    raise GraftError(
      f"--workdir={workdir} is (inside) --from_workdir={from_workdir}; the old run is never "
      "written to: choose a new directory"
    )

  if modality not in dataset.modalities:
    raise GraftError(
      f"graft.modality={modality!r} is not in the data {dataset.source} "
      f"(modalities: {', '.join(dataset.names)})"
    )

  old = _restore_old_run(from_workdir, log)
  old_graph = old.graph
  if modality in old_graph.dims:
    raise GraftError(
      f"graft.modality={modality!r} is already in the graph of {from_workdir} "
      f"(nodes: {', '.join(old_graph.node_names)}); graft a modality the old graph lacks"
    )
  for name, dim in old_graph.nodes:
    if name not in dataset.modalities:
      raise GraftError(
        f"the graph of {from_workdir} has node {name!r}, which the data {dataset.source} lacks "
        f"(modalities: {', '.join(dataset.names)}); graft with the data the old run used"
      )
    if dataset.modalities[name].dim != dim:
      raise GraftError(
        f"dimension mismatch for {name!r}: the checkpoint in {from_workdir} (step {old.step}) "
        f"was trained with {name}[{dim}], the data {dataset.source} has "
        f"{name}[{dataset.modalities[name].dim}]"
      )

  partners = [b if a == modality else a for a, b in dataset.pairs if modality in (a, b)]
  connect_to = fields.names(spec.connect_to)
  if not connect_to:
    connect_to = tuple(n for n in old_graph.node_names if n in partners)
    if not connect_to:
      raise GraftError(
        f"graft.connect_to is empty and the data pairs {modality!r} with no node of the old "
        f"graph (old nodes: {', '.join(old_graph.node_names)}; {modality} is paired with "
        f"{', '.join(partners) or 'nothing'}); set graft.connect_to"
      )
  for node in connect_to:
    if node == modality:
      raise GraftError(f"graft.connect_to names the new modality {modality!r} itself")
    if node not in old_graph.dims:
      raise GraftError(
        f"graft.connect_to={node!r} is not a node of the graph of {from_workdir} "
        f"(nodes: {', '.join(old_graph.node_names)})"
      )
  if not any(n in partners for n in connect_to):
    raise GraftError(
      f"the data has no pairs of {modality!r} with {', '.join(connect_to)} (graft.connect_to); "
      f"the new edges would have nothing to align to (pair sets: "
      f"{', '.join(dataset.pair_names) or 'none'})"
    )
  unpaired = [n for n in connect_to if n not in partners]
  if unpaired:
    log(
      f"note: no pairs of {modality} with {', '.join(unpaired)}: "
      "those edges are trained by cycles only"
    )

  archs = {json.dumps(a, sort_keys=True) for a in old.meta["layout"]["arch"].values()}
  if len(archs) != 1:
    raise GraftError(
      f"the edges of {from_workdir} have different translator architectures; grafting needs "
      "one architecture for the whole graph (train.build_setup takes one)"
    )
  old_arch = json.loads(archs.pop())
  config = _config_for_graft(config, old_arch, from_workdir, old.step, log)

  graph = old_graph.add_node(modality, dataset.modalities[modality].dim)
  for node in connect_to:
    graph = graph.add_edges_both_ways(modality, node)
  new_edges = tuple(e.name for e in graph.edges if e.name not in old_graph.edge_names)
  frozen_edges = old_graph.edge_names
  data = subset_modalities(dataset, graph.node_names)
  try:
    setup_lib.build_setup(
      config, data, graph=graph, frozen=frozen_edges
    )  # config errors now, not mid-run
    for route in fields.names(config.eval.paths):  # eval.paths: checked now, not after training
      parse_route(graph, route)
  except (GraphError, ValueError) as exc:
    raise GraftError(
      f"the grafted graph cannot be trained and evaluated as configured: {exc}"
    ) from None

  _check_existing_run(workdir, graph, from_workdir)
  base_fp = old.meta.get("data", {}).get("fingerprint")
  if base_fp and base_fp != subset_modalities(dataset, old_graph.node_names).fingerprint():
    log(
      f"note: the data's {', '.join(old_graph.node_names)} rows differ from those {from_workdir} "
      "was trained on; grafting anyway"
    )
  frozen_params = jax.tree.map(np.asarray, old.edge_params())
  step_dir = os.path.join(from_workdir, "checkpoints", str(old.step))
  return GraftPlan(
    config,
    data,
    graph,
    modality,
    connect_to,
    new_edges,
    frozen_edges,
    frozen_params,
    from_workdir,
    old.step,
    step_dir,
    workdir,
  )


def _check_existing_run(workdir: str, graph: ModalityGraph, from_workdir: str) -> None:
  """A workdir that already holds checkpoints must hold this graft (then it resumes): the same
  graph, grafted onto the same run. Anything else is an error; nothing there is touched."""
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    return
  checkpoints = checkpoint_lib.Checkpoints(
    directory, max_to_keep=None, async_save=False, read_only=True
  )
  step = checkpoints.latest_complete_step()
  if step is None:
    return
  meta = checkpoints.restore_meta(step)
  saved = ModalityGraph.from_dict(meta["layout"]["graph"])
  if set(saved.nodes) != set(graph.nodes) or set(saved.edges) != set(graph.edges):
    raise GraftError(
      f"--workdir={workdir} already holds a run of another graph ({saved.describe()}) at step "
      f"{step}; the graft builds {graph.describe()}: choose a new directory"
    )
  saved_from = (meta.get("config", {}).get("graft") or {}).get("from_workdir")
  if saved_from != from_workdir:
    what = (
      f"a graft onto {saved_from}" if saved_from else "a run that is not a graft (trained directly)"
    )
    raise GraftError(
      f"--workdir={workdir} already holds {what} at step {step}, not a graft onto "
      f"{from_workdir}; choose a new directory (nothing there was changed)"
    )


def _config_for_graft(
  config, old_arch: Mapping, from_workdir: str, from_step: int, log: Callable[[str], None]
) -> ml_collections.ConfigDict:
  """A copy of config whose model is the old run's translator architecture, and which records
  where the graft came from (the run's meta then says so)."""
  config = copy.deepcopy(config)
  model = config.model
  asked = {
    "hidden": tuple(model.hidden),
    "activation": model.activation,
    "layer_norm": bool(model.layer_norm),
    "residual": bool(model.residual),
    "linear_rank": (
      setup_lib.linear_rank_from_config(model)
      if int(model.get("linear_rank", -1)) != -1
      else int(old_arch.get("linear", 0))  # auto: whatever the old run chose
    ),
  }
  old = {
    "hidden": tuple(old_arch["hidden"]),
    "activation": old_arch["activation"],
    "layer_norm": bool(old_arch["layer_norm"]),
    "residual": bool(old_arch["residual"]),
    "linear_rank": int(old_arch.get("linear", 0)),  # 0 in runs from before the linear path
  }
  if asked != old:
    differ = ", ".join(f"model.{k}={asked[k]!r}" for k in asked if asked[k] != old[k])
    log(
      f"note: the new edges use the old run's translator architecture ({differ} replaced by "
      f"{', '.join(f'{k}={old[k]!r}' for k in old if asked[k] != old[k])})"
    )
  with config.unlocked():
    model.hidden = old["hidden"]
    model.activation = old["activation"]
    model.layer_norm = old["layer_norm"]
    model.residual = old["residual"]
    model.linear_rank = old["linear_rank"]
    config.graft.from_workdir = from_workdir
    config.graft.from_step = int(from_step)
  return config


def item_digest(step_dir: str, edge: str) -> str:
  """sha256 over the relative paths and bytes of every file of an edge's checkpoint item."""
  return checkpoint_lib.item_digest(os.path.join(step_dir, checkpoint_lib.edge_item_name(edge)))


def _latest_step_dir(workdir: str) -> tuple[int, str]:
  _, checkpoints = checkpoint_lib.read_workdir(workdir)
  step = checkpoints.latest_complete_step()
  if step is None:
    raise errors.CheckpointError(f"no complete checkpoint in {workdir} after grafting")
  return step, checkpoints.step_dir(step)


@dataclasses.dataclass
class GraftResult:
  plan: GraftPlan
  train: trainer_lib.TrainResult
  report: dict | None
  step: int
  item_digests: dict[
    str, str
  ]  # {old edge: sha256 of its item}, equal in the old and new checkpoint


def graft(
  strategy,
  config: ml_collections.ConfigDict,
  from_workdir: str,
  workdir: str,
  dataset: Dataset,
  report: bool = True,
  plots: bool = True,
  log: Callable[[str], None] = _log,
) -> GraftResult:
  """Graft config.graft.modality onto the translator run in `from_workdir` (trained by
  `strategy`); checkpoints, metrics, graft.json and the report (zero-shot rows of the new modality
  included) go to `workdir`. Resumes an interrupted graft in `workdir`. GraftError before anything
  is written if the graft cannot be done (see plan_graft)."""
  plan = plan_graft(config, from_workdir, workdir, dataset, log=log)
  with lock_lib.WorkdirLock(plan.workdir, log=log):  # one writer, to the report
    return _graft(strategy, plan, report, plots, log)


def _graft(
  strategy, plan: GraftPlan, report: bool, plots: bool, log: Callable[[str], None]
) -> GraftResult:
  log(plan.describe())
  log(f"data: {plan.dataset.source}\n{plan.dataset.summary()}")
  result = trainer_lib.train(
    plan.config,
    plan.workdir,
    dataset=plan.dataset,
    frozen_params=plan.frozen_params,
    graph=plan.graph,
    frozen_from={e: plan.from_step_dir for e in plan.frozen_edges},
    log=log,
  )
  step, step_dir = _latest_step_dir(plan.workdir)
  digests = {}
  for edge in plan.frozen_edges:
    old, new = item_digest(plan.from_step_dir, edge), item_digest(step_dir, edge)
    if old != new:  # the copy is byte for byte; anything else is a bug worth stopping for
      raise errors.CheckpointError(
        f"grafted checkpoint step {step}: item of frozen edge {edge} differs "
        f"from {plan.from_step_dir}"
      )
    digests[edge] = new
  provenance = {
    "from_workdir": plan.from_workdir,
    "from_step": plan.from_step,
    "modality": plan.modality,
    "connect_to": list(plan.connect_to),
    "new_edges": list(plan.new_edges),
    "frozen_edges": list(plan.frozen_edges),
    "step": step,
    "frozen_item_sha256": digests,
    "train_seconds": result.seconds,
    "compile_seconds": result.compile_seconds,
  }
  tables_lib.write_json(os.path.join(plan.workdir, GRAFT_FILE), provenance)
  summary = None
  if report:
    run = strategy.finish(plan.config, [result], plan.dataset, plan.workdir, result.seconds)
    summary = reporting.report(
      run.model,
      plan.config,
      plan.dataset,
      plan.workdir,
      results=[result],
      header={"graft": provenance},
      plots=plots,
      log=log,
    )
    append_graft_section(plan.workdir, summary, plan)
    for line in zero_shot_lines(summary, plan.modality):
      log(line)
  log(f"graft trained in {result.seconds:.1f}s incl. compile {result.compile_seconds:.1f}s")
  return GraftResult(plan, result, summary, step, digests)


def new_modality_rows(summary: Mapping, modality: str) -> list[dict]:
  """Retrieval rows with the new modality as query or gallery, zero-shot ones (hops >= 2) first."""
  rows = [r for r in summary["rows"] if modality in (r["query"], r["gallery"])]
  return sorted(rows, key=lambda r: (-(r["hops"] or 99), r["query"], r["gallery"], r["level"]))


def zero_shot_lines(summary: Mapping, modality: str) -> list[str]:
  """One console line per zero-shot retrieval row of the new modality."""
  out = []
  for r in new_modality_rows(summary, modality):
    if (r["hops"] or 0) >= 2:
      out.append(
        f"zero-shot {r['query']}->{r['gallery']} ({r['level']}, route {r['route']}, "
        f"{r['hops']} hops): mAP {r['mAP']:.3f} (chance {r['chance_mAP']:.3f}), R@1 {r['R@1']:.3f}"
      )
  return out


def append_graft_section(workdir: str, summary: Mapping, plan: GraftPlan) -> None:
  """A 'Grafted modality' section at the end of report.md: provenance, then the new modality's
  rows."""
  rows = new_modality_rows(summary, plan.modality)
  text = [
    "\n## Grafted modality\n\n",
    f"`{plan.modality}` was grafted onto `{plan.from_workdir}` (checkpoint step {plan.from_step}): "
    f"trained {', '.join(plan.new_edges)}; frozen (checkpoint items copied byte for byte) "
    f"{', '.join(plan.frozen_edges)}.\n\n",
    f"_Retrieval rows of {plan.modality}. hops >= 2: modalities it was never paired with, reached "
    "through frozen edges of the old graph (zero-shot)._\n\n",
    tables_lib.format_table(rows, tables_lib.RETRIEVAL_COLUMNS) + "\n",
  ]
  with open(os.path.join(workdir, "report.md"), "a") as f:
    f.write("".join(text))
