"""CLIP-style: every modality is projected into one shared virtual space (config.pairwise.dim);
symmetric InfoNCE on every pair set, meeting in that space."""

from __future__ import annotations

from graphbridge.model import objectives as objectives_lib
from graphbridge.strategies.translator import Stage, TranslatorStrategy, build_graph, meet_objective


SHARED_NODE = "shared"


def stages(config, dataset) -> list[Stage]:
  graph = build_graph(
    dataset, [f"{m}->{SHARED_NODE}" for m in dataset.names], {SHARED_NODE: int(config.pairwise.dim)}
  )
  overrides = {
    "loss.edge_cos": float(config.pairwise.edge_cos),
    "loss.infonce": float(config.pairwise.infonce),
    "finetune.steps": 0,
  }
  terms = tuple(objectives_lib.meet_term(a, b, SHARED_NODE) for a, b in dataset.pairs)
  return [Stage("pairwise", graph, overrides, objective=meet_objective(terms))]


STRATEGY = TranslatorStrategy(
  "pairwise", stages, summary="CLIP-style projection of every modality into one space"
)
