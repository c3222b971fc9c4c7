"""Aligners: how a trained model puts query and gallery rows into one compared space.

The translator graph translates along routes (`GraphAligner`); other models supply their own
object with the same `Aligner` interface."""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence
import numpy as np

from graphbridge.core.rows import unit_rows
from graphbridge.data.dataset import Dataset
from graphbridge.core.errors import GraphError
from graphbridge.core.graph import ModalityGraph, path_edges, path_name
from graphbridge.evaluation.hubness import csls_transform
from graphbridge.model.translate import translate_paths
from graphbridge.core.routes import without_edges
from graphbridge.core.routes import ensemble_name, meeting_routes
from graphbridge.core.routes import parse_route, split_ensemble
from graphbridge.evaluation.encoding import ROUTE_MODES, resolve_route_mode


@dataclasses.dataclass
class GraphAligner:
  """Any strategy whose model is translators on a graph (graph, pivot, pairwise, C-MCR).

  Routes (see graphbridge/routes.py): `a->b->c` translates queries into the gallery's space;
  `a->p<-c` translates both sides into the meeting node p; `r1 + r2 + ...` averages the cosine
  similarity matrices of several routes. The default route (docs/evaluation.md, "Routes"): the
  direct edge where there is one; for modalities never paired, `routes="auto"` (default) is
  "ensemble_all" on instance-level pair sets and "ensemble" otherwise (resolve_route_mode);
  `routes="ensemble"`
  averages the fewest-hop routes that meet at a node between query and gallery (one per meeting
  node), `"ensemble_all"` also those into the query's or gallery's own space, `"best"` takes the
  best one (fewest hops, then the shortest longer side, then into the gallery's space). Edges
  trained by
  cycles only (`not_hops`, set from the data by `bind_data`) are never taken as a hop: they have
  no pairs behind them. csls_k > 0: CSLS hubness correction (transductive: uses the query set).
  linear_edges: edges that are their closed-form linear start (training/selection.py kept it);
  "ensemble_all" leaves out the routes into the query's or gallery's own space that compose one in
  a row with another translator: ridge maps shrink towards the mean, so two in a row lose to
  meeting between them (never-paired mAP on benchmarks/shapes.py's chain_few: 0.203 with those
  routes, 0.213 without, as the ridge chain)."""

  layout: object
  params: Mapping
  compute_dtype: str = "float32"
  name: str = "graph"
  routes: str = "auto"
  csls_k: int = 0
  not_hops: frozenset | None = None  # None: not yet read from the data (bind_data)
  auto_routes: str | None = (
    None  # the mode routes="auto" resolves to (bind_data; "ensemble" before)
  )
  linear_edges: frozenset = frozenset()

  def __post_init__(self):
    if self.routes not in ROUTE_MODES:
      raise ValueError(f"routes={self.routes!r}: choose one of {', '.join(ROUTE_MODES)}")

  def bind_data(self, dataset: Dataset) -> None:
    """Edges between two modalities of the data that have no pairs (graph.extra_edges, trained by
    cycles only) are no paired hop: routes never take them. Called by evaluation."""
    if self.routes == "auto" and self.auto_routes is None:
      self.auto_routes = resolve_route_mode("auto", dataset)[0]
    if self.not_hops is None:
      self.not_hops = frozenset(
        e
        for e in self.layout.graph.edges
        if e.src in dataset.modalities
        and e.dst in dataset.modalities
        and not dataset.pairs_for(e.src, e.dst).size
      )

  def route_graph(self) -> ModalityGraph:
    return without_edges(self.layout.graph, self.not_hops or ())

  def default_route(self, query: str, gallery: str) -> str | None:
    graph = self.route_graph()
    if query not in graph.dims or gallery not in graph.dims:
      return None
    mode = self.route_mode
    routes = meeting_routes(graph, query, gallery, interior=mode == "ensemble")
    if not routes:
      return None
    if mode == "ensemble_all" and self.linear_edges:
      routes = [r for r in routes if r.meet not in (query, gallery) or not self._linear_chain(r)]
    if mode == "best" or routes[0].hops < 2 or len(routes) == 1:
      return routes[0].name
    return ensemble_name(routes)

  def _linear_chain(self, route) -> bool:
    """Does a side of `route` compose a closed-form edge with another translator?"""
    return any(
      len(path) > 2 and any(e in self.linear_edges for e in path_edges(path))
      for path in (route.query_path, route.gallery_path)
    )

  @property
  def route_mode(self) -> str:
    """The route mode in use: routes, with "auto" as bind_data resolved it ("ensemble" if
    unbound)."""
    return (self.auto_routes or "ensemble") if self.routes == "auto" else self.routes

  def route_ends(self, route: str) -> tuple[str, str]:
    parsed = parse_route(self.layout.graph, split_ensemble(route)[0])
    return parsed.query, parsed.gallery

  def translate_many(self, routes: Sequence[str], x: np.ndarray) -> dict[str, np.ndarray]:
    """{path: [n, d_dst]} for the same rows x [n, d_src] along several paths (translate_paths)."""
    return translate_paths(self.layout, self.params, self.compute_dtype, routes, x)

  def translate(self, path: str, x: np.ndarray) -> np.ndarray:
    """x: [n, d_src] -> [n, d_dst] float32 along one path (a single node: x itself),
    L2-normalised."""
    if "->" not in path:
      x = np.asarray(x, np.float32)
      return unit_rows(x, floor=1e-8)
    return translate_paths(self.layout, self.params, self.compute_dtype, [path], x)[path]

  def encode(self, query, gallery, route, xq, xg):
    parts = split_ensemble(route)
    zqs, zgs = [], []
    for part in parts:
      parsed = parse_route(self.layout.graph, part)
      if (parsed.query, parsed.gallery) != (query, gallery):
        raise GraphError(f"route {part} does not join {query} (query) and {gallery} (gallery)")
      zqs.append(self.translate(path_name(parsed.query_path), xq))
      zgs.append(self.translate(path_name(parsed.gallery_path), xg))
    if len(parts) == 1:
      zq, zg = zqs[0], zgs[0]
    else:  # unit rows side by side, / sqrt(R): the cosine is the mean of the routes' cosines
      scale = np.float32(1.0 / np.sqrt(len(parts)))
      zq, zg = np.concatenate(zqs, 1) * scale, np.concatenate(zgs, 1) * scale
    if self.csls_k > 0:
      zq, zg = csls_transform(zq, zg, self.csls_k)
    return zq, zg
