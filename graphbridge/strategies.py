"""The field's alignment methods as strategies of one pipeline.

Every strategy is a translator graph trained by the same jitted step, optimizer, NaN guard and
per-edge checkpoints, and scored by the same evaluation code; they differ in the graph and the
objective:

* graph     translators on the edges of the data's pair graph; per-edge cosine + InfoNCE, cycles,
            optional contrastive fine-tuning phase (the seed method).
* pivot     ImageBind / VIP-ANT binding: every modality gets a projector into the pivot
            modality's space, aligned by InfoNCE; alignment between the others must emerge.
* pairwise  CLIP-style: every modality is projected into one shared (virtual) space; symmetric
            InfoNCE on every pair set.
* cmcr      C-MCR: two contrastive spaces sharing a modality (built CLIP-style from the raw
            embeddings in stage 1, then frozen) connected through a common space (stage 2, see
            cmcr.py).

Post-hoc alignment (centering, Procrustes, CCA) wraps any strategy's aligner; linear baselines
(ridge and CCA, through the pivot where two modalities were never paired) give references.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable, Mapping

import ml_collections
import numpy as np

from graphbridge import objectives
from graphbridge import posthoc
from graphbridge import train as train_lib
from graphbridge.cmcr import CMCRObjective, CMCRSettings
from graphbridge.data import Dataset
from graphbridge.graph import Edge, GraphError, ModalityGraph
from graphbridge.evaluate import GraphAligner as TranslatorAligner
from graphbridge.routes import parse_route
from graphbridge.translators import EdgeLayout, init_params

STRATEGIES = ("graph", "pivot", "pairwise", "cmcr")
POSTHOC = ("none", "center", "procrustes", "cca")
SHARED_NODE = "shared"


def check_strategy(name: str) -> str:
  if name not in STRATEGIES:
    raise train_lib.ConfigError(f"strategy {name!r} is not known (choices: {', '.join(STRATEGIES)})")
  return name


def unlocked_copy(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(config.to_dict())


def pair_partners(dataset: Dataset, modality: str) -> list[str]:
  return [b if a == modality else a for a, b in dataset.pairs if modality in (a, b)]


def choose_pivot(dataset: Dataset, requested: str = "") -> str:
  """The requested pivot, or the modality in the most pair sets (ties: data order)."""
  if requested:
    if requested not in dataset.modalities:
      raise GraphError(f"pivot {requested!r} is not a modality of the data ({', '.join(dataset.names)})")
    return requested
  return max(dataset.names, key=lambda m: (len(pair_partners(dataset, m)), -dataset.names.index(m)))


def _pair_sets(dataset: Dataset) -> list[Edge]:
  return [Edge(a, b) for a, b in dataset.pairs]


def _meet_objective(terms: tuple[objectives.PairTerm, ...], config) -> Callable:
  """Objective builder for projector strategies: InfoNCE (and optional cosine) on explicit terms."""
  def build(layout: EdgeLayout, dataset: Dataset, cfg) -> objectives.LossPlan:
    settings = dataclasses.replace(train_lib.loss_settings_from_config(cfg.loss), pair_terms=terms,
                                   cycle_weights=(0.0,))
    return objectives.build_plan(layout, settings, _pair_sets(dataset))
  return build


# ---- strategy configs -----------------------------------------------------------------------------

def pivot_config(config, dataset: Dataset) -> tuple[ml_collections.ConfigDict, str]:
  pivot = choose_pivot(dataset, config.pivot.modality)
  unpaired = [m for m in dataset.names if m != pivot and not dataset.pairs_for(m, pivot).size]
  if unpaired:
    raise GraphError(f"pivot binding needs every modality paired with the pivot {pivot!r}; no pairs for "
                     f"{', '.join(unpaired)} (pair sets: {', '.join(dataset.pair_names)})")
  cfg = unlocked_copy(config)
  cfg.graph.edges = ",".join(f"{m}->{pivot}" for m in dataset.names if m != pivot)
  cfg.graph.extra_edges = ""
  cfg.loss.cycle_weights = (0.0,)
  cfg.loss.edge_cos = float(config.pivot.edge_cos)
  cfg.loss.infonce = float(config.pivot.infonce)
  cfg.finetune.steps = 0
  return cfg, pivot


def pairwise_config(config, dataset: Dataset) -> tuple[ml_collections.ConfigDict, Callable]:
  cfg = unlocked_copy(config)
  cfg.graph.virtual_nodes = f"{SHARED_NODE}:{int(config.pairwise.dim)}"
  cfg.graph.edges = ",".join(f"{m}->{SHARED_NODE}" for m in dataset.names)
  cfg.graph.extra_edges = ""
  cfg.loss.edge_cos = float(config.pairwise.edge_cos)
  cfg.loss.infonce = float(config.pairwise.infonce)
  cfg.finetune.steps = 0
  terms = tuple(objectives.meet_term(a, b, SHARED_NODE) for a, b in dataset.pairs)
  return cfg, _meet_objective(terms, cfg)


def cmcr_roles(config, dataset: Dataset) -> tuple[str, str, str]:
  """(shared, mod_a, mod_b): the shared modality and the other modality of each space."""
  shared = config.cmcr.shared or next((m for m in dataset.names if len(pair_partners(dataset, m)) == 2), "")
  partners = pair_partners(dataset, shared) if shared in dataset.modalities else []
  if len(partners) != 2:
    raise GraphError("C-MCR connects two spaces that share one modality: it needs a modality paired with "
                     f"exactly two others (pair sets: {', '.join(dataset.pair_names)}); set cmcr.shared")
  return shared, partners[0], partners[1]


def cmcr_configs(config, dataset: Dataset):
  shared, mod_a, mod_b = cmcr_roles(config, dataset)
  space_a, space_b, common = f"space_{mod_a}", f"space_{mod_b}", "common"
  dim, common_dim = int(config.cmcr.dim), int(config.cmcr.common_dim)
  stage1 = unlocked_copy(config)
  stage1.graph.virtual_nodes = f"{space_a}:{dim},{space_b}:{dim}"
  stage1.graph.edges = f"{mod_a}->{space_a},{shared}->{space_a},{mod_b}->{space_b},{shared}->{space_b}"
  stage1.graph.extra_edges = ""
  stage1.loss.edge_cos = 0.0
  stage1.loss.infonce = 1.0
  stage1.finetune.steps = 0
  if int(config.cmcr.stage1_steps) > 0:
    stage1.train.steps = int(config.cmcr.stage1_steps)
  terms = (objectives.meet_term(mod_a, shared, space_a), objectives.meet_term(mod_b, shared, space_b))
  stage2 = unlocked_copy(stage1)
  stage2.graph.virtual_nodes = f"{space_a}:{dim},{space_b}:{dim},{common}:{common_dim}"
  stage2.graph.edges = stage1.graph.edges + f",{space_a}->{common},{space_b}->{common}"
  stage2.train.steps = int(config.train.steps)
  settings = CMCRSettings(
      shared=shared, mod_a=mod_a, mod_b=mod_b, space_a=space_a, space_b=space_b, common=common,
      temperature=float(config.cmcr.temperature), memory_temperature=float(config.cmcr.memory_temperature),
      noise_std=float(config.cmcr.noise_std), memory_size=int(config.cmcr.memory_size),
      inter_weight=float(config.cmcr.inter_weight), pseudo_weight=float(config.cmcr.pseudo_weight),
      intra_weight=float(config.cmcr.intra_weight), seed=int(config.seed))
  positives = config.loss.get("infonce_positives", "auto") != "pair"  # resolved per data in sampler_arrays
  stage2_objective = lambda layout, ds, cfg: CMCRObjective(layout, settings, positives)
  return (stage1, _meet_objective(terms, stage1)), (stage2, stage2_objective)


# ---- running a strategy -------------------------------------------------------------------------

@dataclasses.dataclass
class StrategyRun:
  strategy: str
  aligner: TranslatorAligner
  init_aligner: TranslatorAligner     # same translators at initialisation ("before training")
  results: list                       # TrainResult per stage
  seconds: float

  @property
  def result(self):
    return self.results[-1]


def _aligner(result, name: str) -> TranslatorAligner:
  return TranslatorAligner(result.setup.layout, result.params, result.setup.compute_dtype, name=name)


def _init_aligner(result, seed: int, name: str) -> TranslatorAligner:
  layout = result.setup.layout
  return TranslatorAligner(layout, init_params(layout, seed), result.setup.compute_dtype, name=name)


def run_strategy(config: ml_collections.ConfigDict, dataset: Dataset, workdir: str | None,
                 log: Callable[[str], None] = print) -> StrategyRun:
  """Train `config.strategy` on `dataset` (checkpoints under workdir) and return its aligner."""
  strategy = check_strategy(config.strategy)
  t0 = time.perf_counter()
  seed = int(config.seed)
  trained_on = dataset
  if strategy == "graph" and int(config.get("pseudo", {}).get("rounds", 0) or 0) > 0:
    from graphbridge import pseudo  # self-training rounds on gated pseudo-pairs (pseudo.py)
    rounds = int(config.pseudo.rounds)
    round_dir = lambda r: workdir if (workdir is None or r == rounds) else os.path.join(workdir, f"round{r}")
    result, trained_on = pseudo.self_train(
        config, dataset, lambda ds, r: train_lib.train(config, round_dir(r), dataset=ds, log=log),
        lambda res: _aligner(res, strategy), log=log)
    results = [result]
  elif strategy == "graph":
    results = [train_lib.train(config, workdir, dataset=dataset, log=log)]
  elif strategy == "pivot":
    cfg, pivot = pivot_config(config, dataset)
    log(f"pivot binding into {pivot!r}")
    results = [train_lib.train(cfg, workdir, dataset=dataset, log=log)]
  elif strategy == "pairwise":
    cfg, objective = pairwise_config(config, dataset)
    results = [train_lib.train(cfg, workdir, dataset=dataset, log=log, objective=objective)]
  else:  # cmcr
    (cfg1, obj1), (cfg2, obj2) = cmcr_configs(config, dataset)
    log("C-MCR stage 1: the two contrastive spaces")
    first = train_lib.train(cfg1, os.path.join(workdir, "stage1") if workdir else None, dataset=dataset,
                            log=log, objective=obj1)
    graph = train_lib.graph_from_config(cfg2, dataset)
    log("C-MCR stage 2: connecting the spaces (stage-1 projectors frozen)")
    second = train_lib.train(cfg2, workdir, dataset=dataset, log=log, objective=obj2, graph=graph,
                             frozen_params=first.edge_params())
    results = [first, second]
  final = results[-1]
  aligner = _aligner(final, strategy)
  aligner.bind_data(trained_on)  # pseudo-paired edges are paired hops; cycle-only edges are not
  return StrategyRun(strategy, aligner, _init_aligner(final, seed, strategy), results,
                     time.perf_counter() - t0)


# ---- post-hoc alignment -------------------------------------------------------------------------

@dataclasses.dataclass
class PosthocAligner:
  """Wraps any aligner: after it brings query and gallery into one space, re-align there.

  center: subtract each side's train-row mean in the compared space (closes the modality gap).
  procrustes / cca: fit on the train pairs of (query, gallery) where the data has them; for
  never-paired modalities there is nothing to fit, so only centering is applied (route says so)."""
  base: object
  method: str
  dataset: Dataset

  def __post_init__(self):
    if self.method not in POSTHOC:
      raise train_lib.ConfigError(f"posthoc {self.method!r} is not known (choices: {', '.join(POSTHOC)})")
    self.name = f"{self.base.name}+{self.method}"
    self._fits: dict = {}

  def default_route(self, query, gallery):
    return self.base.default_route(query, gallery)

  def bind_data(self, dataset):
    if hasattr(self.base, "bind_data"):
      self.base.bind_data(dataset)

  def _fit(self, query, gallery, route):
    key = (query, gallery, route)
    if key not in self._fits:
      mq, mg = self.dataset.modalities[query], self.dataset.modalities[gallery]
      zq, zg = self.base.encode(query, gallery, route, mq.emb[mq.train], mg.emb[mg.train])
      center_q, center_g = posthoc.fit_centering(zq), posthoc.fit_centering(zg)
      fit = {"center": (center_q, center_g), "map": None}
      pairs = self.dataset.pairs_for(query, gallery)
      if self.method in ("procrustes", "cca") and len(pairs) >= 2:
        train_index_q = -np.ones(len(mq), int)
        train_index_q[np.nonzero(mq.train)[0]] = np.arange(int(mq.train.sum()))
        train_index_g = -np.ones(len(mg), int)
        train_index_g[np.nonzero(mg.train)[0]] = np.arange(int(mg.train.sum()))
        xq = center_q.apply(zq)[train_index_q[pairs[:, 0]]]
        xg = center_g.apply(zg)[train_index_g[pairs[:, 1]]]
        if self.method == "procrustes" and xq.shape[1] == xg.shape[1]:
          fit["map"] = ("procrustes", posthoc.fit_procrustes(xq, xg))
        elif self.method == "cca":
          k = min(xq.shape[1], xg.shape[1], len(xq) - 1, 64)
          fit["map"] = ("cca", posthoc.fit_cca(xq, xg, n_components=k, reg=1e-2))
      self._fits[key] = fit
    return self._fits[key]

  def encode(self, query, gallery, route, xq, xg):
    zq, zg = self.base.encode(query, gallery, route, xq, xg)
    if self.method == "none":
      return zq, zg
    fit = self._fit(query, gallery, route)
    zq, zg = fit["center"][0].apply(zq), fit["center"][1].apply(zg)
    if fit["map"] is not None:
      kind, m = fit["map"]
      if kind == "procrustes":
        zq = m.apply(zq)
      else:
        zq, zg = m.apply_x(zq), m.apply_y(zg)
    return zq, zg


# ---- linear baselines ---------------------------------------------------------------------------

@dataclasses.dataclass
class LinearAligner:
  """Ridge or CCA fitted on the train pairs; modalities never paired are bridged through a pivot
  paired with both (query and gallery mapped into the pivot's space)."""
  dataset: Dataset
  kind: str = "ridge"           # "ridge" | "cca"
  alpha: float = 1.0
  n_components: int = 32

  def __post_init__(self):
    if self.kind not in ("ridge", "cca"):
      raise train_lib.ConfigError(f"linear baseline {self.kind!r}: choose 'ridge' or 'cca'")
    self.name = f"linear-{self.kind}"
    self._pairs_graph = self.dataset.default_graph()
    self._fits: dict = {}

  def default_route(self, query, gallery):
    """q->g when paired, else q->p<-g through the first pivot paired with both (None if none)."""
    if self.dataset.pairs_for(query, gallery).size:
      return f"{query}->{gallery}"
    for pivot in self.dataset.names:
      if pivot not in (query, gallery) and self.dataset.pairs_for(query, pivot).size \
          and self.dataset.pairs_for(gallery, pivot).size:
        return f"{query}->{pivot}<-{gallery}"
    return None

  def _train_pairs(self, a: str, b: str):
    pairs = self.dataset.pairs_for(a, b)
    return self.dataset.modalities[a].emb[pairs[:, 0]], self.dataset.modalities[b].emb[pairs[:, 1]]

  def _k(self, *arrays) -> int:
    return max(1, min([self.n_components] + [x.shape[1] for x in arrays] + [len(x) - 1 for x in arrays]))

  def encode(self, query, gallery, route, xq, xg):
    parsed = parse_route(self._pairs_graph, route)
    key = route
    if parsed.hops == 1:  # directly paired
      if key not in self._fits:
        a, b = self._train_pairs(query, gallery)
        self._fits[key] = (posthoc.fit_ridge(a, b, self.alpha) if self.kind == "ridge"
                           else posthoc.fit_cca(a, b, self._k(a, b), reg=1e-2))
      fit = self._fits[key]
      if self.kind == "ridge":
        return (fit.apply(xq), xg) if parsed.meet == gallery else (xq, fit.apply(xg))
      return fit.apply_x(xq, scale_by_sqrt_corr=True), fit.apply_y(xg, scale_by_sqrt_corr=True)
    if len(parsed.query_path) != 2 or len(parsed.gallery_path) != 2:
      raise GraphError(f"linear baseline: route {route} must be one hop or meet at a pivot one hop from both")
    pivot = parsed.meet
    if key not in self._fits:
      a, pa = self._train_pairs(query, pivot)
      c, pc = self._train_pairs(gallery, pivot)
      self._fits[key] = (posthoc.fit_ridge_bridge(a, pa, c, pc, self.alpha) if self.kind == "ridge"
                         else posthoc.fit_cca_bridge(a, pa, c, pc, self._k(a, pa, c, pc), reg=1e-2))
    fit = self._fits[key]
    return fit.to_pivot_a(xq), fit.to_pivot_c(xg)
