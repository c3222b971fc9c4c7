"""The seed method: translators on the edges of the data's pair graph (or config.graph.edges),
per-edge cosine + InfoNCE, cycles, optional contrastive fine-tuning phase, all from config.loss."""

from __future__ import annotations

from graphbridge.strategies.base import Stage, Strategy


def stages(config, dataset) -> list[Stage]:
  from graphbridge import train as train_lib
  return [Stage("translator graph", train_lib.graph_from_config(config, dataset))]


STRATEGY = Strategy("graph", stages, summary="translator graph: per-edge cosine + InfoNCE, cycles")
