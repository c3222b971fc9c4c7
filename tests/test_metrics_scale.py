"""The chunked JAX retrieval metrics against the NumPy reference (exact, same conventions)."""

from __future__ import annotations

import numpy as np
import pytest

from graphbridge.evaluation import ranks as ranks_lib
from graphbridge.evaluation import metrics as metrics_lib
from graphbridge.evaluation.ranks import _first_rank_and_ap, _first_rank_and_ap_numpy
from graphbridge.evaluation.metrics import retrieval_metrics


def _data(rng, n_query, n_gallery, dim, n_keys):
  query = rng.normal(size=(n_query, dim)).astype(np.float32)
  gallery = rng.normal(size=(n_gallery, dim)).astype(np.float32)
  return query, gallery, rng.integers(0, n_keys, n_query), rng.integers(0, n_keys, n_gallery)


def _assert_same(args, exclude_self=False, chunk_size=None):
  first, ap, n_rel = _first_rank_and_ap(*args, exclude_self, chunk_size)
  ref_first, ref_ap, ref_n = _first_rank_and_ap_numpy(*args, exclude_self, 1024)
  np.testing.assert_array_equal(n_rel, ref_n)
  np.testing.assert_array_equal(first, ref_first)
  np.testing.assert_allclose(ap, ref_ap, rtol=1e-12)  # NaN where no relevant item: equal


@pytest.mark.parametrize(
  "n_keys", [3, 40, 10_000]
)  # class level (sorted rows) .. instance (counted)
@pytest.mark.parametrize("chunk_size", [None, 7])
@pytest.mark.parametrize("backend", ["cpu", "gpu"])  # class level: NumPy sort or XLA's lax.sort
def test_jax_path_equals_numpy_reference(n_keys, chunk_size, backend, monkeypatch):
  import jax

  monkeypatch.setattr(jax, "default_backend", lambda: backend)
  rng = np.random.default_rng(n_keys)
  query, gallery, qk, gk = _data(rng, 150, 230, 16, n_keys)
  if n_keys == 10_000:  # instance level: mostly one relevant item, some queries none, one with 3
    gk = rng.permutation(10_000)[:230]
    qk = gk[rng.integers(0, 230, 150)]
    qk[:20] = -1
    gk[[5, 6]] = qk[30]
  _assert_same((query, gallery, qk, gk), chunk_size=chunk_size)


@pytest.mark.parametrize("n_keys", [4, 200])
def test_jax_path_exclude_self(n_keys):
  rng = np.random.default_rng(7)
  emb = rng.normal(size=(120, 12)).astype(np.float32)
  keys = rng.integers(0, n_keys, 120)
  _assert_same((emb, emb, keys, keys), exclude_self=True, chunk_size=25)
  a = retrieval_metrics(emb, emb, keys, keys, exclude_self=True)
  b = retrieval_metrics(
    emb.astype(np.float64), emb.astype(np.float64), keys, keys, exclude_self=True
  )
  assert a["n_queries"] == b["n_queries"] and a["median_rank"] == b["median_rank"]
  assert a["mAP"] == pytest.approx(b["mAP"], rel=1e-6)


@pytest.mark.parametrize("host_sort", [True, False])
def test_jax_path_ties_by_gallery_index_every_path(monkeypatch, host_sort):
  import jax

  monkeypatch.setattr(jax, "default_backend", lambda: "cpu" if host_sort else "gpu")  # which sort
  gallery = np.array([[1, 0], [1, 0], [1, 0], [0, 1], [1, 0]], np.float32)
  query = np.array([[1, 0], [0, 1]], np.float32)
  for limit in (16, 0):  # counted ranks, then sorted rows
    monkeypatch.setattr(ranks_lib, "COUNT_RANKS_UP_TO", limit)
    first, ap, _ = _first_rank_and_ap(
      query, gallery, np.array([5, 7]), np.array([0, 0, 5, 7, 5]), False, None
    )
    # query 0: relevant at indices 2 and 4, tied with 0 and 1 -> ranks 3 and 4
    np.testing.assert_array_equal(first, [3, 1])
    np.testing.assert_allclose(ap, [(1 / 3 + 2 / 4) / 2, 1.0], rtol=1e-6)


def test_chunk_is_bounded_by_the_block(monkeypatch):
  """With a small score block the queries are scored a few at a time, with the same result."""
  rng = np.random.default_rng(3)
  args = _data(rng, 64, 500, 8, 5)
  monkeypatch.setattr(ranks_lib, "SCORE_BLOCK_ELEMENTS", 2000)  # 4 queries per chunk
  _assert_same(args)
  r = retrieval_metrics(*args)
  monkeypatch.setattr(ranks_lib, "SCORE_BLOCK_ELEMENTS", 1 << 24)
  assert retrieval_metrics(*args) == r


@pytest.mark.parametrize("exclude_self", [False, True])
def test_by_level_equals_one_call_per_level(exclude_self):
  rng = np.random.default_rng(11)
  emb = rng.normal(size=(90, 10)).astype(np.float32)
  ids, labels = np.arange(90) % 45, rng.integers(0, 6, 90)  # two rows per id
  gallery = emb if exclude_self else rng.normal(size=(90, 10)).astype(np.float32)
  keys = {"instance": (ids, ids), "class": (labels, labels)}
  both = metrics_lib.retrieval_metrics_by_level(
    emb, gallery, keys, ks=(1, 5), exclude_self=exclude_self, chunk_size=16
  )
  for level, (qk, gk) in keys.items():
    assert both[level] == retrieval_metrics(
      emb, gallery, qk, gk, ks=(1, 5), exclude_self=exclude_self
    )


def _clustered(rng, n_query, n_gallery, dim, n_classes, spread):
  """Class centres plus noise: with a small spread a row's relevant items score close together
  (few items between them: the in-range path), with a large one they spread over the gallery."""
  centres = rng.normal(size=(n_classes, dim))
  qk, gk = rng.integers(0, n_classes, n_query), rng.integers(0, n_classes, n_gallery)
  query = (centres[qk] + spread * rng.normal(size=(n_query, dim))).astype(np.float32)
  gallery = (centres[gk] + spread * rng.normal(size=(n_gallery, dim))).astype(np.float32)
  return query, gallery, qk, gk


@pytest.mark.parametrize("up_to", [0.0, 0.2, 1.0])  # every row sorted .. some .. none sorted
@pytest.mark.parametrize("exclude_self", [False, True])
def test_cpu_in_range_ranks_equal_numpy_reference(up_to, exclude_self, monkeypatch):
  """300 queries: one chunk split over two threads; half the rows clustered, half not."""
  calls = {"in_range": 0, "sorted": 0}
  for name, key in (("_ranks_in_range", "in_range"), ("_ranks_by_sorted_scores", "sorted")):
    original = getattr(ranks_lib, name)
    monkeypatch.setattr(
      ranks_lib,
      name,
      lambda *a, _f=original, _k=key: (calls.__setitem__(_k, calls[_k] + 1), _f(*a))[1],
    )
  monkeypatch.setattr(ranks_lib, "IN_RANGE_UP_TO", up_to)
  rng = np.random.default_rng(5)
  tight = _clustered(rng, 150, 400, 24, 8, 0.3)
  loose = _clustered(rng, 150, 400, 24, 8, 3.0)
  query = np.concatenate([tight[0], loose[0]])
  qk = np.concatenate([tight[2], loose[2]])
  gallery, gk = (query, qk) if exclude_self else (tight[1], tight[3])
  _assert_same((query, gallery, qk, gk), exclude_self=exclude_self)
  # instance level (two rows per id with exclude_self): ranks from the items above the relevant one
  ids_q, ids_g = (
    (np.arange(300) // 2,) * 2 if exclude_self else (rng.integers(0, 400, 300), np.arange(400))
  )
  _assert_same((query, gallery, ids_q, ids_g), exclude_self=exclude_self)
  assert calls["sorted"] > 0 if up_to < 1 else calls["sorted"] == 0
  assert calls["in_range"] > 0 if up_to > 0 else True  # (0: rows without a relevant item only)


@pytest.mark.parametrize("up_to", [0.0, 1.0])
def test_cpu_paths_exact_ties_and_signed_zeros(up_to, monkeypatch):
  """Entries in {-1, 0, 1} x 3 dims: scores repeat across the gallery (exact ties, broken by the
  gallery index), and orthogonal rows score -0.0 or +0.0, which tie."""
  monkeypatch.setattr(ranks_lib, "IN_RANGE_UP_TO", up_to)
  rng = np.random.default_rng(9)
  query = rng.integers(-1, 2, (200, 3)).astype(np.float32)
  gallery = rng.integers(-1, 2, (260, 3)).astype(np.float32)
  query[(query == 0).all(axis=1)] = 1
  gallery[(gallery == 0).all(axis=1)] = -1
  gallery[:5] = [[1, 0, 0], [0, 1, 0], [-1, 0, 0], [0, -1, 0], [0, 0, 1]]
  query[:3] = [[0, 0, 1], [1, 0, 0], [0, 1, 0]]  # scores exactly 0 against several gallery rows
  for n_keys in (2, 7, 260):
    qk, gk = rng.integers(0, n_keys, 200), rng.integers(0, n_keys, 260)
    _assert_same((query, gallery, qk, gk))


@pytest.mark.parametrize("up_to", [0.0, 1.0])
def test_cpu_ranks_of_a_score_block(up_to, monkeypatch):
  """_ranks_on_host on blocks with -0.0 next to +0.0 (they tie), repeated values and -inf (the
  query's own item with exclude_self), against a stable argsort of each row."""
  monkeypatch.setattr(ranks_lib, "IN_RANGE_UP_TO", up_to)
  rng = np.random.default_rng(13)
  values = np.array([-0.0, 0.0, 0.5, -0.5, 0.25, 1.0, -np.inf], np.float32)
  block = values[rng.integers(0, len(values), (140, 60))]
  rel_idx = np.stack([rng.choice(60, 5, replace=False) for _ in range(140)]).astype(np.int32)
  rel_valid = rng.random((140, 5)) < 0.8
  rel_valid &= (
    np.take_along_axis(block, rel_idx, axis=1) > -np.inf
  )  # the own item is never relevant
  ranks = ranks_lib._ranks_on_host(block, rel_idx, rel_valid)
  order = np.argsort(-block + np.float32(0.0), axis=1, kind="stable")
  position = np.argsort(order, axis=1) + 1  # 1-based rank of every gallery column
  expected = np.where(
    rel_valid, np.take_along_axis(position, rel_idx, axis=1), np.iinfo(np.int32).max
  )
  np.testing.assert_array_equal(ranks, np.sort(expected, axis=1))
