"""Tests for graphbridge.evaluation: known answers for retrieval, gap, silhouette and
reconstruction."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from graphbridge.data import dataset as dataset_lib
from graphbridge.data import readers as readers_lib
from graphbridge.evaluation import encoding as encoding_lib
from graphbridge.evaluation import aligners as aligners_lib
from graphbridge.model import translate as translate_lib
from graphbridge.evaluation import tables as tables_lib
from graphbridge.evaluation import retrieval as retrieval_lib
from graphbridge.evaluation import geometry as geometry_lib
from graphbridge.core.errors import GraphError
from graphbridge.core.graph import ModalityGraph
from graphbridge.model import translators as translators_lib


@dataclasses.dataclass
class IdentityAligner:
  """Compares raw rows (modalities of one dimension); `query_map` optionally transforms queries."""

  name: str = "identity"
  query_map: object = None

  def default_route(self, query, gallery):
    return f"{query}->{gallery}"

  def encode(self, query, gallery, route, xq, xg):
    return (xq if self.query_map is None else self.query_map(xq)), xg


@dataclasses.dataclass
class MeetAligner:
  """Routes are opaque strings 'q->space<-g' that a plain path parser could not read."""

  name: str = "meet"

  def default_route(self, query, gallery):
    return f"{query}->space<-{gallery}"

  def route_ends(self, route):
    left, right = route.split("<-")
    return left.split("->")[0], right

  def encode(self, query, gallery, route, xq, xg):
    return xq, xg


def two_modalities(a_emb, b_emb, ids=None, labels=None, extra=None) -> dataset_lib.Dataset:
  n = len(a_emb)
  arrays = {"a_emb": a_emb, "b_emb": b_emb, "pairs_a__b": np.stack([np.arange(n)] * 2, axis=1)}
  if ids is not None:
    arrays.update(a_id=ids[0], b_id=ids[1])
  if labels is not None:
    arrays.update(a_label=labels[0], b_label=labels[1])
  arrays.update(extra or {})
  return readers_lib.from_arrays(arrays)


def test_identical_embeddings_give_perfect_retrieval():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(200, 32)).astype(np.float32)
  ids = np.arange(200)
  ds = two_modalities(x, x.copy(), ids=(ids, ids), labels=(ids % 5, ids % 5))
  rows = retrieval_lib.retrieval_rows(IdentityAligner(), ds)
  inst = {(r["query"], r["gallery"]): r for r in rows if r["level"] == "instance"}
  assert set(inst) == {("a", "b"), ("b", "a")}
  for r in inst.values():
    assert r["mAP"] == 1.0 and r["R@1"] == 1.0 and r["median_rank"] == 1.0
    assert r["strategy"] == "identity" and r["hops"] == 1 and r["split"] == "test"
    assert r["chance_mAP"] == pytest.approx(np.sum(1 / np.arange(1, 201)) / 200)
  cls = [r for r in rows if r["level"] == "class"]
  assert len(cls) == 2 and all(r["R@1"] == 1.0 and r["mAP"] > r["chance_mAP"] for r in cls)


def test_shuffled_embeddings_give_chance():
  rng = np.random.default_rng(1)
  n = 600
  x = rng.normal(size=(n, 64)).astype(np.float32)
  ids = np.arange(n)
  ds = two_modalities(
    x, x[rng.permutation(n)], ids=(ids, ids)
  )  # b row i no longer shows instance i
  rows = retrieval_lib.retrieval_rows(IdentityAligner(), ds, ks=(1, 10, 100))
  assert len(rows) == 2
  for r in rows:
    assert r["chance_mAP"] == pytest.approx(np.sum(1 / np.arange(1, n + 1)) / n)
    assert abs(r["mAP"] - r["chance_mAP"]) < 0.02
    assert abs(r["R@100"] - r["chance_R@100"]) < 0.06  # chance 1/6; sd over 600 queries ~0.015
    assert r["median_rank"] > n / 4


def test_named_routes_are_opaque_and_rows_carry_strategy_and_route():
  x = np.eye(4, dtype=np.float32)
  ds = two_modalities(x, x.copy(), ids=(np.arange(4), np.arange(4)))
  rows = retrieval_lib.retrieval_rows(MeetAligner(), ds)
  assert [(r["route"], r["strategy"], r["named_route"]) for r in rows] == [
    ("a->space<-b", "meet", False),
    ("b->space<-a", "meet", False),
  ]
  assert {r["mAP"] for r in rows} == {1.0}
  specs = encoding_lib.planned_routes(MeetAligner(), ds, extra_routes=["a->other<-b"])
  assert specs[-1] == encoding_lib.RouteSpec("a", "b", "a->other<-b", named=True)
  with pytest.raises(GraphError, match="modality 'zz' is not in the data"):
    encoding_lib.planned_routes(MeetAligner(), ds, extra_routes=["zz->space<-b"])
  # aligners that cannot say: the ends are read from the route string
  assert encoding_lib.route_ends(IdentityAligner(), "a->s1->common<-s2<-b") == ("a", "b")
  assert encoding_lib.route_ends(IdentityAligner(), "a->p->b") == ("a", "b")


def test_hops_are_distances_in_the_paired_data_graph(tri_modal_dataset):
  rows = retrieval_lib.retrieval_rows(
    IdentityAligner(query_map=lambda x: x[:, :6]),
    tri_modal_dataset,
    pairs=[("image", "audio"), ("audio", "image")],
  )
  assert {(r["query"], r["gallery"], r["hops"]) for r in rows} == {
    ("image", "audio", 2),
    ("audio", "image", 2),
  }
  summary = tables_lib.summarize_by_hops(rows)
  assert [(s["level"], s["hops"], s["pairs"]) for s in summary] == [("class", 2, 2)]


def test_gap_known_answer():
  """a rows: half e0, half e1 -> centroid (.5, .5, 0); b rows: all e0 -> centroid e0; gap
  sqrt(.5)."""
  e = np.eye(3, dtype=np.float32)
  a = np.concatenate([np.repeat(e[:1], 10, 0), np.repeat(e[1:2], 10, 0)])
  b = np.repeat(e[:1], 20, 0)
  ds = two_modalities(a, b)
  to_e0 = lambda x: np.repeat(e[:1], len(x), 0)  # "trained": every query lands on b's centroid
  rows = tables_lib.gap_rows(IdentityAligner(query_map=to_e0), ds, before=IdentityAligner())
  by_pair = {(r["query"], r["gallery"]): r for r in rows}
  ab = by_pair[("a", "b")]
  assert ab["gap_raw"] == pytest.approx(np.sqrt(0.5))
  assert ab["gap_before"] == pytest.approx(np.sqrt(0.5))
  assert ab["gap_after"] == pytest.approx(0.0, abs=1e-7)
  assert ab["hops"] == 1 and ab["route"] == "a->b"
  # b -> a: queries (all e0) mapped to e0 again, gallery a: gap sqrt(.5) before and after
  assert by_pair[("b", "a")]["gap_after"] == pytest.approx(np.sqrt(0.5))
  assert geometry_lib.modality_gap(a, b) == pytest.approx(np.sqrt(0.5))


def test_silhouette_known_answers():
  """One-hot class rows: silhouette 1. Queries moved to an orthogonal block (classes kept,
  modalities apart): with m rows per class and modality, the mixed silhouette is (m - 1) / (2m -
  1)."""
  k, m = 4, 5
  labels = np.repeat(np.arange(k), m)
  one_hot = np.eye(2 * k, dtype=np.float32)[labels]
  ds = two_modalities(one_hot, one_hot.copy(), labels=(labels, labels))
  shift = lambda x: np.roll(x, k, axis=1)  # class c -> e_{k+c}: same clusters, other block
  rows = tables_lib.silhouette_rows(IdentityAligner(query_map=shift), ds, before=IdentityAligner())
  r = {(s["query"], s["gallery"]): s for s in rows}[("a", "b")]
  assert r["query_raw"] == pytest.approx(1.0) and r["gallery_raw"] == pytest.approx(1.0)
  assert r["query_translated"] == pytest.approx(1.0)
  assert r["mixed_before"] == pytest.approx(1.0)  # identity: both sides on the same one-hots
  assert r["mixed"] == pytest.approx((m - 1) / (2 * m - 1))


def test_silhouette_skips_unlabelled_modalities(tri_modal_arrays):
  del tri_modal_arrays["audio_label"]
  ds = readers_lib.from_arrays(tri_modal_arrays)
  routes = encoding_lib.planned_routes(
    IdentityAligner(), ds, pairs=[("image", "audio"), ("audio", "image")]
  )
  assert tables_lib.silhouette_rows(IdentityAligner(), ds, routes=routes) == []


# --------------------------------------------------------------------------- the translator graph


@pytest.fixture(scope="module")
def tiny_graph():
  import jax

  graph = ModalityGraph.build(
    {"image": 6, "audio": 6, "text": 8},
    ["image->text", "text->image", "audio->text", "text->audio"],
  )
  layout = translators_lib.EdgeLayout.build(
    graph, translators_lib.TranslatorArch(hidden=(16,), layer_norm=True)
  )
  # Random params of init_params' structure (eval_shape: no slow RNG compile); nonlinear
  # translators.
  shapes = jax.eval_shape(lambda: translators_lib.init_params(layout, seed=0))
  rng = np.random.default_rng(3)
  return layout, jax.tree.map(lambda s: 0.5 * rng.normal(size=s.shape).astype(np.float32), shapes)


def test_translate_paths_matches_compose_and_shares_prefixes(tiny_graph):
  layout, params = tiny_graph
  x = (
    np.random.default_rng(0).normal(size=(translate_lib.TRANSLATE_CHUNK + 37, 6)).astype(np.float32)
  )
  routes = ["image->text", "image->text->image", "image->text->audio"]
  out = translate_lib.translate_paths(layout, params, "float32", routes, x)
  for route in routes:
    expected = np.asarray(translators_lib.compose(layout, params, route, x))
    assert out[route].shape == expected.shape
    np.testing.assert_allclose(out[route], expected, atol=2e-5)
  aligner = aligners_lib.GraphAligner(layout, params)
  np.testing.assert_array_equal(aligner.translate("image->text", x[:5]), out["image->text"][:5])
  with pytest.raises(GraphError, match="no edge image->audio"):
    aligner.translate("image->audio", x)
  with pytest.raises(GraphError, match="start at different modalities"):
    translate_lib.translate_paths(layout, params, "float32", ["image->text", "audio->text"], x)


def test_graph_aligner_routes(tiny_graph):
  layout, params = tiny_graph
  aligner = aligners_lib.GraphAligner(layout, params)
  assert aligner.default_route("image", "text") == "image->text"
  # never paired: meet in the shared neighbour (one translator per side) rather than two in a row
  assert aligner.default_route("image", "audio") == "image->text<-audio"
  assert aligner.default_route("image", "depth") is None
  assert aligner.route_ends("audio->text->image") == ("audio", "image")
  assert aligner.route_ends("image->text<-audio") == ("image", "audio")
  xq, xg = (
    np.random.default_rng(0).normal(size=(3, 6)),
    np.random.default_rng(1).normal(size=(4, 6)),
  )
  zq, zg = aligner.encode("image", "audio", "image->text<-audio", xq, xg)
  np.testing.assert_allclose(zq, aligner.translate("image->text", xq), rtol=1e-6)
  np.testing.assert_allclose(zg, aligner.translate("audio->text", xg), rtol=1e-6)
  zq, zg = aligner.encode(
    "image", "audio", "image->text->audio", xq, xg
  )  # a named translation path
  np.testing.assert_allclose(zg, xg / np.linalg.norm(xg, axis=1, keepdims=True), rtol=1e-6)
  with pytest.raises(GraphError, match="does not join image"):
    aligner.encode("image", "audio", "image->text", np.ones((2, 6)), np.ones((2, 6)))


def test_reconstruction_rows(tiny_graph, tri_modal_dataset):
  layout, params = tiny_graph
  ds = tri_modal_dataset
  rows = tables_lib.reconstruction_rows(
    aligners_lib.GraphAligner(layout, params), ds, cycle_length=3
  )
  cycles = [r for r in rows if r["kind"] == "cycle"]
  assert {r["route"] for r in cycles} == {
    "image->text->image",
    "text->image->text",
    "audio->text->audio",
    "text->audio->text",
  }
  image_rows = np.nonzero(ds.modalities["image"].test)[0]
  cycle = next(r for r in cycles if r["route"] == "image->text->image")
  x = ds.modalities["image"].emb[image_rows]
  expected = geometry_lib.mean_cosine(
    aligners_lib.GraphAligner(layout, params).translate(cycle["route"], x), x
  )
  assert cycle["cosine"] == pytest.approx(expected) and cycle["n"] == len(image_rows)
  img = ds.modalities["image"]
  assert cycle["baseline"] == pytest.approx(
    geometry_lib.mean_predictor_cosine(img.emb[img.train], x)
  )
  # no ids: single hops are scored on the data's pairs (train pairs: the synthetic pairs are train
  # rows)
  paths = [r for r in rows if r["kind"] == "path"]
  assert {r["hops"] for r in paths} == {1}
  assert {r["target"] for r in paths} <= {"paired rows (test)", "paired rows (train)"}
  assert [r["kind"] for r in rows] == sorted((r["kind"] for r in rows), key=lambda k: k != "path")
  # strategies without translators have no reconstruction table
  assert tables_lib.reconstruction_rows(IdentityAligner(), ds) == []


def test_reconstruction_with_ids_uses_the_same_instance():
  """Identity-like translators (a linear graph with identity weights) reconstruct exactly."""
  graph = ModalityGraph.build({"a": 4, "b": 4, "c": 4}, ["a->b", "b->c", "c->a"])
  layout = translators_lib.EdgeLayout.build(graph, translators_lib.TranslatorArch(hidden=()))
  ((key, bucket),) = layout.bucket_by_key.items()  # one bucket: three 4x4 linear maps
  params = {
    key: {
      "out": {
        "kernel": np.stack([np.eye(4, dtype=np.float32)] * bucket.size),
        "bias": np.zeros((bucket.size, 4), np.float32),
      }
    }
  }
  rng = np.random.default_rng(0)
  x = rng.normal(size=(12, 4)).astype(np.float32)
  order = rng.permutation(12)  # b's row r is instance order[r]
  arrays = {
    "a_emb": x,
    "b_emb": x[order],
    "c_emb": x,
    "a_id": np.arange(12),
    "b_id": order,
    "c_id": np.arange(12),
    "pairs_a__b": np.stack([order, np.arange(12)], 1),
    "pairs_b__c": np.stack([np.arange(12), order], 1),
  }
  ds = readers_lib.from_arrays(arrays)
  rows = tables_lib.reconstruction_rows(
    aligners_lib.GraphAligner(layout, params), ds, cycle_length=3, path_hops=2
  )
  by_route = {r["route"]: r for r in rows}
  assert set(by_route) == {
    "a->b",
    "b->c",
    "c->a",
    "a->b->c",
    "b->c->a",
    "c->a->b",
    "a->b->c->a",
    "b->c->a->b",
    "c->a->b->c",
  }
  for r in rows:
    assert r["cosine"] == pytest.approx(1.0, abs=1e-6), r
    assert r["target"] == ("same rows" if r["kind"] == "cycle" else "same id")
    assert r["n"] == 12
  assert by_route["a->b->c"]["hops"] == 2 and by_route["a->b->c->a"]["hops"] == 3
  summary = tables_lib.summarize_reconstruction(rows)
  assert [(s["kind"], s["hops"], s["routes"]) for s in summary] == [
    ("path", 1, 3),
    ("path", 2, 3),
    ("cycle", 3, 3),
  ]


def test_hub_modality_and_common_space(tri_modal_dataset):
  assert tables_lib.hub_modality(tri_modal_dataset) == "text"
  aligner = IdentityAligner(query_map=lambda x: np.pad(x, ((0, 0), (0, 2))))  # 6 -> 8 dims
  cache = encoding_lib.EncodingCache(aligner, tri_modal_dataset, "test")
  sets, routes = tables_lib.common_space_rows(aligner, tri_modal_dataset, "text", cache)
  assert list(sets) == ["image", "audio", "text"]
  assert routes == {"image": "image->text", "audio": "audio->text", "text": "raw"}
  assert {z.shape[1] for z in sets.values()} == {8}
  assert len(sets["text"]) == int(tri_modal_dataset.modalities["text"].test.sum())
