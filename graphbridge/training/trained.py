"""A translator run restored from its checkpoint directory."""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping
import jax
import jax.numpy as jnp
import ml_collections
from graphbridge.core import errors
from graphbridge.training import checkpoint as checkpoint_lib
from graphbridge.core.graph import ModalityGraph
from graphbridge.model.translators import EdgeLayout, TranslatorArch, stack, unstack


@dataclasses.dataclass
class TrainedRun:
  """A run restored from its checkpoint directory (for evaluation, grafting, composing paths)."""

  layout: EdgeLayout
  params: dict  # {bucket_key: stacked} for every edge
  config: ml_collections.ConfigDict
  meta: dict
  step: int
  workdir: str
  skipped: tuple = ()  # (step, problem) of newer steps skipped as damaged, newest first

  @property
  def graph(self) -> ModalityGraph:
    return self.layout.graph

  @property
  def compute_dtype(self) -> str:
    return self.meta.get("compute_dtype", "float32")

  def edge_params(self) -> dict:
    return unstack(self.layout, self.params)


def layout_from_meta(meta: Mapping) -> EdgeLayout:
  layout = meta["layout"]
  graph = ModalityGraph.from_dict(layout["graph"])
  arch = {e: TranslatorArch.from_dict(a) for e, a in layout["arch"].items()}
  return EdgeLayout.build(
    graph, arch
  )  # every edge trainable: a restored run is a plain set of params


warn = checkpoint_lib.warn  # one line on stderr: a fallback is never silent


def load_trained(
  workdir: str, step: int | None = None, log: Callable[[str], None] | None = None
) -> TrainedRun:
  """Restore every edge's params from workdir/checkpoints (latest complete step by default).

  Without `step`, a newer step that is damaged (corrupt, incomplete) is skipped with one line in
  `log` (default: stderr) naming the step and what is wrong; TrainedRun.skipped lists them. A step
  that does not exist is a CheckpointError naming the steps there are."""
  directory, checkpoints = checkpoint_lib.read_workdir(workdir)
  if not checkpoints.all_steps():
    raise errors.CheckpointError(f"no complete checkpoint in {directory}")

  def restore(candidate: int):
    meta = checkpoints.check_complete(candidate)
    layout = layout_from_meta(meta)
    return meta, layout, checkpoints.restore_edges(candidate, [e.name for e in layout.graph.edges])

  found, step, problems = checkpoints.newest_usable(restore, step, log or warn)
  if found is None:
    raise errors.CheckpointError(f"no usable checkpoint in {directory}: " + "; ".join(problems))
  meta, layout, items = found
  params = stack(
    layout, {e: jax.tree.map(jnp.asarray, item["params"]) for e, item in items.items()}
  )
  config = ml_collections.ConfigDict(meta.get("config", {}))
  skipped = tuple(
    (s, p) for s, p in zip([s for s in reversed(checkpoints.all_steps()) if s > step], problems)
  )
  return TrainedRun(layout, params, config, meta, step, workdir, skipped)


def workdir_meta(workdir: str) -> dict:
  """The meta of the newest step in workdir/checkpoints whose meta can be read (which model, which
  strategy, which config); CheckpointError if there is none."""
  directory, checkpoints = checkpoint_lib.read_workdir(workdir)
  problems = []
  for step in reversed(checkpoints.all_steps()):
    try:
      return checkpoints.restore_meta(step)
    except errors.CheckpointError as exc:
      problems.append(str(exc))
  raise errors.CheckpointError(
    f"no complete checkpoint in {directory}" + (": " + "; ".join(problems) if problems else "")
  )


def strategy_name(meta: Mapping) -> str:
  """The strategy a checkpoint's meta was written by (checkpoints before the field: its config's,
  or the model kind)."""
  return str(
    meta.get("strategy")
    or (meta.get("config") or {}).get("strategy")
    or meta.get("kind")
    or "graph"
  )
