"""C-MCR: two contrastive spaces sharing a modality, built CLIP-style from the raw embeddings in
stage 1 (then frozen), connected through a common space in stage 2 (objective: cmcr.py)."""

from __future__ import annotations

from graphbridge import objectives
from graphbridge.cmcr import CMCRObjective, CMCRSettings
from graphbridge.graph import GraphError
from graphbridge.strategies.base import Stage, Strategy, build_graph, meet_objective, pair_partners


def cmcr_roles(config, dataset) -> tuple[str, str, str]:
  """(shared, mod_a, mod_b): the shared modality and the other modality of each space."""
  shared = config.cmcr.shared or next(
      (m for m in dataset.names if len(pair_partners(dataset, m)) == 2), "")
  partners = pair_partners(dataset, shared) if shared in dataset.modalities else []
  if len(partners) != 2:
    pair_sets = ", ".join(dataset.pair_names)
    raise GraphError("C-MCR connects two spaces that share one modality: it needs a modality "
                     f"paired with exactly two others (pair sets: {pair_sets}); set cmcr.shared")
  return shared, partners[0], partners[1]


def cmcr_settings(config, dataset) -> CMCRSettings:
  shared, mod_a, mod_b = cmcr_roles(config, dataset)
  c = config.cmcr
  return CMCRSettings(
      shared=shared, mod_a=mod_a, mod_b=mod_b, space_a=f"space_{mod_a}", space_b=f"space_{mod_b}",
      common="common", temperature=float(c.temperature),
      memory_temperature=float(c.memory_temperature), noise_std=float(c.noise_std),
      memory_size=int(c.memory_size), inter_weight=float(c.inter_weight),
      pseudo_weight=float(c.pseudo_weight), intra_weight=float(c.intra_weight),
      seed=int(config.seed))


def stages(config, dataset) -> list[Stage]:
  s = cmcr_settings(config, dataset)
  dim, common_dim = int(config.cmcr.dim), int(config.cmcr.common_dim)
  space_edges = [f"{s.mod_a}->{s.space_a}", f"{s.shared}->{s.space_a}", f"{s.mod_b}->{s.space_b}",
                 f"{s.shared}->{s.space_b}"]
  spaces = {s.space_a: dim, s.space_b: dim}
  contrastive = {"loss.edge_cos": 0.0, "loss.infonce": 1.0, "finetune.steps": 0}
  stage1_steps = int(config.cmcr.stage1_steps)
  terms = (objectives.meet_term(s.mod_a, s.shared, s.space_a),
           objectives.meet_term(s.mod_b, s.shared, s.space_b))
  first = Stage("C-MCR stage 1: the two contrastive spaces",
                build_graph(dataset, space_edges, spaces),
                {**contrastive, **({"train.steps": stage1_steps} if stage1_steps > 0 else {})},
                objective=meet_objective(terms), subdir="stage1")
  label_positives = config.loss.get("infonce_positives", "label") == "label"
  connectors = [f"{s.space_a}->{s.common}", f"{s.space_b}->{s.common}"]
  second = Stage("C-MCR stage 2: connecting the spaces (stage-1 projectors frozen)",
                 build_graph(dataset, space_edges + connectors, {**spaces, s.common: common_dim}),
                 contrastive, freeze_stages=(0,),
                 objective=lambda layout, ds, cfg: CMCRObjective(layout, s, label_positives))
  return [first, second]


STRATEGY = Strategy("cmcr", stages,
                    summary="C-MCR: connect two contrastive spaces through a common one")
