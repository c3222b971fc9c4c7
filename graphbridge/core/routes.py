"""Routes: how a query modality and a gallery modality are brought into one space.

* `image->text->audio`: the query is translated along the path into the gallery's space.
* `image->text<-audio`: both sides are translated into the meeting node `text` (a pivot modality
  or a virtual shared space) and compared there. Longer sides read outward from the meeting node:
  `image->space1->common<-space2<-audio` translates audio along audio->space2->common.
* `text<-image`: the query is already in the meeting space; only the gallery is translated.
"""

from __future__ import annotations

import dataclasses
from graphbridge.core.errors import GraphError
from graphbridge.core.graph import ModalityGraph, Path, path_name


@dataclasses.dataclass(frozen=True)
class Route:
  query_path: Path  # starts at the query modality, ends at the meeting node
  gallery_path: Path  # starts at the gallery modality, ends at the meeting node

  @property
  def query(self) -> str:
    return self.query_path[0]

  @property
  def gallery(self) -> str:
    return self.gallery_path[0]

  @property
  def meet(self) -> str:
    return self.query_path[-1]

  @property
  def hops(self) -> int:
    return len(self.query_path) + len(self.gallery_path) - 2

  @property
  def name(self) -> str:
    left = path_name(self.query_path)
    if len(self.gallery_path) == 1:
      return left
    return left + "".join(f"<-{n}" for n in self.gallery_path[-2::-1])


def parse_route(graph: ModalityGraph, text: str) -> Route:
  """'a->b<-c' -> Route((a, b), (c, b)); every hop must be an edge of the graph."""
  parts = [p.strip() for p in text.split("<-")]
  query_path = tuple(p.strip() for p in parts[0].split("->"))
  gallery_path = tuple(reversed([query_path[-1]] + parts[1:]))
  for path in (query_path, gallery_path):
    if len(path) > 1:
      graph.parse_path(path)
    else:
      graph.dim(path[0])  # unknown modality -> clear error
  if any("->" in p for p in parts[1:]):
    raise GraphError(f"route {text!r}: after the first '<-' only '<-' may follow (e.g. a->p<-c)")
  return Route(query_path, gallery_path)


def _distances_to(graph: ModalityGraph, target: str) -> dict[str, Path]:
  """Shortest path from every node that can reach `target` (reverse BFS)."""
  best: dict[str, Path] = {target: (target,)}
  frontier = [target]
  while frontier:
    nxt = []
    for node in frontier:
      for edge in graph.edges:
        if edge.dst == node and edge.src not in best:
          best[edge.src] = (edge.src,) + best[node]
          nxt.append(edge.src)
    frontier = nxt
  return best


ENSEMBLE_SEP = " + "


def without_edges(graph: ModalityGraph, edges) -> ModalityGraph:
  """The same nodes without `edges` (e.g. edges trained by cycles only, which are no paired hop)."""
  drop = set(edges)
  if not drop & set(graph.edges):
    return graph
  return ModalityGraph.build(graph.nodes, [e for e in graph.edges if e not in drop])


def meeting_routes(
  graph: ModalityGraph, query: str, gallery: str, interior: bool = False
) -> list[Route]:
  """Every route of the fewest hops, one per meeting node (the best route first, then node order).

  In a tree or chain these are the meeting points along the one path between query and gallery
  (`a->b->c`, `a->b<-c`, `a<-b<-c`): the same translators, composed towards different spaces.
  interior: only meeting nodes other than the query and the gallery (both sides translated);
  the best route alone if there is none."""
  best = best_route(graph, query, gallery)
  if best is None:
    return []
  routes = [best]
  for meet in graph.node_names:
    to_meet = _distances_to(graph, meet)
    if query in to_meet and gallery in to_meet:
      route = Route(to_meet[query], to_meet[gallery])
      if route.hops == best.hops and route.meet != best.meet:
        routes.append(route)
  if interior:
    inner = [r for r in routes if r.meet not in (query, gallery)]
    routes = inner or routes[:1]
  return routes


def ensemble_name(routes) -> str:
  """'a->b<-c + a->b->c': similarities averaged over the routes (see GraphAligner.encode)."""
  return ENSEMBLE_SEP.join(r.name if isinstance(r, Route) else str(r) for r in routes)


def split_ensemble(route: str) -> list[str]:
  return [r.strip() for r in route.split(ENSEMBLE_SEP.strip()) if r.strip()]


def route_nodes(route: str) -> list[str]:
  """'a->p<-c' -> ['a', 'p', 'c'] (one route, not an ensemble)."""
  return [n.strip() for n in route.replace("<-", "->").split("->")]


def route_hops(route: str) -> list[tuple[str, str]]:
  """The translators a route applies, as (src, dst): 'a->p<-c' -> [('a', 'p'), ('c', 'p')];
  every route of an ensemble, each translator once, in order of first use."""
  out: list[tuple[str, str]] = []
  for one in split_ensemble(route):
    parts = [p.strip() for p in one.split("<-")]
    forward = [n.strip() for n in parts[0].split("->")]
    hops = list(zip(forward, forward[1:]))
    back = [forward[-1]] + parts[1:]
    hops += [(src, dst) for dst, src in zip(back, back[1:])]
    out += [h for h in hops if h not in out]
  return out


def short_name(route: str) -> str:
  """A route as a table shows it: itself, or for an ensemble `ensemble of N via b, c` (its
  interior nodes in order); the report spells the ensemble out below its table."""
  routes = split_ensemble(route)
  if len(routes) <= 1:
    return route.strip()
  ends = {route_nodes(routes[0])[0], route_nodes(routes[0])[-1]}
  via: list[str] = []
  for one in routes:
    via += [n for n in route_nodes(one) if n not in ends and n not in via]
  return f"ensemble of {len(routes)} via {', '.join(via)}" if via else f"ensemble of {len(routes)}"


def best_route(graph: ModalityGraph, query: str, gallery: str) -> Route | None:
  """Fewest total hops; then the shortest longer side (compose as few translators in a row as
  possible: image->text<-audio before image->text->audio); then translating into the gallery's
  space, then the query's, then node order. None if the two cannot be brought together."""
  graph.dim(query)
  graph.dim(gallery)
  order = {n: i for i, n in enumerate(graph.node_names)}
  candidates = []
  for meet in graph.node_names:
    to_meet = _distances_to(graph, meet)
    if query in to_meet and gallery in to_meet:
      route = Route(to_meet[query], to_meet[gallery])
      preference = 0 if meet == gallery else 1 if meet == query else 2
      longest_side = max(len(route.query_path), len(route.gallery_path)) - 1
      candidates.append((route.hops, longest_side, preference, order[meet], route))
  if not candidates:
    return None
  return min(candidates, key=lambda c: c[:4])[4]
