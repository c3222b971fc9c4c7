"""Evaluation metrics for cross-modal alignment and retrieval.

Pure functions over explicit numpy arrays; only numpy is required.

Retrieval conventions (shared by :func:`retrieval_metrics`,
:func:`recall_at_k_curve` and :func:`chance_retrieval_metrics`):

* Scores are cosine similarities: query and gallery rows are L2-normalised
  inside, then ``score[i, j] = <q_i, g_j>``.
* Gallery item ``j`` is relevant to query ``i`` iff
  ``query_keys[i] == gallery_keys[j]``.  Keys are class labels (class-level
  retrieval) or instance ids (instance-level retrieval).
* ``exclude_self=True`` (query and gallery are the same set) removes gallery
  item ``i`` from query ``i``'s ranking; the gallery size for every query is
  then ``n_gallery - 1``.
* Ranking: the gallery is ordered by a *stable* sort on ``-score``, so tied
  scores are ordered by increasing gallery index.  Scores are computed in
  float32 when both inputs are float32 (float64 otherwise), and "tied" means
  exactly equal in that precision.  Ranks are 1-based.  This is
  deterministic, but note that for exactly tied scores the result depends on
  gallery order (e.g. if every embedding is identical, a relevant item at
  gallery index 0 is always ranked first).
* Queries without any relevant gallery item are skipped and counted in
  ``n_skipped``; if every query is skipped a ValueError is raised.
* ``R@k`` is the hit rate: the fraction of (non-skipped) queries with at least
  one relevant item among the top ``k``.  ``mAP`` is the mean over queries of
  the average precision over the full ranking.  ``median_rank`` and
  ``mean_rank`` are the median / mean over queries of the 1-based rank of the
  *first* relevant item.
"""

from __future__ import annotations

from typing import Any, Sequence
import numpy as np
from graphbridge.evaluation.ranks import _first_rank_and_ap, _first_rank_and_ap_levels
from graphbridge.evaluation.ranks import _relevant_counts


__all__ = [
  "retrieval_metrics",
  "retrieval_metrics_by_level",
  "recall_at_k_curve",
  "chance_retrieval_metrics",
]


def _as_embeddings(name: str, array: Any) -> np.ndarray:
  """Validate a ``[n, d]`` embedding matrix and return it as a float array.

  Checks: 2-D, non-empty in both dimensions, numeric, every entry finite,
  no zero-norm row.  Raises ValueError naming ``name`` and the first bad row.
  """
  arr = np.asarray(array)
  if arr.ndim != 2:
    raise ValueError(f"{name} must be a 2-D array [n, d]; got shape {arr.shape}")
  if arr.shape[0] == 0 or arr.shape[1] == 0:
    raise ValueError(f"{name} is empty (shape {arr.shape}); need at least one row and one column")
  if arr.dtype == bool or not (
    np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
  ):
    raise ValueError(f"{name} must hold real numbers; got dtype {arr.dtype}")
  if not np.issubdtype(arr.dtype, np.floating):
    arr = arr.astype(np.float64)
  finite_rows = np.isfinite(arr).all(axis=1)
  if not finite_rows.all():
    bad = int(np.argmin(finite_rows))
    raise ValueError(
      f"{name} has non-finite values (NaN or inf) in row {bad} "
      f"({int((~finite_rows).sum())} bad row(s) in total)"
    )
  if arr.dtype == np.float32:  # finite float32 rows: norm 0 (in float64) iff every entry is 0
    zero_rows = ~arr.any(axis=1)
  else:
    zero_rows = np.linalg.norm(arr.astype(np.float64), axis=1) == 0.0
  if zero_rows.any():
    bad = int(np.argmax(zero_rows))
    raise ValueError(
      f"{name} has a zero-norm row at index {bad} "
      f"({int(zero_rows.sum())} zero row(s) in total); cosine similarity is undefined for it"
    )
  return arr


def _as_keys(name: str, keys: Any, expected_len: int, against: str) -> np.ndarray:
  arr = np.asarray(keys)
  if arr.ndim != 1:
    raise ValueError(f"{name} must be a 1-D array of keys; got shape {arr.shape}")
  if arr.shape[0] != expected_len:
    raise ValueError(
      f"{name} has {arr.shape[0]} entries but {against} has {expected_len} rows; "
      "they must match one to one"
    )
  return arr


def _check_same_dim(name_a: str, a: np.ndarray, name_b: str, b: np.ndarray) -> None:
  if a.shape[1] != b.shape[1]:
    raise ValueError(
      f"{name_a} and {name_b} have different embedding dimensions ({a.shape[1]} vs {b.shape[1]})"
    )


def _as_ks(ks: Sequence[int]) -> tuple[int, ...]:
  ks_tuple = tuple(ks)
  if len(ks_tuple) == 0:
    raise ValueError("ks is empty; give at least one cutoff k (e.g. ks=(1, 5, 10))")
  out = []
  for k in ks_tuple:
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 1:
      raise ValueError(f"every k in ks must be a positive integer; got {k!r}")
    out.append(int(k))
  return tuple(out)


def _check_positive_int(name: str, value: Any) -> int:
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name} must be a positive integer; got {value!r}")
  return int(value)


def _validate_retrieval_inputs(query, gallery, query_keys, gallery_keys, exclude_self):
  query = _as_embeddings("query", query)
  gallery = _as_embeddings("gallery", gallery)
  _check_same_dim("query", query, "gallery", gallery)
  query_keys = _as_keys("query_keys", query_keys, query.shape[0], "query")
  gallery_keys = _as_keys("gallery_keys", gallery_keys, gallery.shape[0], "gallery")
  if exclude_self and query.shape[0] != gallery.shape[0]:
    raise ValueError(
      "exclude_self=True needs query and gallery to be the same set, but they have "
      f"{query.shape[0]} and {gallery.shape[0]} rows"
    )
  return query, gallery, query_keys, gallery_keys


def retrieval_metrics(
  query: Any,
  gallery: Any,
  query_keys: Any,
  gallery_keys: Any,
  ks: Sequence[int] = (1, 5, 10),
  exclude_self: bool = False,
  chunk_size: int | None = None,
) -> dict[str, float | int]:
  """Cosine-similarity retrieval metrics (see the module docstring for conventions).

  Args:
    query: [n_query, d] float embeddings.
    gallery: [n_gallery, d] float embeddings.
    query_keys: [n_query] keys (ints: class labels or instance ids).
    gallery_keys: [n_gallery] keys; item j is relevant to query i iff
      ``query_keys[i] == gallery_keys[j]``.
    ks: cutoffs for ``R@k`` (hit rate at k).
    exclude_self: remove gallery item i from query i's ranking (query and
      gallery are the same set); requires ``n_query == n_gallery``.
    chunk_size: queries scored at a time (None: as many as fit a block of
      ``SCORE_BLOCK_ELEMENTS`` scores, 64 MB as float32). float32 inputs are
      scored with jitted matmuls on JAX's default device, ranks counted
      (instance level) or rows sorted (class level) per chunk; other dtypes
      use the NumPy reference in float64 (about ``chunk_size * n_gallery *
      20`` bytes per chunk). Both are exact.

  Ties are broken by a stable sort on ``-score`` (lower gallery index first).

  Returns:
    dict with ``"R@{k}"`` for each k (fraction of queries with a relevant
    item in the top k), ``"mAP"``, ``"median_rank"``, ``"mean_rank"``
    (1-based rank of the first relevant item), ``"n_queries"`` (queries
    evaluated), ``"n_skipped"`` (queries without any relevant item) and
    ``"n_gallery"``.

  Raises:
    ValueError: on malformed inputs, or if no query has a relevant item.
  """
  ks = _as_ks(ks)
  if chunk_size is not None:
    chunk_size = _check_positive_int("chunk_size", chunk_size)
  query, gallery, query_keys, gallery_keys = _validate_retrieval_inputs(
    query, gallery, query_keys, gallery_keys, exclude_self
  )
  first_rank, average_precision, n_relevant = _first_rank_and_ap(
    query, gallery, query_keys, gallery_keys, exclude_self, chunk_size
  )
  return _summarise(first_rank, average_precision, n_relevant, ks, exclude_self, gallery.shape[0])


def retrieval_metrics_by_level(
  query: Any,
  gallery: Any,
  keys: dict,
  ks: Sequence[int] = (1, 5, 10),
  exclude_self: bool = False,
  chunk_size: int | None = None,
) -> dict[str, dict[str, float | int]]:
  """:func:`retrieval_metrics` for several relevance levels of one query/gallery pair at the
  cost of one: the scores are computed once per chunk and ranked for every level.

  Args:
    keys: {level: (query_keys [n_query], gallery_keys [n_gallery])}, e.g.
      {"instance": (ids_q, ids_g), "class": (labels_q, labels_g)}.
    Others as :func:`retrieval_metrics`.

  Returns:
    {level: the dict :func:`retrieval_metrics` returns}, equal to calling it per level.
  """
  ks = _as_ks(ks)
  if chunk_size is not None:
    chunk_size = _check_positive_int("chunk_size", chunk_size)
  checked = {}
  for level, (query_keys, gallery_keys) in keys.items():
    if not checked:  # the embeddings are checked once
      q, g, qk, gk = _validate_retrieval_inputs(
        query, gallery, query_keys, gallery_keys, exclude_self
      )
    else:
      qk = _as_keys(f"{level} query_keys", query_keys, q.shape[0], "query")
      gk = _as_keys(f"{level} gallery_keys", gallery_keys, g.shape[0], "gallery")
    checked[level] = (qk, gk)
  if not checked:
    return {}
  parts = _first_rank_and_ap_levels(q, g, list(checked.values()), exclude_self, chunk_size)
  return {
    level: _summarise(*part, ks, exclude_self, g.shape[0]) for level, part in zip(checked, parts)
  }


def _summarise(first_rank, average_precision, n_relevant, ks, exclude_self, n_gallery):
  kept = n_relevant > 0
  n_kept = int(kept.sum())
  if n_kept == 0:
    raise ValueError(
      "no query has a relevant gallery item (no query key occurs among the gallery keys"
      + (" other than the query itself" if exclude_self else "")
      + "); check that query_keys and gallery_keys use the same ids"
    )
  ranks = first_rank[kept]
  result: dict[str, float | int] = {}
  for k in ks:
    result[f"R@{k}"] = float(np.mean(ranks <= k))
  result["mAP"] = float(np.mean(average_precision[kept]))
  result["median_rank"] = float(np.median(ranks))
  result["mean_rank"] = float(np.mean(ranks))
  result["n_queries"] = n_kept
  result["n_skipped"] = int(n_relevant.shape[0] - n_kept)
  result["n_gallery"] = int(n_gallery)
  return result


def recall_at_k_curve(
  query: Any,
  gallery: Any,
  query_keys: Any,
  gallery_keys: Any,
  max_k: int = 50,
  exclude_self: bool = False,
  chunk_size: int | None = None,
) -> np.ndarray:
  """Hit rate ``R@k`` for ``k = 1..max_k`` (same conventions as :func:`retrieval_metrics`).

  Args:
    query: [n_query, d]; gallery: [n_gallery, d]; query_keys: [n_query];
    gallery_keys: [n_gallery]; max_k: largest cutoff.

  Returns:
    [max_k] float64, entry ``k-1`` is the fraction of (non-skipped) queries
    with a relevant item in the top k; non-decreasing.
  """
  max_k = _check_positive_int("max_k", max_k)
  if chunk_size is not None:
    chunk_size = _check_positive_int("chunk_size", chunk_size)
  query, gallery, query_keys, gallery_keys = _validate_retrieval_inputs(
    query, gallery, query_keys, gallery_keys, exclude_self
  )
  first_rank, _, n_relevant = _first_rank_and_ap(
    query, gallery, query_keys, gallery_keys, exclude_self, chunk_size
  )
  kept = n_relevant > 0
  if not kept.any():
    raise ValueError(
      "no query has a relevant gallery item; check that query_keys and gallery_keys "
      "use the same ids"
    )
  ranks = first_rank[kept]
  counts = np.bincount(np.minimum(ranks, max_k + 1), minlength=max_k + 2)[1 : max_k + 1]
  return np.cumsum(counts) / ranks.size


def chance_retrieval_metrics(
  query_keys: Any,
  gallery_keys: Any,
  ks: Sequence[int] = (1, 5, 10),
  exclude_self: bool = False,
) -> dict[str, float | int]:
  """Exact expected retrieval metrics under a uniformly random ranking.

  For a query with R relevant items among N gallery items (N = n_gallery,
  or n_gallery - 1 with ``exclude_self``):

  * ``E[hit@k] = 1 - C(N-R, k) / C(N, k)``
  * ``E[AP] = (1/R) sum_{k=1..N} (R/N) (1 + (k-1)(R-1)/(N-1)) / k
    = (H_N + (R-1)(N - H_N)/(N-1)) / N`` with ``H_N`` the N-th harmonic number
  * ``E[first relevant rank] = (N+1)/(R+1)``

  ``R@k``, ``mAP`` and ``mean_rank`` average these over queries (queries
  without relevant items are skipped, as in :func:`retrieval_metrics`).
  ``median_rank`` is the median of the first-relevant-rank distribution
  pooled over queries (smallest r with pooled P(rank <= r) >= 1/2), i.e.
  what the median rank of a large random run converges to.

  Args:
    query_keys: [n_query] keys; gallery_keys: [n_gallery] keys.
    ks: cutoffs; exclude_self: as in :func:`retrieval_metrics` (requires
      ``n_query == n_gallery``).

  Returns:
    dict with the same keys as :func:`retrieval_metrics`.
  """
  ks = _as_ks(ks)
  query_keys = np.asarray(query_keys)
  gallery_keys = np.asarray(gallery_keys)
  for name, keys in (("query_keys", query_keys), ("gallery_keys", gallery_keys)):
    if keys.ndim != 1:
      raise ValueError(f"{name} must be a 1-D array of keys; got shape {keys.shape}")
    if keys.shape[0] == 0:
      raise ValueError(f"{name} is empty")
  if exclude_self and query_keys.shape[0] != gallery_keys.shape[0]:
    raise ValueError(
      "exclude_self=True needs query and gallery to be the same set, but query_keys has "
      f"{query_keys.shape[0]} entries and gallery_keys {gallery_keys.shape[0]}"
    )
  n_relevant_all, n_items = _relevant_counts(query_keys, gallery_keys, exclude_self)
  kept = n_relevant_all > 0
  if not kept.any():
    raise ValueError(
      "no query has a relevant gallery item; check that query_keys and gallery_keys "
      "use the same ids"
    )
  n_relevant = n_relevant_all[kept]
  n_kept = n_relevant.size
  big_n = float(n_items)

  # Survival function of the first relevant rank, pooled over queries:
  # P(first > r) = C(N-R, r) / C(N, r) = prod_{t<r} (N-R-t)/(N-t).
  unique_r, r_counts = np.unique(n_relevant, return_counts=True)
  t = np.arange(n_items, dtype=np.float64)
  pooled_survival = np.zeros(n_items + 1)  # index r -> P(first rank > r)
  for r_value, weight in zip(unique_r, r_counts):
    factors = np.clip((big_n - r_value - t) / (big_n - t), 0.0, None)
    survival = np.concatenate(([1.0], np.cumprod(factors)))
    pooled_survival += weight * survival
  pooled_survival /= n_kept

  result: dict[str, float | int] = {}
  for k in ks:
    result[f"R@{k}"] = float(1.0 - pooled_survival[min(k, n_items)])

  harmonic = float(np.sum(1.0 / np.arange(1, n_items + 1)))
  if n_items > 1:
    expected_ap = (harmonic + (n_relevant - 1) * (big_n - harmonic) / (big_n - 1)) / big_n
  else:
    expected_ap = np.ones(n_kept)
  result["mAP"] = float(np.mean(expected_ap))
  pooled_cdf = 1.0 - pooled_survival
  result["median_rank"] = float(np.argmax(pooled_cdf >= 0.5 - 1e-12))
  result["mean_rank"] = float(np.mean((big_n + 1.0) / (n_relevant + 1.0)))
  result["n_queries"] = int(n_kept)
  result["n_skipped"] = int(query_keys.shape[0] - n_kept)
  result["n_gallery"] = int(gallery_keys.shape[0])
  return result
