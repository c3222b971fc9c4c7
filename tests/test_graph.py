"""Tests for graphbridge.graph: construction, validation, paths, cycles, (de)serialisation."""

from __future__ import annotations

import itertools

import pytest

from graphbridge.core.graph import Edge, ModalityGraph
from graphbridge.core.errors import GraphError


def complete_graph(names=("a", "b", "c"), dim=4) -> ModalityGraph:
  return ModalityGraph.build(
    {n: dim for n in names}, [(x, y) for x, y in itertools.permutations(names, 2)]
  )


# --------------------------------------------------------------------------- construction


def test_build_keeps_node_order_and_sorts_edges_by_node_order():
  graph = ModalityGraph.build(
    {"text": 12, "image": 8, "audio": 10},
    ["audio->text", "image->text", "text->image", ("text", "audio")],
  )
  assert graph.node_names == ("text", "image", "audio")
  assert graph.dims == {"text": 12, "image": 8, "audio": 10}
  # sorted by (src, dst) in node order: text first, then image, then audio
  assert graph.edge_names == ("text->image", "text->audio", "image->text", "audio->text")
  assert graph.has_edge("image", "text") and not graph.has_edge("image", "audio")
  assert graph.out_edges("text") == (Edge("text", "image"), Edge("text", "audio"))


def test_graph_is_immutable_value():
  g1 = ModalityGraph.build({"a": 2, "b": 3})
  g2 = g1.add_edge("a->b")
  assert g1.edges == () and g2.edge_names == ("a->b",)
  assert g2 == ModalityGraph.build({"a": 2, "b": 3}, ["a->b"])
  assert hash(g2) == hash(ModalityGraph.build({"a": 2, "b": 3}, ["a->b"]))
  assert g1.add_edges_both_ways("a", "b").edge_names == ("a->b", "b->a")


@pytest.mark.parametrize("name", ["2image", "im age", "a__b", "", "image-1", "_x", None])
def test_invalid_modality_name(name):
  with pytest.raises(GraphError, match="invalid modality name"):
    ModalityGraph().add_node(name, 4)


def test_duplicate_node_and_bad_dim():
  graph = ModalityGraph.build({"a": 2})
  with pytest.raises(GraphError, match=r"modality 'a' is already in the graph"):
    graph.add_node("a", 3)
  with pytest.raises(
    GraphError, match=r"modality 'b': embedding dim must be a positive integer, got 0"
  ):
    graph.add_node("b", 0)
  with pytest.raises(GraphError, match="positive integer"):
    graph.add_node("b", 2.5)


def test_duplicate_edge_is_rejected():
  graph = ModalityGraph.build({"a": 2, "b": 3}, ["a->b"])
  with pytest.raises(GraphError, match=r"edge a->b is already in the graph"):
    graph.add_edge("a->b")
  with pytest.raises(GraphError, match=r"edge a->b is already in the graph"):
    graph.add_edge("a", "b")


def test_self_loop_edge_is_rejected():
  graph = ModalityGraph.build({"a": 2, "b": 3})
  with pytest.raises(
    GraphError, match=r"edge a->a: a translator from a modality to itself is not allowed"
  ):
    graph.add_edge("a->a")


def test_edge_with_unknown_node_names_it_and_lists_nodes():
  graph = ModalityGraph.build({"image": 2, "text": 3})
  with pytest.raises(
    GraphError, match=r"edge image->depth: unknown modality 'depth' \(nodes: image, text\)"
  ):
    graph.add_edge("image->depth")


@pytest.mark.parametrize("text", ["a", "a->b->c", "->b", "a->"])
def test_malformed_edge_text(text):
  with pytest.raises(GraphError, match="is not of the form 'src->dst'"):
    Edge.parse(text)


def test_edge_lookup_reports_missing_edge_and_lists_edges():
  graph = ModalityGraph.build({"a": 2, "b": 3, "c": 4}, ["a->b", "b->c"])
  assert graph.edge("a->b") == Edge("a", "b")
  with pytest.raises(GraphError, match=r"no edge b->a in graph \(edges: a->b, b->c\)"):
    graph.edge("b->a")


# --------------------------------------------------------------------------- paths


def test_parse_path_checks_every_hop():
  graph = ModalityGraph.build(
    {"image": 8, "text": 12, "audio": 10}, ["image->text", "text->audio", "audio->text"]
  )
  assert graph.parse_path("image -> text->audio") == ("image", "text", "audio")
  assert graph.parse_path(["image", "text"]) == ("image", "text")
  with pytest.raises(
    GraphError,
    match=r"path image->depth: unknown modality 'depth' "
    r"\(nodes: image, text, audio\)",
  ):
    graph.parse_path("image->depth")
  with pytest.raises(
    GraphError,
    match=r"path image->text->audio->image: no edge audio->image in graph "
    r"\(edges: image->text, text->audio, audio->text\)",
  ):
    graph.parse_path("image->text->audio->image")
  with pytest.raises(GraphError, match="at least two modalities"):
    graph.parse_path("image")


def test_shortest_path_and_hop_distance():
  graph = ModalityGraph.build(
    {"image": 8, "text": 12, "audio": 10, "depth": 4},
    ["image->text", "text->image", "audio->text", "text->audio", "depth->image"],
  )
  assert graph.shortest_path("image", "audio") == ("image", "text", "audio")
  assert graph.shortest_path("depth", "audio") == ("depth", "image", "text", "audio")
  assert graph.hop_distance("image", "text") == 1
  assert graph.hop_distance("depth", "audio") == 3
  assert graph.hop_distance("audio", "depth") is None  # nothing goes into depth
  with pytest.raises(GraphError, match=r"no path from audio to depth"):
    graph.shortest_path("audio", "depth")
  with pytest.raises(GraphError, match="to itself"):
    graph.shortest_path("image", "image")
  with pytest.raises(GraphError, match="unknown modality 'video'"):
    graph.shortest_path("image", "video")


def test_shortest_path_ties_break_by_node_order_not_insertion_order():
  # Two 2-hop routes a->b->d and a->c->d; the winner follows node order, whatever the edge order.
  edges = ["a->b", "a->c", "b->d", "c->d"]
  for perm in itertools.permutations(edges):
    graph = ModalityGraph.build({"a": 1, "b": 1, "c": 1, "d": 1}, perm)
    assert graph.shortest_path("a", "d") == ("a", "b", "d")
    graph = ModalityGraph.build({"a": 1, "c": 1, "b": 1, "d": 1}, perm)
    assert graph.shortest_path("a", "d") == ("a", "c", "d")


def test_cycles_of_complete_three_graph():
  graph = complete_graph()
  two = {
    ("a", "b", "a"),
    ("a", "c", "a"),
    ("b", "a", "b"),
    ("b", "c", "b"),
    ("c", "a", "c"),
    ("c", "b", "c"),
  }
  three = {
    ("a", "b", "c", "a"),
    ("a", "c", "b", "a"),
    ("b", "a", "c", "b"),
    ("b", "c", "a", "b"),
    ("c", "a", "b", "c"),
    ("c", "b", "a", "c"),
  }
  cycles = graph.cycles(max_length=3)
  assert len(cycles) == 12 and len(set(cycles)) == 12
  assert set(cycles) == two | three
  assert set(graph.cycles(max_length=2)) == two
  assert set(graph.cycles(max_length=3, min_length=3)) == three
  assert set(graph.cycles(max_length=3, starts=["b"])) == {c for c in two | three if c[0] == "b"}
  assert graph.cycles(max_length=1) == ()
  # no simple cycle is longer than the number of nodes
  assert set(graph.cycles(max_length=5)) == two | three
  with pytest.raises(GraphError, match="cycle start: unknown modality 'z'"):
    graph.cycles(3, starts=["z"])


def test_cycles_need_both_directions():
  graph = ModalityGraph.build({"a": 1, "b": 1, "c": 1}, ["a->b", "b->c", "c->a", "b->a"])
  assert set(graph.cycles(3)) == {
    ("a", "b", "a"),
    ("b", "a", "b"),
    ("a", "b", "c", "a"),
    ("b", "c", "a", "b"),
    ("c", "a", "b", "c"),
  }


@pytest.mark.parametrize(
  "n_nodes,length,expected",
  [
    (3, 1, 6),  # 3 * 2
    (3, 2, 12),  # + 3 * 2 * 1
    (3, 3, 12),  # a simple 3-hop path needs 4 nodes
    (4, 1, 12),  # 4 * 3
    (4, 2, 36),  # + 4 * 3 * 2
    (4, 3, 60),  # + 4 * 3 * 2 * 1
  ],
)
def test_paths_up_to_counts(n_nodes, length, expected):
  graph = complete_graph(names="abcd"[:n_nodes])
  paths = graph.paths_up_to(length)
  assert len(paths) == expected
  assert len(set(paths)) == expected
  assert all(len(set(p)) == len(p) and 2 <= len(p) <= length + 1 for p in paths)
  for p in paths:
    graph.parse_path(p)  # every hop is an edge


def test_paths_up_to_on_a_chain():
  graph = ModalityGraph.build({"a": 1, "b": 1, "c": 1}, ["a->b", "b->c"])
  assert set(graph.paths_up_to(2)) == {("a", "b"), ("b", "c"), ("a", "b", "c")}
  assert set(graph.paths_up_to(1)) == {("a", "b"), ("b", "c")}


# --------------------------------------------------------------------------- serialisation


def test_to_dict_from_dict_round_trip():
  graph = ModalityGraph.build(
    {"text": 12, "image": 8, "audio": 10},
    ["image->text", "text->image", "audio->text", "text->audio", "image->audio"],
  )
  data = graph.to_dict()
  assert data == {
    "nodes": [["text", 12], ["image", 8], ["audio", 10]],
    "edges": ["text->image", "text->audio", "image->text", "image->audio", "audio->text"],
  }
  again = ModalityGraph.from_dict(data)
  assert again == graph
  assert again.to_dict() == data
  assert again.cycles(3) == graph.cycles(3)


def test_from_dict_malformed():
  with pytest.raises(GraphError, match="graph description is malformed"):
    ModalityGraph.from_dict({"nodes": [["a", 2]]})
  with pytest.raises(GraphError, match="unknown modality 'b'"):
    ModalityGraph.from_dict({"nodes": [["a", 2]], "edges": ["a->b"]})
