"""Cross-modal retrieval evaluation, strategy-agnostic.

An *aligner* says, for a (query modality, gallery modality, route), how to put query rows and
gallery rows into one space where cosine similarity ranks the gallery. The translator graph does
it by translating queries along a path into the gallery's space; projector strategies (pivot,
pairwise, C-MCR) project both sides into a shared space. Every strategy is scored by the same code.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable, Iterable, Mapping, Protocol, Sequence

import numpy as np

from graphbridge import metrics as metrics_lib
from graphbridge.data import Dataset
from graphbridge.graph import GraphError, ModalityGraph, path_name

METRIC_KEYS = ("R@1", "R@5", "R@10", "mAP", "median_rank")


class Aligner(Protocol):
  name: str

  def default_route(self, query: str, gallery: str) -> str | None:
    """Route name used when none is asked for (None: this pair cannot be compared)."""

  def encode(self, query: str, gallery: str, route: str, xq: np.ndarray, xg: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
    """Query rows [n_q, d_q] and gallery rows [n_g, d_g] -> both in one space [n, d]."""


def pairs_graph(dataset: Dataset) -> ModalityGraph:
  """Which modalities were paired in training (both directions), for hop distances."""
  return dataset.default_graph()


def split_rows(dataset: Dataset, modality: str, split: str) -> np.ndarray:
  mod = dataset.modalities[modality]
  if split == "test":
    mask = mod.test
  elif split == "train":
    mask = mod.train
  elif split == "all":
    mask = np.ones(len(mod), bool)
  else:
    raise ValueError(f"unknown split {split!r} (choices: test, train, all)")
  return np.nonzero(mask)[0]


def levels_available(dataset: Dataset, query: str, gallery: str) -> list[str]:
  q, g = dataset.modalities[query], dataset.modalities[gallery]
  levels = []
  if q.ids is not None and g.ids is not None:
    levels.append("instance")
  if q.labels is not None and g.labels is not None:
    levels.append("class")
  return levels


def retrieval_rows(aligner: Aligner, dataset: Dataset, split: str = "test",
                   extra_routes: Iterable[str] = (), ks: Sequence[int] = (1, 5, 10),
                   pairs: Sequence[tuple[str, str]] | None = None) -> list[dict]:
  """One row per (query, gallery, route, level) with R@k, mAP, median rank and chance values."""
  hops_graph = pairs_graph(dataset)
  names = dataset.names
  wanted = [(q, g, None) for q in names for g in names if q != g] if pairs is None else \
      [(q, g, None) for q, g in pairs]
  for route in extra_routes:
    nodes = route.split("->")
    wanted.append((nodes[0].strip(), nodes[-1].strip(), route))
  rows = []
  for query, gallery, route in wanted:
    route = route or aligner.default_route(query, gallery)
    if route is None:
      continue
    q_rows, g_rows = split_rows(dataset, query, split), split_rows(dataset, gallery, split)
    if len(q_rows) == 0 or len(g_rows) == 0:
      continue
    zq, zg = aligner.encode(query, gallery, route, dataset.modalities[query].emb[q_rows],
                            dataset.modalities[gallery].emb[g_rows])
    for level in levels_available(dataset, query, gallery):
      attr = "ids" if level == "instance" else "labels"
      kq = getattr(dataset.modalities[query], attr)[q_rows]
      kg = getattr(dataset.modalities[gallery], attr)[g_rows]
      try:
        scores = metrics_lib.retrieval_metrics(zq, zg, kq, kg, ks=ks)
      except ValueError as exc:  # e.g. no query has a relevant gallery item
        if "no query" in str(exc).lower() or "relevant" in str(exc).lower():
          continue
        raise
      chance = metrics_lib.chance_retrieval_metrics(kq, kg, ks=ks)
      row = {"strategy": aligner.name, "query": query, "gallery": gallery, "route": route,
             "hops": hops_graph.hop_distance(query, gallery), "level": level, "split": split}
      row.update({k: float(v) for k, v in scores.items()})
      row.update({f"chance_{k}": float(chance[k]) for k in chance if k in scores and k.startswith(("R@", "mAP"))})
      rows.append(row)
  return rows


# ---- the translator graph as an aligner ---------------------------------------------------------

@dataclasses.dataclass
class GraphAligner:
  """Queries are translated along a path of translators into the gallery modality's space."""
  layout: object
  params: Mapping
  compute_dtype: str = "float32"
  name: str = "graph"

  def default_route(self, query: str, gallery: str) -> str | None:
    graph = self.layout.graph
    if graph.has_edge(query, gallery):
      return f"{query}->{gallery}"
    try:
      return path_name(graph.shortest_path(query, gallery))
    except GraphError:
      return None

  def encode(self, query, gallery, route, xq, xg):
    from graphbridge.translators import compose
    path = self.layout.graph.parse_path(route)
    if path[0] != query or path[-1] != gallery:
      raise GraphError(f"route {route} does not lead from {query} to {gallery}")
    return np.asarray(compose(self.layout, self.params, path, xq, self.compute_dtype)), xg


# ---- tables ------------------------------------------------------------------------------------

def format_table(rows: Sequence[Mapping], columns: Sequence[str], floats: str = "{:.3f}") -> str:
  """Markdown table."""
  def cell(v):
    if isinstance(v, float):
      return "nan" if v != v else floats.format(v)
    return "" if v is None else str(v)
  lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
  lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
  return "\n".join(lines)


RETRIEVAL_COLUMNS = ("query", "gallery", "route", "hops", "level", "mAP", "R@1", "R@5", "R@10",
                     "median_rank", "chance_mAP", "chance_R@1")


def summarize_by_hops(rows: Sequence[Mapping]) -> list[dict]:
  """Mean metrics over rows grouped by (level, hops): 1 = directly paired, 2+ = never paired."""
  groups: dict[tuple, list] = {}
  for r in rows:
    groups.setdefault((r["level"], r["hops"]), []).append(r)
  out = []
  for (level, hops), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or 99)):
    out.append({"level": level, "hops": hops, "pairs": len(rs),
                **{k: float(np.mean([r[k] for r in rs])) for k in ("mAP", "R@1", "R@10", "chance_mAP")
                   if all(k in r for r in rs)}})
  return out


def write_json(path: str, obj) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(obj, f, indent=1, default=lambda o: o.item() if hasattr(o, "item") else str(o))
