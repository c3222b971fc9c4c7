"""Default routes: cycle-only edges are no paired hop; route ensembles; CSLS."""

import numpy as np
import pytest

from graphbridge.data import readers as readers_lib
from graphbridge.evaluation import aligners as aligners_lib
from graphbridge.evaluation import encoding as encoding_lib
from graphbridge.evaluation import hubness as hubness_lib
from graphbridge.evaluation import retrieval as retrieval_lib
from graphbridge.core import routes as routes_lib
from graphbridge.core.graph import Edge
from graphbridge.core.graph import ModalityGraph
from graphbridge.model.translators import EdgeLayout, TranslatorArch, init_params


def _tri(n=60, seed=0):
  rng = np.random.default_rng(seed)
  rows = np.arange(n)
  arrays = {
    "image_emb": rng.normal(size=(n, 6)),
    "text_emb": rng.normal(size=(n, 5)),
    "audio_emb": rng.normal(size=(n, 7)),
    "image_id": rows,
    "text_id": rows,
    "audio_id": rows,
    "pairs_image__text": np.stack([rows[:20], rows[:20]], 1),
    "pairs_audio__text": np.stack([rows[20:40], rows[20:40]], 1),
  }
  return readers_lib.from_arrays(arrays)


def _aligner(graph, **kw):
  layout = EdgeLayout.build(graph, TranslatorArch(hidden=(8,)))
  return aligners_lib.GraphAligner(layout, init_params(layout, 0), **kw)


def test_a_cycle_only_edge_is_never_a_paired_hop():
  dataset = _tri()
  graph = dataset.default_graph(extra_edges=["image->audio", "audio->image"])
  for mode in ("ensemble", "best"):
    aligner = _aligner(graph, routes=mode)
    rows = retrieval_lib.retrieval_rows(
      aligner, dataset, split="all", pairs=[("image", "audio"), ("audio", "image")]
    )
    assert rows and all(r["hops"] == 2 for r in rows)
    for r in rows:
      for part in routes_lib.split_ensemble(r["route"]):
        assert "image->audio" not in part and "audio->image" not in part, r["route"]
        assert "text" in part
    assert aligner.not_hops == {Edge("image", "audio"), Edge("audio", "image")}
  # named routes may still use the edge on purpose
  named = retrieval_lib.retrieval_rows(
    _aligner(graph), dataset, split="all", pairs=[], extra_routes=["image->audio"]
  )
  assert [r["route"] for r in named] == ["image->audio"]


def test_meeting_routes_along_a_chain_and_the_ensemble_default():
  graph = ModalityGraph.build({"a": 3, "b": 4, "c": 5, "d": 6})
  for x, y in (("a", "b"), ("b", "c"), ("c", "d")):
    graph = graph.add_edges_both_ways(x, y)
  names = [r.name for r in routes_lib.meeting_routes(graph, "a", "d")]
  assert sorted(names) == sorted(["a->b->c->d", "a->b->c<-d", "a->b<-c<-d", "a<-b<-c<-d"])
  assert names[0] == routes_lib.best_route(graph, "a", "d").name
  assert _aligner(graph).default_route("a", "b") == "a->b"  # paired: the direct edge
  ensemble = _aligner(graph, routes="ensemble_all").default_route("a", "d")
  assert sorted(routes_lib.split_ensemble(ensemble)) == sorted(names)
  inner = _aligner(graph).default_route("a", "d")  # default: meeting strictly between a and d
  assert sorted(routes_lib.split_ensemble(inner)) == sorted(["a->b->c<-d", "a->b<-c<-d"])
  star = (
    ModalityGraph.build({"a": 3, "p": 4, "c": 5})
    .add_edges_both_ways("a", "p")
    .add_edges_both_ways("c", "p")
  )
  assert _aligner(star).default_route("a", "c") == "a->p<-c"  # one meeting point: that route alone
  assert _aligner(graph, routes="best").default_route("a", "d") == names[0]
  with pytest.raises(ValueError, match="routes='mean'"):
    _aligner(graph, routes="mean")


def test_ensemble_cosine_is_the_mean_of_the_route_cosines():
  graph = ModalityGraph.build({"a": 3, "b": 4, "c": 5})
  graph = graph.add_edges_both_ways("a", "b").add_edges_both_ways("b", "c")
  aligner = _aligner(graph, routes="ensemble_all")
  rng = np.random.default_rng(1)
  xa, xc = rng.normal(size=(9, 3)), rng.normal(size=(11, 5))
  parts = routes_lib.meeting_routes(graph, "a", "c")
  assert len(parts) == 3
  zq, zg = aligner.encode("a", "c", routes_lib.ensemble_name(parts), xa, xc)
  sims = []
  for r in parts:
    q, g = aligner.encode("a", "c", r.name, xa, xc)
    sims.append(q @ g.T)
  expected = np.mean(sims, axis=0)
  np.testing.assert_allclose(zq @ zg.T, expected, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(zq, axis=1), 1.0, atol=1e-5)


def test_csls_ranks_as_two_cos_minus_hubness():
  rng = np.random.default_rng(2)
  common = rng.normal(size=8)
  zq = rng.normal(size=(40, 8)) + 1.5 * common
  zg = np.concatenate([common[None], zq[:29] + 1.2 * rng.normal(size=(29, 8))])  # row 0: a hub
  zq /= np.linalg.norm(zq, axis=1, keepdims=True)
  zg /= np.linalg.norm(zg, axis=1, keepdims=True)
  k = 5
  cos = zq @ zg.T
  r = np.sort(cos.T, axis=1)[:, -k:].mean(1)
  want = 2 * cos - r[None, :]
  q, g = hubness_lib.csls_transform(zq, zg, k)
  qn, gn = (
    q / np.linalg.norm(q, axis=1, keepdims=True),
    g / np.linalg.norm(g, axis=1, keepdims=True),
  )
  np.testing.assert_array_equal(
    np.argsort(-(qn @ gn.T), axis=1, kind="stable"), np.argsort(-want, axis=1, kind="stable")
  )
  assert (np.argmax(cos, 1) == 0).sum() > (np.argmax(want, 1) == 0).sum()  # the hub is demoted


def test_auto_route_mode_reads_the_pair_sets():
  """eval.routes="auto" (the default): ensemble_all where every pair set is instance-level (ids
  agree along the pairs), ensemble where a pair set is class-level (the embedded digits set); an
  aligner resolves it when bound to the data."""
  instance = _tri()
  assert encoding_lib.resolve_route_mode("auto", instance)[0] == "ensemble_all"
  assert encoding_lib.resolve_route_mode("auto", readers_lib.load_digits())[0] == "ensemble"
  assert encoding_lib.resolve_route_mode("best", instance) == ("best", "asked for")
  chain = ModalityGraph.build({"image": 6, "text": 5, "audio": 7})
  chain = chain.add_edges_both_ways("image", "text").add_edges_both_ways("audio", "text")
  aligner = _aligner(chain)
  assert (
    aligner.routes == "auto" and aligner.route_mode == "ensemble"
  )  # unbound: the inner ensemble
  aligner.bind_data(instance)
  assert aligner.route_mode == "ensemble_all"
  parts = routes_lib.split_ensemble(aligner.default_route("image", "audio"))
  assert sorted(parts) == sorted(r.name for r in routes_lib.meeting_routes(chain, "image", "audio"))
  assert len(parts) == 3  # into text (between), and into audio's and image's own spaces
