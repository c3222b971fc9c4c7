"""ImageBind / VIP-ANT binding: every modality gets a projector into the pivot modality's space,
aligned by InfoNCE (config.pivot); alignment between the other modalities must emerge."""

from __future__ import annotations

from graphbridge.core.errors import GraphError
from graphbridge.strategies.base import pair_partners
from graphbridge.strategies.translator import Stage, TranslatorStrategy, build_graph


def choose_pivot(dataset, requested: str = "") -> str:
  """The requested pivot, or the modality in the most pair sets (ties: data order)."""
  if requested:
    if requested not in dataset.modalities:
      raise GraphError(
        f"pivot {requested!r} is not a modality of the data ({', '.join(dataset.names)})"
      )
    return requested
  return max(dataset.names, key=lambda m: (len(pair_partners(dataset, m)), -dataset.names.index(m)))


def stages(config, dataset) -> list[Stage]:
  pivot = choose_pivot(dataset, config.pivot.modality)
  unpaired = [m for m in dataset.names if m != pivot and not dataset.pairs_for(m, pivot).size]
  if unpaired:
    raise GraphError(
      f"pivot binding needs every modality paired with the pivot {pivot!r}; "
      f"no pairs for {', '.join(unpaired)} "
      f"(pair sets: {', '.join(dataset.pair_names)})"
    )
  graph = build_graph(dataset, [f"{m}->{pivot}" for m in dataset.names if m != pivot])
  overrides = {
    "loss.cycle_weights": (0.0,),
    "loss.edge_cos": float(config.pivot.edge_cos),
    "loss.infonce": float(config.pivot.infonce),
    "finetune.steps": 0,
  }
  return [Stage(f"pivot binding into {pivot!r}", graph, overrides)]


STRATEGY = TranslatorStrategy(
  "pivot", stages, summary="ImageBind-style binding into one pivot modality"
)
