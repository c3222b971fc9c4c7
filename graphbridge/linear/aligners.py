"""Aligners built on top of a trained one, or without training: post-hoc re-alignment (centering,
Procrustes, CCA) of any aligner, and linear baselines (ridge, CCA; through a pivot where two
modalities were never paired). Each has the `evaluate.Aligner` interface (name, default_route,
encode), so every report table and the comparison score them like any strategy.
"""

from __future__ import annotations

import dataclasses
import numpy as np
from graphbridge.linear import cca as cca_lib
from graphbridge.linear import posthoc as posthoc_lib
from graphbridge.core.errors import ConfigError
from graphbridge.data.dataset import Dataset
from graphbridge.core.errors import GraphError
from graphbridge.core.routes import parse_route
from graphbridge.core.fields import CHOICES, LIST_CHOICES


POSTHOC = CHOICES["posthoc"]


BASELINES = LIST_CHOICES["compare.baselines"]


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
      raise ConfigError(f"posthoc {self.method!r} is not known (choices: {', '.join(POSTHOC)})")
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
      center_q, center_g = posthoc_lib.fit_centering(zq), posthoc_lib.fit_centering(zg)
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
          fit["map"] = ("procrustes", posthoc_lib.fit_procrustes(xq, xg))
        elif self.method == "cca":
          k = min(xq.shape[1], xg.shape[1], len(xq) - 1, 64)
          fit["map"] = ("cca", cca_lib.fit_cca(xq, xg, n_components=k, reg=1e-2))
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


@dataclasses.dataclass
class LinearAligner:
  """Ridge or CCA fitted on the train pairs; modalities never paired are bridged through a pivot
  paired with both (query and gallery mapped into the pivot's space)."""

  dataset: Dataset
  kind: str = "ridge"  # "ridge" | "cca"
  alpha: float = 1.0
  n_components: int = 32

  def __post_init__(self):
    if self.kind not in BASELINES:
      raise ConfigError(f"linear baseline {self.kind!r}: choose 'ridge' or 'cca'")
    self.name = f"linear-{self.kind}"
    self._pairs_graph = self.dataset.default_graph()
    self._fits: dict = {}

  def default_route(self, query, gallery):
    """q->g when paired, else q->p<-g through the first pivot paired with both (None if none)."""
    if self.dataset.pairs_for(query, gallery).size:
      return f"{query}->{gallery}"
    for pivot in self.dataset.names:
      if (
        pivot not in (query, gallery)
        and self.dataset.pairs_for(query, pivot).size
        and self.dataset.pairs_for(gallery, pivot).size
      ):
        return f"{query}->{pivot}<-{gallery}"
    return None

  def _train_pairs(self, a: str, b: str):
    pairs = self.dataset.pairs_for(a, b)
    return self.dataset.modalities[a].emb[pairs[:, 0]], self.dataset.modalities[b].emb[pairs[:, 1]]

  def _k(self, *arrays) -> int:
    return max(
      1, min([self.n_components] + [x.shape[1] for x in arrays] + [len(x) - 1 for x in arrays])
    )

  def encode(self, query, gallery, route, xq, xg):
    parsed = parse_route(self._pairs_graph, route)
    key = route
    if parsed.hops == 1:  # directly paired
      if key not in self._fits:
        a, b = self._train_pairs(query, gallery)
        self._fits[key] = (
          posthoc_lib.fit_ridge(a, b, self.alpha)
          if self.kind == "ridge"
          else cca_lib.fit_cca(a, b, self._k(a, b), reg=1e-2)
        )
      fit = self._fits[key]
      if self.kind == "ridge":
        return (fit.apply(xq), xg) if parsed.meet == gallery else (xq, fit.apply(xg))
      return fit.apply_x(xq, scale_by_sqrt_corr=True), fit.apply_y(xg, scale_by_sqrt_corr=True)
    if len(parsed.query_path) != 2 or len(parsed.gallery_path) != 2:
      raise GraphError(
        f"linear baseline: route {route} must be one hop or meet at a pivot one hop from both"
      )
    pivot = parsed.meet
    if key not in self._fits:
      a, pa = self._train_pairs(query, pivot)
      c, pc = self._train_pairs(gallery, pivot)
      self._fits[key] = (
        posthoc_lib.fit_ridge_bridge(a, pa, c, pc, self.alpha)
        if self.kind == "ridge"
        else cca_lib.fit_cca_bridge(a, pa, c, pc, self._k(a, pa, c, pc), reg=1e-2)
      )
    fit = self._fits[key]
    return fit.to_pivot_a(xq), fit.to_pivot_c(xg)
