"""The one retrieval engine: Run.search ranks exactly as the report does (routes, ensembles, query
bank), an index answers batch after batch, exact top-k in blocks, clear errors, and the NumPy
export of every translator architecture."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import graphbridge
from graphbridge import defaults
from graphbridge.core.errors import DataError
from graphbridge.core.graph import ModalityGraph
from graphbridge.evaluation import search as search_lib
from graphbridge.model import export as export_lib
from graphbridge.model import translators as translators_lib

from conftest import REPO_ROOT, make_modality_arrays


def chain_arrays(seed: int = 0) -> dict[str, np.ndarray]:
  """Four modalities (dims 5-9) of the same 120 instances, paired by id along a chain a-b-c-d, each
  pair set on its own 24 train instances; most rows unpaired; ids and labels on every row."""
  rng = np.random.default_rng(seed)
  dims = {"a": 7, "b": 9, "c": 5, "d": 8}
  arrays = make_modality_arrays(rng, dims, {m: 120 for m in dims}, test_fraction=0.0)
  test = np.zeros(120, bool)
  test[rng.permutation(120)[:40]] = True
  train_ids = np.nonzero(~test)[0]
  for m in dims:
    arrays[f"{m}_id"] = np.arange(120)
    arrays[f"{m}_train"], arrays[f"{m}_test"] = ~test, test
  for i, (x, y) in enumerate([("a", "b"), ("b", "c"), ("c", "d")]):
    ids = train_ids[24 * i : 24 * (i + 1)]
    arrays[f"pairs_{x}__{y}"] = np.stack([ids, ids], axis=1)
  return arrays


@pytest.fixture(scope="module")
def chain_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("search")
  path = str(root / "chain.npz")
  np.savez(path, **chain_arrays())
  c = defaults.shrink_for_tests(defaults.base_config())
  c.data.path, c.data.batch_size, c.model.hidden = path, 16, (16,)
  c.train.steps, c.train.tensorboard = 40, False
  run = graphbridge.fit(c, str(root / "run"), plots=False, log=lambda m: None)
  with open(root / "run" / "report.json") as f:
    return run, json.load(f)


def _search_metrics(run, report_row):
  q, g = report_row["query"], report_row["gallery"]
  data = run.dataset()
  _, q_index = run.gallery(q)
  _, g_index = run.gallery(g)
  _, order = run.search(None, q, g, k=len(g_index))
  attr = "ids" if report_row["level"] == "instance" else "labels"
  keys_q = getattr(data.modalities[q], attr)[q_index]
  keys_g = getattr(data.modalities[g], attr)[g_index]
  return search_lib.retrieval_from_ranks(search_lib.ranks_of(order, keys_q, keys_g))


def test_search_reproduces_the_report_for_every_ordered_pair(chain_run):
  run, report = chain_run
  assert report["querybank_k"] == 10 and report["route_mode"].startswith("ensemble_all")
  rows = [r for r in report["rows"] if not r.get("named_route")]
  assert len({(r["query"], r["gallery"]) for r in rows}) == 12  # every ordered pair of 4 modalities
  assert any(" + " in r["route"] for r in rows)  # ensembles among them
  for row in rows:
    got = _search_metrics(run, row)
    for key in ("R@1", "R@5", "R@10", "mAP"):
      assert abs(got[key] - row[key]) <= 1e-6, (row["query"], row["gallery"], row["level"], key)


def test_the_default_route_is_the_reports(chain_run):
  run, report = chain_run
  for row in report["rows"]:
    if not row.get("named_route"):
      assert run.default_route(row["query"], row["gallery"]) == row["route"]


def test_an_index_answers_batch_after_batch_the_same(chain_run):
  run, _ = chain_run
  gallery, _ = run.gallery("d")
  index = run.index(gallery, "d", "a", data_rows=True)
  queries = np.random.default_rng(1).normal(size=(23, 7)).astype(np.float32)
  whole = index.search(queries, k=5)
  batched = index.search(queries, k=5, batch_size=4)
  np.testing.assert_array_equal(whole[1], batched[1])
  np.testing.assert_array_equal(whole[0], batched[0])
  assert whole[0].shape == (23, 5) and np.all(np.diff(whole[0], axis=1) <= 0)
  named = run.search(queries, "a", "d", k=3, route="a->b->c->d")
  assert named[1].shape == (23, 3)


def test_search_errors_name_the_problem(chain_run):
  run, _ = chain_run
  good = np.ones((2, 7), np.float32)
  with pytest.raises(DataError, match=r"expected \[rows, 7\] a embeddings, got shape \(2, 5\)"):
    run.search(np.ones((2, 5)), "a", "d")
  nan = good.copy()
  nan[1, 3] = np.nan
  with pytest.raises(DataError, match="row 1 has NaN"):
    run.search(nan, "a", "d")
  with pytest.raises(DataError, match="no rows"):
    run.search(np.zeros((0, 7)), "a", "d")
  with pytest.raises(DataError, match="complex"):
    run.search(good + 1j, "a", "d")
  for k in (0, -3):
    with pytest.raises(ValueError, match="k must be >= 1"):
      run.search(good, "a", "d", k=k)
  for k in (None, float("nan"), 2.5, "3"):
    with pytest.raises(ValueError, match="k must be a positive integer"):
      run.search(good, "a", "d", k=k)
  with pytest.raises(ValueError, match="batch_size must be"):
    run.translate(good, "a->b", batch_size=0)
  with pytest.raises(graphbridge.GraphError, match="'z' is not a modality"):
    run.translate(good, "z->a")
  with pytest.raises(graphbridge.GraphError, match="has two sides"):
    run.translate(good, "a->b<-c")
  gallery = np.ones((4, 8), np.float32)
  gallery[2] = np.inf
  with pytest.raises(DataError, match="gallery: row 2 has inf"):
    run.index(gallery, "d", "a")


def test_exact_top_k_equals_a_full_sort_with_ties_to_the_lower_index():
  rng = np.random.default_rng(0)
  gallery = rng.normal(size=(300, 6)).astype(np.float32)
  gallery[150] = gallery[20]  # duplicates: equal scores, the lower index first
  gallery[299] = gallery[20]
  queries = np.concatenate([rng.normal(size=(9, 6)), gallery[20:21] * 2]).astype(np.float32)
  q, g = search_lib.scoring_rows(queries), search_lib.scoring_rows(gallery)
  full = q.astype(np.float32) @ g.T
  order = np.lexsort((np.broadcast_to(np.arange(300), full.shape), -full), axis=1)
  for chunk, block in ((512, 1 << 16), (1, 7), (4, 64), (3, 299)):
    s, i = search_lib.exact_top_k(q, g, 12, query_chunk=chunk, gallery_block=block)
    np.testing.assert_array_equal(i, order[:, :12])
    # blocks of other shapes may round a score in its last bit (another BLAS kernel); the
    # default blocks are the report's, so there the scores are the same bits (test above)
    np.testing.assert_allclose(s, np.take_along_axis(full, order[:, :12], axis=1), atol=1e-6)
  assert list(i[-1][:3]) == [20, 150, 299]


@pytest.mark.parametrize(
  "arch",
  [
    translators_lib.TranslatorArch(hidden=(16,), activation="gelu", layer_norm=True),
    translators_lib.TranslatorArch(
      hidden=(16, 8), activation="relu", layer_norm=False, residual=True
    ),
    translators_lib.TranslatorArch(hidden=(12,), activation="silu", layer_norm=True, residual=True),
    translators_lib.TranslatorArch(hidden=(16,), activation="tanh"),
    translators_lib.TranslatorArch(hidden=(16,), activation="gelu_exact", layer_norm=True),
    translators_lib.TranslatorArch(hidden=(16,), activation="gelu", impl="fused"),
    translators_lib.TranslatorArch(hidden=(), activation="gelu"),
    translators_lib.TranslatorArch(hidden=(16,), activation="gelu", layer_norm=True, linear=16),
    translators_lib.TranslatorArch(hidden=(16,), activation="relu", residual=True, linear=2),
  ],
  ids=lambda a: a.tag + ("-fused" if a.impl == "fused" else ""),
)
def test_export_round_trip_matches_the_translators(arch, tmp_path):
  """Every architecture option: the NumPy apply of an export equals compose (JAX) to 1e-5."""
  graph = ModalityGraph.build({"a": 6, "b": 6, "c": 9}).add_edge("a->b").add_edge("b->c")
  layout = translators_lib.EdgeLayout.build(graph, arch)
  params = translators_lib.init_params(layout, seed=3)
  params = jax.tree.map(
    lambda p: p + 0.1 * np.random.default_rng(0).normal(size=p.shape).astype(p.dtype), params
  )
  edges = {}
  for bucket in layout.buckets:
    for i, edge in enumerate(bucket.edges):
      edges[edge.name] = {
        "arch": arch.to_dict(),
        "d_in": bucket.d_in,
        "d_out": bucket.d_out,
        "params": jax.tree.map(lambda p, i=i: np.asarray(p[i]), params[bucket.key]),
      }
  export_lib.write(str(tmp_path), dict(graph.nodes), edges)
  x = np.random.default_rng(1).normal(size=(11, 6)).astype(np.float32)
  unit = x / np.linalg.norm(x, axis=1, keepdims=True)
  expected = np.asarray(translators_lib.compose(layout, params, "a->b->c", unit))
  got = export_lib.load(str(tmp_path)).apply(x, "a->b->c")
  np.testing.assert_allclose(got, expected, atol=1e-5)


def test_run_export_needs_no_jax(chain_run, tmp_path):
  run, _ = chain_run
  written = run.export(str(tmp_path))
  assert sorted(os.path.basename(p) for p in written) == ["translators.json", "translators.npz"]
  x = np.random.default_rng(2).normal(size=(5, 7)).astype(np.float32)
  np.save(tmp_path / "x.npy", x)
  code = (
    "import sys; sys.modules['jax'] = None; sys.modules['flax'] = None\n"
    "import numpy as np\nfrom graphbridge.model import export\n"
    f"z = export.load({str(tmp_path)!r}).apply(np.load({str(tmp_path / 'x.npy')!r}), 'a->b->c')\n"
    f"np.save({str(tmp_path / 'z.npy')!r}, z)\n"
  )
  done = subprocess.run(
    [sys.executable, "-c", code],
    capture_output=True,
    text=True,
    cwd=REPO_ROOT,
    env={**os.environ, "PYTHONPATH": REPO_ROOT},
  )
  assert done.returncode == 0, done.stderr
  np.testing.assert_allclose(np.load(tmp_path / "z.npy"), run.translate(x, "a->b->c"), atol=1e-5)


def test_faiss_backend_finds_the_exact_neighbours(chain_run):
  pytest.importorskip("faiss")
  rng = np.random.default_rng(3)
  centres = rng.normal(size=(50, 16)).astype(np.float32)
  gallery = (centres[rng.integers(0, 50, 5000)] + 0.3 * rng.normal(size=(5000, 16))).astype(
    np.float32
  )
  g = search_lib.scoring_rows(gallery)
  q = search_lib.scoring_rows(gallery[:100] + 0.05 * rng.normal(size=(100, 16)).astype(np.float32))
  _, exact = search_lib.exact_top_k(q, g, 10)
  index = search_lib.faiss_index(g, nprobe=16)
  _, approx = index.search(q, 10)
  assert search_lib.recall_at_k(approx, exact) >= 0.95


def test_a_loaded_run_searches_as_the_training_runs_report(chain_run):
  """graphbridge.load(workdir) takes the report's routes (edges that pseudo-pairs made paired hops
  included: the checkpoint says which edges were cycle-only in training) and reproduces its
  numbers."""
  run, report = chain_run
  loaded = graphbridge.load(run.workdir)
  rows = [r for r in report["rows"] if not r.get("named_route")]
  for row in rows:
    assert loaded.default_route(row["query"], row["gallery"]) == row["route"], row
    got = _search_metrics(loaded, row)
    for key in ("R@1", "R@5", "R@10", "mAP"):
      assert abs(got[key] - row[key]) <= 1e-6, (row["query"], row["gallery"], row["level"], key)
