"""The modality graph: nodes are modalities (name, embedding dim), edges are translators.

The graph is an immutable value: adding a node or an edge returns a new graph, so a graph can be
closed over by jitted functions and used as a cache key. Everything here is plain Python computed
once per graph; nothing here touches arrays.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import re
from typing import Iterable, Mapping, Sequence
from graphbridge.core.errors import GraphError


_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


ARROW = "->"


def check_modality_name(name: str) -> str:
  """Names become file names and npz keys (`pairs_a__b`), so keep them simple."""
  if not isinstance(name, str) or not _NAME_RE.match(name) or "__" in name:
    raise GraphError(
      f"invalid modality name {name!r}: use a letter followed by letters, digits or single "
      "underscores (e.g. 'image', 'audio_clap')"
    )
  return name


@dataclasses.dataclass(frozen=True, order=True)
class Edge:
  """A directed translator src -> dst."""

  src: str
  dst: str

  @property
  def name(self) -> str:
    return f"{self.src}{ARROW}{self.dst}"

  def __str__(self) -> str:
    return self.name

  @classmethod
  def parse(cls, text: str) -> "Edge":
    parts = [p.strip() for p in str(text).split(ARROW)]
    if len(parts) != 2 or not all(parts):
      raise GraphError(f"edge {text!r} is not of the form 'src->dst'")
    return cls(parts[0], parts[1])


Path = tuple[str, ...]  # node names; a path of k hops has k + 1 nodes


def path_name(path: Sequence[str]) -> str:
  return ARROW.join(path)


def path_edges(path: Sequence[str]) -> tuple[Edge, ...]:
  return tuple(Edge(a, b) for a, b in zip(path[:-1], path[1:]))


@dataclasses.dataclass(frozen=True)
class ModalityGraph:
  """Modalities (name -> embedding dim) and directed edges between them.

  Node order is insertion order and is the canonical order everywhere (layouts, reports).
  Edges are kept sorted by (src, dst) in node order.
  """

  nodes: tuple[tuple[str, int], ...] = ()
  edges: tuple[Edge, ...] = ()

  # ---- construction -------------------------------------------------------------------------
  @classmethod
  def build(
    cls,
    nodes: Mapping[str, int] | Iterable[tuple[str, int]],
    edges: Iterable[Edge | str | tuple[str, str]] = (),
  ) -> "ModalityGraph":
    graph = cls()
    items = nodes.items() if isinstance(nodes, Mapping) else nodes
    for name, dim in items:
      graph = graph.add_node(name, dim)
    for edge in edges:
      graph = graph.add_edge(edge)
    return graph

  def add_node(self, name: str, dim: int) -> "ModalityGraph":
    check_modality_name(name)
    if name in self.dims:
      raise GraphError(f"modality {name!r} is already in the graph (nodes: {self.node_names})")
    if int(dim) != dim or int(dim) <= 0:
      raise GraphError(f"modality {name!r}: embedding dim must be a positive integer, got {dim!r}")
    return dataclasses.replace(self, nodes=self.nodes + ((name, int(dim)),))

  def add_edge(self, edge: Edge | str | tuple[str, str], dst: str | None = None) -> "ModalityGraph":
    if dst is not None:
      edge = Edge(str(edge), dst)
    elif isinstance(edge, str):
      edge = Edge.parse(edge)
    elif isinstance(edge, tuple):
      edge = Edge(*edge)
    for end in (edge.src, edge.dst):
      self._check_node(end, context=f"edge {edge.name}")
    if edge.src == edge.dst:
      raise GraphError(f"edge {edge.name}: a translator from a modality to itself is not allowed")
    if edge in self.edges:
      raise GraphError(f"edge {edge.name} is already in the graph")
    order = {n: i for i, n in enumerate(self.node_names)}
    edges = sorted(self.edges + (edge,), key=lambda e: (order[e.src], order[e.dst]))
    return dataclasses.replace(self, edges=tuple(edges))

  def add_edges_both_ways(self, a: str, b: str) -> "ModalityGraph":
    return self.add_edge(Edge(a, b)).add_edge(Edge(b, a))

  # ---- lookups ------------------------------------------------------------------------------
  @property
  def node_names(self) -> tuple[str, ...]:
    return tuple(n for n, _ in self.nodes)

  @property
  def dims(self) -> dict[str, int]:
    return dict(self.nodes)

  @property
  def edge_names(self) -> tuple[str, ...]:
    return tuple(e.name for e in self.edges)

  def dim(self, name: str) -> int:
    self._check_node(name)
    return self.dims[name]

  def has_edge(self, src: str, dst: str) -> bool:
    return Edge(src, dst) in self._edge_set

  @property
  def _edge_set(self) -> frozenset[Edge]:
    return frozenset(self.edges)

  def out_edges(self, src: str) -> tuple[Edge, ...]:
    return tuple(e for e in self.edges if e.src == src)

  def _check_node(self, name: str, context: str = "") -> None:
    if name not in self.dims:
      where = f"{context}: " if context else ""
      raise GraphError(
        f"{where}unknown modality {name!r} (nodes: {', '.join(self.node_names) or 'none'})"
      )

  def edge(self, spec: Edge | str) -> Edge:
    """Validated edge lookup: 'image->text' -> Edge, with a clear error if it is absent."""
    edge = Edge.parse(spec) if isinstance(spec, str) else spec
    for end in (edge.src, edge.dst):
      self._check_node(end, context=f"edge {edge.name}")
    if edge not in self._edge_set:
      raise GraphError(
        f"no edge {edge.name} in graph (edges: {', '.join(self.edge_names) or 'none'})"
      )
    return edge

  # ---- paths --------------------------------------------------------------------------------
  def parse_path(self, spec: str | Sequence[str]) -> Path:
    """'image->text->audio' -> ('image', 'text', 'audio'), every node and hop checked."""
    nodes = tuple(p.strip() for p in spec.split(ARROW)) if isinstance(spec, str) else tuple(spec)
    text = path_name(nodes)
    if len(nodes) < 2 or not all(nodes):
      raise GraphError(f"path {text!r}: a path needs at least two modalities joined by '->'")
    for node in nodes:
      self._check_node(node, context=f"path {text}")
    for edge in path_edges(nodes):
      if edge not in self._edge_set:
        raise GraphError(
          f"path {text}: no edge {edge.name} in graph "
          f"(edges: {', '.join(self.edge_names) or 'none'})"
        )
    return nodes

  def shortest_path(self, src: str, dst: str) -> Path:
    """Fewest hops from src to dst (BFS; ties broken by node order, so the result is stable)."""
    self._check_node(src)
    self._check_node(dst)
    if src == dst:
      raise GraphError(f"shortest path from {src!r} to itself is not a translation")
    previous: dict[str, str] = {src: src}
    queue = collections.deque([src])
    while queue:
      node = queue.popleft()
      for edge in self.out_edges(node):
        if edge.dst not in previous:
          previous[edge.dst] = node
          if edge.dst == dst:
            path = [dst]
            while path[-1] != src:
              path.append(previous[path[-1]])
            return tuple(reversed(path))
          queue.append(edge.dst)
    raise GraphError(
      f"no path from {src} to {dst} in graph (edges: {', '.join(self.edge_names) or 'none'})"
    )

  def hop_distance(self, src: str, dst: str) -> int | None:
    """Hops on the shortest path, or None if dst is unreachable."""
    try:
      return len(self.shortest_path(src, dst)) - 1
    except GraphError:
      return None

  def cycles(
    self, max_length: int, min_length: int = 2, starts: Sequence[str] | None = None
  ) -> tuple[Path, ...]:
    """Every simple directed cycle with min_length..max_length hops, once per start node.

    `a->b->c->a` and `b->c->a->b` are different reconstruction targets (a's rows vs b's rows), so
    each rotation is listed with its own start. Returned paths repeat the start at the end.
    """
    if max_length < 2:
      return ()
    starts = self.node_names if starts is None else tuple(starts)
    for s in starts:
      self._check_node(s, context="cycle start")
    found: list[Path] = []

    def extend(path: list[str]) -> None:
      for edge in self.out_edges(path[-1]):
        hops = len(path)  # hops after taking this edge
        if edge.dst == path[0]:
          if min_length <= hops <= max_length:
            found.append(tuple(path) + (path[0],))
        elif edge.dst not in path and hops < max_length:
          extend(path + [edge.dst])

    for s in starts:
      extend([s])
    return tuple(found)

  def paths_up_to(self, length: int) -> tuple[Path, ...]:
    """Every simple (non-repeating) path with 1..length hops."""
    found: list[Path] = []

    def extend(path: list[str]) -> None:
      if len(path) > 1:
        found.append(tuple(path))
      if len(path) - 1 >= length:
        return
      for edge in self.out_edges(path[-1]):
        if edge.dst not in path:
          extend(path + [edge.dst])

    for s in self.node_names:
      extend([s])
    return tuple(found)

  # ---- (de)serialisation --------------------------------------------------------------------
  def to_dict(self) -> dict:
    return {"nodes": [[n, d] for n, d in self.nodes], "edges": list(self.edge_names)}

  @classmethod
  def from_dict(cls, data: Mapping) -> "ModalityGraph":
    try:
      return cls.build([(n, int(d)) for n, d in data["nodes"]], data["edges"])
    except (KeyError, TypeError) as exc:
      raise GraphError(
        f"graph description is malformed ({exc!r}): expected {{'nodes': [[name, dim], ...], "
        "'edges': ['a->b', ...]}"
      ) from exc

  def describe(self) -> str:
    nodes = ", ".join(f"{n}[{d}]" for n, d in self.nodes)
    return f"nodes: {nodes}; edges: {', '.join(self.edge_names)}"


def all_pairs(names: Sequence[str]) -> list[tuple[str, str]]:
  """Ordered pairs of distinct names, in order."""
  return [(a, b) for a, b in itertools.permutations(names, 2)]
