"""Tests for graphbridge.evaluation.metrics (known answers; scipy/sklearn only as references)."""

from __future__ import annotations

import numpy as np
import pytest

from graphbridge.evaluation.metrics import (
  chance_retrieval_metrics,
  recall_at_k_curve,
  retrieval_metrics,
)
from graphbridge.evaluation.geometry import (
  mean_cosine,
  mean_predictor_cosine,
  modality_gap,
  silhouette_cosine,
)
from graphbridge.evaluation.ranks import _descending_order


def _clustered(rng, n_per_class, n_classes, dim, spread=0.5):
  centres = rng.normal(size=(n_classes, dim))
  labels = np.repeat(np.arange(n_classes), n_per_class)
  emb = centres[labels] + spread * rng.normal(size=(labels.size, dim))
  return emb.astype(np.float32), labels


def _brute_force(query, gallery, query_keys, gallery_keys, exclude_self=False):
  """Loop-over-queries reference: (first ranks, APs) for queries with a relevant item."""
  q = query / np.linalg.norm(query, axis=1, keepdims=True)
  g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
  firsts, aps = [], []
  for i in range(q.shape[0]):
    idx = np.arange(g.shape[0])
    if exclude_self:
      idx = idx[idx != i]
    scores = g[idx] @ q[i]
    order = idx[np.argsort(-scores, kind="stable")]
    rel = gallery_keys[order] == query_keys[i]
    if not rel.any():
      continue
    positions = np.flatnonzero(rel) + 1
    firsts.append(positions[0])
    aps.append(np.mean(np.arange(1, positions.size + 1) / positions))
  return np.array(firsts), np.array(aps)


# --------------------------------------------------------------------------- retrieval


def test_identical_instances_are_perfect():
  rng = np.random.default_rng(0)
  emb = rng.normal(size=(200, 32)).astype(np.float32)
  ids = np.arange(200)
  m = retrieval_metrics(emb, emb.copy(), ids, ids)
  assert m["mAP"] == pytest.approx(1.0)
  assert m["R@1"] == 1.0 and m["R@5"] == 1.0 and m["R@10"] == 1.0
  assert m["median_rank"] == 1.0 and m["mean_rank"] == 1.0
  assert m["n_queries"] == 200 and m["n_skipped"] == 0 and m["n_gallery"] == 200
  assert set(m) == {
    "R@1",
    "R@5",
    "R@10",
    "mAP",
    "median_rank",
    "mean_rank",
    "n_queries",
    "n_skipped",
    "n_gallery",
  }


def test_hand_computed_ranking():
  # 1-D-like embeddings in 2-D so the ranking is known exactly.
  # Query along +x; gallery angles decrease in similarity with index.
  angles = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
  gallery = np.stack([np.cos(angles), np.sin(angles)], axis=1)
  query = np.array([[1.0, 0.0]])
  # relevance along the ranking: [0, 1, 0, 1, 1, 0]
  gallery_keys = np.array([9, 7, 9, 7, 7, 9])
  query_keys = np.array([7])
  m = retrieval_metrics(query, gallery, query_keys, gallery_keys, ks=(1, 2, 3))
  # Relevant at ranks 2, 4, 5: precisions 1/2, 2/4, 3/5 -> AP = (0.5 + 0.5 + 0.6) / 3
  assert m["mAP"] == pytest.approx((1 / 2 + 2 / 4 + 3 / 5) / 3)
  assert m["R@1"] == 0.0 and m["R@2"] == 1.0 and m["R@3"] == 1.0
  assert m["median_rank"] == 2.0 and m["mean_rank"] == 2.0


def test_ties_broken_by_gallery_index():
  gallery = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
  query = np.array([[1.0, 0.0]])
  # all three tied items score 1; the relevant one sits at gallery index 2 -> rank 3
  m = retrieval_metrics(query, gallery, [5], [0, 0, 5, 0])
  assert m["median_rank"] == 3.0
  assert m["mAP"] == pytest.approx(1 / 3)


def test_exclude_self_and_skipping():
  rng = np.random.default_rng(1)
  emb, labels = _clustered(rng, 10, 5, 16)
  labels = labels.copy()
  labels[0] = 99  # singleton class: no other relevant item once self is excluded
  m = retrieval_metrics(emb, emb, labels, labels, exclude_self=True)
  assert m["n_skipped"] == 1 and m["n_queries"] == 49
  firsts, aps = _brute_force(emb, emb, labels, labels, exclude_self=True)
  assert m["mAP"] == pytest.approx(aps.mean())
  assert m["mean_rank"] == pytest.approx(firsts.mean())
  assert m["median_rank"] == pytest.approx(np.median(firsts))
  # without exclude_self every query finds itself first
  m_self = retrieval_metrics(emb, emb, labels, labels)
  assert m_self["R@1"] == 1.0 and m_self["n_skipped"] == 0


def test_matches_brute_force_and_chunking():
  rng = np.random.default_rng(2)
  query, qk = _clustered(rng, 12, 6, 8, spread=1.5)
  gallery, gk = _clustered(rng, 9, 7, 8, spread=1.5)  # class 6 has no queries; fine
  firsts, aps = _brute_force(query, gallery, qk, gk)
  full = retrieval_metrics(query, gallery, qk, gk, ks=(1, 3, 10), chunk_size=10_000)
  for chunk in (1, 7, 32):
    chunked = retrieval_metrics(query, gallery, qk, gk, ks=(1, 3, 10), chunk_size=chunk)
    assert chunked == full
  assert full["mAP"] == pytest.approx(aps.mean())
  assert full["mean_rank"] == pytest.approx(firsts.mean())
  for k in (1, 3, 10):
    assert full[f"R@{k}"] == pytest.approx(np.mean(firsts <= k))
  curve = recall_at_k_curve(query, gallery, qk, gk, max_k=20, chunk_size=5)
  assert curve.shape == (20,)
  assert np.all(np.diff(curve) >= 0)
  np.testing.assert_allclose(curve, [np.mean(firsts <= k) for k in range(1, 21)])
  assert curve[0] == full["R@1"] and curve[9] == full["R@10"]


def test_ap_matches_sklearn_average_precision():
  from sklearn.metrics import average_precision_score

  rng = np.random.default_rng(3)
  query, qk = _clustered(rng, 5, 4, 6, spread=2.0)
  gallery, gk = _clustered(rng, 15, 4, 6, spread=2.0)
  qn = query / np.linalg.norm(query, axis=1, keepdims=True)
  gn = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
  ref = np.mean([average_precision_score(gk == qk[i], gn @ qn[i]) for i in range(len(qk))])
  assert retrieval_metrics(query, gallery, qk, gk)["mAP"] == pytest.approx(ref, abs=1e-9)


def test_random_gallery_matches_exact_chance():
  rng = np.random.default_rng(4)
  n_classes, n_query, n_gallery, dim = 10, 300, 400, 64
  qk = rng.integers(0, n_classes, n_query)
  gk = rng.integers(0, n_classes, n_gallery)
  chance = chance_retrieval_metrics(qk, gk)
  maps, r1s, mean_ranks = [], [], []
  for seed in range(5):
    r = np.random.default_rng(100 + seed)
    m = retrieval_metrics(r.normal(size=(n_query, dim)), r.normal(size=(n_gallery, dim)), qk, gk)
    maps.append(m["mAP"])
    r1s.append(m["R@1"])
    mean_ranks.append(m["mean_rank"])
  assert np.mean(maps) == pytest.approx(chance["mAP"], abs=0.01)
  assert np.mean(r1s) == pytest.approx(chance["R@1"], abs=0.03)
  assert np.mean(mean_ranks) == pytest.approx(chance["mean_rank"], rel=0.1)


def test_chance_formulas_against_monte_carlo():
  rng = np.random.default_rng(5)
  n_items, n_relevant, n_trials = 30, 4, 40_000
  qk = np.zeros(1, dtype=int)
  gk = np.array([0] * n_relevant + [1] * (n_items - n_relevant))
  chance = chance_retrieval_metrics(qk, gk, ks=(1, 5, 10))
  # simulate random rankings: positions of relevant items in a random permutation
  perms = np.argsort(rng.random((n_trials, n_items)), axis=1)
  sorted_rel = gk[perms] == 0
  ranks = np.sort(np.argwhere(sorted_rel)[:, 1].reshape(n_trials, n_relevant), axis=1) + 1
  ap = np.mean(np.arange(1, n_relevant + 1) / ranks, axis=1)
  first = ranks[:, 0]
  assert chance["mAP"] == pytest.approx(ap.mean(), abs=3 * ap.std() / np.sqrt(n_trials) + 1e-4)
  for k in (1, 5, 10):
    assert chance[f"R@{k}"] == pytest.approx(np.mean(first <= k), abs=0.01)
  assert chance["mean_rank"] == pytest.approx((n_items + 1) / (n_relevant + 1))
  assert chance["mean_rank"] == pytest.approx(first.mean(), rel=0.02)
  assert chance["median_rank"] == np.median(first)
  # hand values: R@1 = R/N, R@k = 1 - C(N-R,k)/C(N,k)
  from scipy.special import comb

  assert chance["R@1"] == pytest.approx(n_relevant / n_items)
  assert chance["R@5"] == pytest.approx(1 - comb(26, 5) / comb(30, 5))
  # E[AP] = (1/R) sum_k (R/N) (1 + (k-1)(R-1)/(N-1)) / k
  k = np.arange(1, n_items + 1)
  formula = np.sum((1 / n_items) * (1 + (k - 1) * (n_relevant - 1) / (n_items - 1)) / k)
  assert chance["mAP"] == pytest.approx(formula)


def test_chance_edge_cases():
  # every gallery item relevant -> perfect
  c = chance_retrieval_metrics([0, 0], [0, 0, 0])
  assert c["mAP"] == pytest.approx(1.0) and c["R@1"] == 1.0 and c["mean_rank"] == 1.0
  # instance-level with exclude_self: nobody has a relevant item
  with pytest.raises(ValueError, match="no query has a relevant"):
    chance_retrieval_metrics([0, 1, 2], [0, 1, 2], exclude_self=True)
  # exclude_self removes self from both N and R
  c = chance_retrieval_metrics([0, 0, 1, 1], [0, 0, 1, 1], ks=(1,), exclude_self=True)
  assert c["R@1"] == pytest.approx(1 / 3) and c["mean_rank"] == pytest.approx(2.0)
  assert c["n_gallery"] == 4 and c["n_queries"] == 4


# --------------------------------------------------------------------------- validation


def test_validation_errors():
  good = np.ones((4, 3))
  keys = np.arange(4)
  bad = good.copy()
  bad[2, 1] = np.nan
  with pytest.raises(ValueError, match=r"query .*row 2"):
    retrieval_metrics(bad, good, keys, keys)
  bad_inf = good.copy()
  bad_inf[3, 0] = np.inf
  with pytest.raises(ValueError, match=r"gallery .*row 3"):
    retrieval_metrics(good, bad_inf, keys, keys)
  with pytest.raises(ValueError, match="different embedding dimensions"):
    retrieval_metrics(good, np.ones((4, 5)), keys, keys)
  with pytest.raises(ValueError, match="empty"):
    retrieval_metrics(np.ones((0, 3)), good, keys[:0], keys)
  with pytest.raises(ValueError, match="2-D"):
    retrieval_metrics(np.ones(3), good, keys[:1], keys)
  with pytest.raises(ValueError, match="query_keys has 3 entries"):
    retrieval_metrics(good, good, keys[:3], keys)
  zero = good.copy()
  zero[1] = 0
  with pytest.raises(ValueError, match=r"zero-norm row at index 1"):
    retrieval_metrics(zero, good, keys, keys)
  with pytest.raises(ValueError, match="no query has a relevant"):
    retrieval_metrics(good, good, keys, keys + 10)
  with pytest.raises(ValueError, match="exclude_self"):
    retrieval_metrics(good, good[:3], keys, keys[:3], exclude_self=True)
  with pytest.raises(ValueError, match="positive integer"):
    retrieval_metrics(good, good, keys, keys, ks=(0, 1))
  with pytest.raises(ValueError, match=r"emb_b .*row 2"):
    modality_gap(good, bad)
  with pytest.raises(ValueError, match="different embedding dimensions"):
    modality_gap(good, np.ones((2, 4)))
  with pytest.raises(ValueError, match="same shape"):
    mean_cosine(good, good[:2])
  with pytest.raises(ValueError, match=r"emb .*row 2"):
    silhouette_cosine(bad, [0, 0, 1, 1])
  with pytest.raises(ValueError, match="labels"):
    silhouette_cosine(np.random.default_rng(0).normal(size=(4, 3)), [0, 0, 0, 0])
  with pytest.raises(ValueError, match="zero vector"):
    mean_predictor_cosine(np.array([[1.0, 0.0], [-1.0, 0.0]]), good[:, :2])


# --------------------------------------------------------------------------- geometry


def test_modality_gap_known_values():
  rng = np.random.default_rng(6)
  emb = rng.normal(size=(50, 8))
  assert modality_gap(emb, emb) == pytest.approx(0.0, abs=1e-12)
  # scaling rows does not matter (rows are normalised)
  assert modality_gap(emb, emb * rng.uniform(0.1, 10, size=(50, 1))) == pytest.approx(
    0.0, abs=1e-12
  )
  direction = np.zeros(8)
  direction[0] = 1.0
  cluster_a = direction + 1e-9 * rng.normal(size=(30, 8))
  assert modality_gap(cluster_a, -cluster_a[:20]) == pytest.approx(2.0, abs=1e-6)
  # orthogonal unit clusters -> sqrt(2)
  other = np.zeros((10, 8))
  other[:, 1] = 3.0
  assert modality_gap(np.tile(direction, (5, 1)), other) == pytest.approx(np.sqrt(2.0))


def test_silhouette_matches_sklearn():
  from sklearn.metrics import silhouette_score

  rng = np.random.default_rng(7)
  emb, labels = _clustered(rng, 40, 5, 16, spread=1.0)
  emb = emb.astype(np.float64)
  ref = silhouette_score(emb, labels, metric="cosine")
  for chunk in (7, 1024):
    assert silhouette_cosine(emb, labels, chunk_size=chunk) == pytest.approx(ref, abs=1e-6)
  # singleton cluster scores 0 in both
  labels_single = labels.copy()
  labels_single[0] = 42
  assert silhouette_cosine(emb, labels_single) == pytest.approx(
    silhouette_score(emb, labels_single, metric="cosine"), abs=1e-6
  )
  # subsampling: equals sklearn on the same subset
  idx = np.random.default_rng(3).choice(emb.shape[0], size=120, replace=False)
  assert silhouette_cosine(emb, labels, sample_size=120, seed=3) == pytest.approx(
    silhouette_score(emb[idx], labels[idx], metric="cosine"), abs=1e-6
  )


def test_mean_cosine_and_mean_predictor():
  rng = np.random.default_rng(8)
  target = rng.normal(size=(20, 5))
  assert mean_cosine(target, 3.0 * target) == pytest.approx(1.0)
  assert mean_cosine(target, -target) == pytest.approx(-1.0)
  pred = rng.normal(size=(20, 5))
  ref = np.mean([p @ t / np.linalg.norm(p) / np.linalg.norm(t) for p, t in zip(pred, target)])
  assert mean_cosine(pred, target) == pytest.approx(ref)
  train = np.array([[1.0, 1.0], [3.0, 1.0]])  # mean (2, 1)
  tgt = np.array([[2.0, 1.0], [-1.0, 2.0]])  # cos 1 and cos 0
  assert mean_predictor_cosine(train, tgt) == pytest.approx(0.5)


def test_fast_descending_order_equals_stable_argsort():

  rng = np.random.default_rng(9)
  scores = rng.normal(size=(20, 300)).astype(np.float32)
  scores[:, :50] = scores[:, 50:100]  # many exact ties
  scores[:, 100:110] = np.round(scores[:, 100:110])  # includes -0.0 / 0.0
  scores[0, :4] = [0.0, -0.0, -np.inf, np.inf]
  expected = np.argsort(-scores, axis=1, kind="stable")
  np.testing.assert_array_equal(_descending_order(scores), expected)
  np.testing.assert_array_equal(_descending_order(scores.astype(np.float64)), expected)
