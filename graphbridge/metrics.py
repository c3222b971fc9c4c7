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


def unit_rows(x: np.ndarray) -> np.ndarray:
  """x / its row norms (rows of norm 0 stay 0), in x's dtype."""
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

__all__ = [
    "retrieval_metrics",
    "retrieval_metrics_by_level",
    "recall_at_k_curve",
    "chance_retrieval_metrics",
    "modality_gap",
    "unit_centroid",
    "centroid_gap",
    "silhouette_cosine",
    "mean_cosine",
    "mean_predictor_cosine",
    "mean_direction",
    "mean_direction_cosine",
]


# ---------------------------------------------------------------------------
# validation helpers
# ---------------------------------------------------------------------------


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


def _l2_normalise(arr: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation; keeps float32 as float32, else float64.

    Norms are computed in float64 so large float32 values do not overflow.
    """
    dtype = np.float32 if arr.dtype == np.float32 else np.float64
    wide = arr.astype(np.float64)
    wide /= np.linalg.norm(wide, axis=1, keepdims=True)
    return wide.astype(dtype, copy=False)


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
            f"{name_a} and {name_b} have different embedding dimensions "
            f"({a.shape[1]} vs {b.shape[1]})"
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


# ---------------------------------------------------------------------------
# retrieval
# ---------------------------------------------------------------------------


def _descending_order(scores: np.ndarray) -> np.ndarray:
    """Row-wise order of ``scores`` [c, n] by decreasing score, ties by increasing index.

    Identical to ``np.argsort(-scores, axis=1, kind="stable")``.  For float32
    scores it sorts packed int64 keys (orderable score bits in the high 32
    bits, column index in the low 32), which is markedly faster than a stable
    argsort; other dtypes use the stable argsort.
    """
    n_cols = scores.shape[1]
    if scores.dtype != np.float32 or n_cols >= 2**31:
        return np.argsort(-scores, axis=1, kind="stable")
    negated = -scores + np.float32(0.0)  # + 0 turns -0.0 into +0.0 so they tie
    bits = negated.view(np.int32)
    # Map IEEE bits to integers with the same order as the floats.
    keys = np.where(bits < 0, bits ^ np.int32(0x7FFFFFFF), bits).astype(np.int64)
    del negated, bits
    keys <<= 32
    keys |= np.arange(n_cols, dtype=np.int64)
    keys.sort(axis=1)
    keys &= 0xFFFFFFFF
    return keys


def _first_rank_and_ap_numpy(
    query: np.ndarray,
    gallery: np.ndarray,
    query_keys: np.ndarray,
    gallery_keys: np.ndarray,
    exclude_self: bool,
    chunk_size: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NumPy reference of :func:`_first_rank_and_ap`: a stable sort of every query's row.

    Returns:
      first_rank: [n_query] int64, 1-based rank of the first relevant item
        (0 where the query has no relevant item).
      average_precision: [n_query] float64 (NaN where no relevant item).
      n_relevant: [n_query] int64, relevant items in the query's gallery.

    Peak memory is about ``chunk_size * n_gallery * 20`` bytes (float32
    scores, int64 sort keys, bool relevance).
    """
    query_unit = _l2_normalise(query)
    gallery_unit = _l2_normalise(gallery)
    dtype = np.result_type(query_unit.dtype, gallery_unit.dtype)
    query_unit = query_unit.astype(dtype, copy=False)
    gallery_unit = gallery_unit.astype(dtype, copy=False)

    n_query = query.shape[0]
    first_rank = np.zeros(n_query, dtype=np.int64)
    average_precision = np.full(n_query, np.nan, dtype=np.float64)
    n_relevant = np.zeros(n_query, dtype=np.int64)

    for start in range(0, n_query, chunk_size):
        stop = min(start + chunk_size, n_query)
        rows = np.arange(stop - start)
        scores = query_unit[start:stop] @ gallery_unit.T  # [c, n_g]
        relevant = query_keys[start:stop, None] == gallery_keys[None, :]  # [c, n_g]
        if exclude_self:
            # The query's own item goes to the very end and is never relevant,
            # so it affects neither ranks nor precision of the others.
            scores[rows, rows + start] = -np.inf
            relevant[rows, rows + start] = False
        order = _descending_order(scores)
        del scores
        sorted_relevant = np.take_along_axis(relevant, order, axis=1)
        del order, relevant

        counts = sorted_relevant.sum(axis=1)
        hit_rows, hit_cols = np.nonzero(sorted_relevant)  # row-major: ranks ascend per row
        del sorted_relevant
        row_start = np.concatenate(([0], np.cumsum(counts)[:-1]))
        ordinal = np.arange(hit_rows.size) - row_start[hit_rows] + 1  # 1-based among relevant
        precision_at_hit = ordinal / (hit_cols + 1.0)
        ap_sum = np.bincount(hit_rows, weights=precision_at_hit, minlength=stop - start)

        has_rel = counts > 0
        chunk_first = np.zeros(stop - start, dtype=np.int64)
        chunk_first[has_rel] = hit_cols[row_start[has_rel]] + 1
        chunk_ap = np.full(stop - start, np.nan)
        chunk_ap[has_rel] = ap_sum[has_rel] / counts[has_rel]

        first_rank[start:stop] = chunk_first
        average_precision[start:stop] = chunk_ap
        n_relevant[start:stop] = counts
    return first_rank, average_precision, n_relevant


# Elements of one [chunk, n_gallery] score block on the JAX path (64 MB as float32); the chunk of
# queries is chosen from it, so memory is bounded by the chunk, not by the gallery squared.
SCORE_BLOCK_ELEMENTS = 1 << 24
# Up to this many relevant items per query (instance-level retrieval), ranks are counted
# (rank = 1 + items scored higher, ties by gallery index); above it (class level) rows are sorted.
COUNT_RANKS_UP_TO = 16


def _jax_kernels():
    """The jitted chunk kernels (built on first use; jax is imported lazily)."""
    global _KERNELS
    if _KERNELS is not None:
        return _KERNELS
    import functools

    import jax
    import jax.numpy as jnp

    def scores_of(q, g, offset, exclude_self):
        s = jnp.dot(q, g.T, preferred_element_type=jnp.float32)  # [c, n_g]
        own = None
        if exclude_self:
            cols = jnp.arange(s.shape[1], dtype=jnp.int32)
            own = cols[None, :] == (offset + jnp.arange(s.shape[0], dtype=jnp.int32))[:, None]
            s = jnp.where(own, -jnp.inf, s)
        return s, own

    @jax.jit
    def count_ranks(s, rel_idx, rel_valid):
        """s: [c, n] scores; rel_idx/rel_valid: [c, R] relevant gallery columns -> [c, R] their
        1-based ranks, ascending (int32 max where not valid)."""
        cols = jnp.arange(s.shape[1], dtype=jnp.int32)[None, :]
        t = jnp.take_along_axis(s, rel_idx, axis=1)  # [c, R] scores of the relevant items
        ranks = []
        for r in range(rel_idx.shape[1]):
            tr, jr = t[:, r:r + 1], rel_idx[:, r:r + 1]
            above = (s > tr) | ((s == tr) & (cols < jr))  # stable order: ties by gallery index
            ranks.append(1 + jnp.sum(above, axis=1, dtype=jnp.int32))
        ranks = jnp.where(rel_valid, jnp.stack(ranks, axis=1), jnp.iinfo(jnp.int32).max)
        return jnp.sort(ranks, axis=1)

    @functools.partial(jax.jit, static_argnames=("exclude_self", "width"))
    def sorted_ranks(s, q_code, g_code, offset, exclude_self, width):
        """Keys as int codes -> [c, width] ranks of the relevant items, ascending (padded with
        int32 max), from one stable sort per row (for accelerators)."""
        rel = q_code[:, None] == g_code[None, :]
        if exclude_self:
            cols = jnp.arange(s.shape[1], dtype=jnp.int32)
            rel = rel & (cols[None, :] != (offset + jnp.arange(s.shape[0], dtype=jnp.int32))[:, None])
        neg = -s + 0.0  # + 0 turns -0.0 into +0.0 so they tie, as in the NumPy reference
        _, rel_sorted = jax.lax.sort((neg, rel.astype(jnp.int32)), dimension=1, is_stable=True,
                                     num_keys=1)
        hits = jnp.cumsum(rel_sorted, axis=1)
        slot = jnp.where(rel_sorted > 0, hits - 1, width)  # width: out of range, dropped
        position = jnp.broadcast_to(jnp.arange(1, s.shape[1] + 1, dtype=jnp.int32), s.shape)
        ranks = jnp.full((s.shape[0], width), jnp.iinfo(jnp.int32).max, jnp.int32)
        return ranks.at[jnp.arange(s.shape[0])[:, None], slot].set(position, mode="drop")

    @functools.partial(jax.jit, static_argnames=("exclude_self",))
    def scores(q, g, offset, exclude_self):
        return scores_of(q, g, offset, exclude_self)[0]

    _KERNELS = (count_ranks, sorted_ranks, scores)
    return _KERNELS


_KERNELS = None


def _relevant_columns(query_keys, gallery_keys, exclude_self):
    """[n_q, R] gallery columns relevant to each query (padded) and [n_q, R] validity."""
    order = np.argsort(gallery_keys, kind="stable")
    uniq, start, counts = np.unique(gallery_keys[order], return_index=True, return_counts=True)
    pos = np.minimum(np.searchsorted(uniq, query_keys), max(uniq.size - 1, 0))
    found = uniq[pos] == query_keys
    count = np.where(found, counts[pos], 0)
    width = max(int(count.max()), 1)
    r = np.arange(width)[None, :]
    valid = r < count[:, None]
    idx = order[np.minimum(start[pos][:, None] + r, order.size - 1)]
    if exclude_self:
        valid &= idx != np.arange(query_keys.shape[0])[:, None]
    return np.where(valid, idx, 0).astype(np.int32), valid


def _ranks_by_sorted_scores(block: np.ndarray, rel_idx: np.ndarray, rel_valid: np.ndarray) -> np.ndarray:
    """:func:`_ranks_by_sorted_rows` over row blocks in threads (NumPy sorts without the GIL)."""
    import os
    from concurrent.futures import ThreadPoolExecutor
    threads = min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
                  max(1, block.shape[0] // 64))
    if threads <= 1:
        return _ranks_by_sorted_rows(block, rel_idx, rel_valid)
    bounds = np.linspace(0, block.shape[0], threads + 1).astype(int)
    with ThreadPoolExecutor(threads) as pool:
        parts = list(pool.map(lambda i: _ranks_by_sorted_rows(block[bounds[i]:bounds[i + 1]],
                                                                rel_idx[bounds[i]:bounds[i + 1]],
                                                                rel_valid[bounds[i]:bounds[i + 1]]),
                              range(threads)))
    return np.concatenate(parts)


def _ranks_by_sorted_rows(block: np.ndarray, rel_idx: np.ndarray, rel_valid: np.ndarray) -> np.ndarray:
    """block: [c, n] float32 scores; rel_idx/rel_valid: [c, R] -> [c, R] 1-based ranks of the
    relevant items in each row's stable descending order (int32 max where not valid), ascending.

    One float32 sort per row (NumPy's SIMD sort, no index payload), then each relevant item's
    rank is 1 + the items scored strictly higher (a binary search) + the items tied with it at a
    lower gallery index (counted directly; ties are rare)."""
    neg = -block + np.float32(0.0)  # + 0 turns -0.0 into +0.0 so they tie
    thresholds = np.take_along_axis(neg, rel_idx, axis=1)  # [c, R]
    neg.sort(axis=1)
    above = np.empty(thresholds.shape, np.int64)
    ties = np.empty(thresholds.shape, np.int64)
    for i in range(neg.shape[0]):  # per row: the row's sorted scores stay in cache
        above[i] = np.searchsorted(neg[i], thresholds[i], side="left")
        ties[i] = np.searchsorted(neg[i], thresholds[i], side="right") - above[i]
    del neg
    return _break_ties_and_sort(above + 1, ties, block, rel_idx, rel_valid)


def _break_ties_and_sort(ranks: np.ndarray, tied: np.ndarray, block: np.ndarray, rel_idx: np.ndarray,
                         rel_valid: np.ndarray) -> np.ndarray:
    """ranks [c, R] (1 + items scored strictly higher), tied [c, R] (items scored equal, itself
    included) -> final ranks: + the tied items at a lower gallery index (counted directly; exact ties
    are rare), int32 max where not valid, ascending per row."""
    for i, r in zip(*np.nonzero((tied > 1) & rel_valid)):  # an exact tie: count lower indices
        j = rel_idx[i, r]
        ranks[i, r] += int(np.count_nonzero(block[i, :j] == block[i, j]))
    ranks = np.where(rel_valid, ranks, np.iinfo(np.int32).max)
    ranks.sort(axis=1)
    return ranks


def _orderable(scores: np.ndarray) -> np.ndarray:
    """float32 scores -> int64 in [0, 2^32), decreasing as the score increases (so an ascending
    sort is the descending score order); -0.0 and +0.0 map to the same value."""
    bits = (-scores + np.float32(0.0)).view(np.int32)  # + 0 turns -0.0 into +0.0 so they tie
    return np.where(bits < 0, bits ^ np.int32(0x7FFFFFFF), bits).astype(np.int64) + (1 << 31)


def _ranks_in_range(block: np.ndarray, inside: np.ndarray, n_above: np.ndarray, rel_idx: np.ndarray,
                    rel_valid: np.ndarray) -> np.ndarray:
    """:func:`_ranks_by_sorted_rows` without sorting rows: only the items scored within the
    range of the row's relevant items can lie between two of them, so only those are sorted.

    block: [c, n] float32 scores; inside: [c, n] bool, scored within [lo, hi] (lo, hi: the row's
    lowest and highest relevant score); n_above: [c] items scored above hi; rel_idx/rel_valid:
    [c, R]. Returns [c, R] 1-based ranks, ascending (int32 max where not valid). A relevant item's
    rank is 1 + n_above + the inside items scored higher + those tied with it at a lower index."""
    c, n = block.shape
    flat = np.flatnonzero(inside)  # row-major: by row, then by gallery index
    keys = ((flat // n) << 32) | _orderable(block.reshape(-1)[flat])
    keys.sort()
    rows = np.arange(c)[:, None]
    key_rel = (rows << 32) | _orderable(np.take_along_axis(block, rel_idx, axis=1))
    higher = np.searchsorted(keys, key_rel, side="left")
    tied = np.searchsorted(keys, key_rel, side="right") - higher
    ranks = 1 + n_above[:, None].astype(np.int64) + higher - np.searchsorted(keys, rows << 32, side="left")
    return _break_ties_and_sort(ranks, tied, block, rel_idx, rel_valid)


# Class level on CPU: rows with at most this fraction of the gallery scored between their lowest
# and highest relevant item rank from those items alone (_ranks_in_range); other rows are sorted.
IN_RANGE_UP_TO = 0.25


def _first_rank_and_ap(
    query: np.ndarray,
    gallery: np.ndarray,
    query_keys: np.ndarray,
    gallery_keys: np.ndarray,
    exclude_self: bool,
    chunk_size: int | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-query first-relevant rank, average precision and relevant count (exact).

    Returns ([n_query] int64 first rank (0: no relevant item), [n_query] float64 AP (NaN: none),
    [n_query] int64 relevant count). See :func:`_first_rank_and_ap_levels`."""
    return _first_rank_and_ap_levels(query, gallery, [(query_keys, gallery_keys)], exclude_self,
                                     chunk_size)[0]


def _first_rank_and_ap_levels(query, gallery, key_pairs, exclude_self, chunk_size):
    """(first rank, AP, relevant count) for each (query_keys, gallery_keys) in `key_pairs`, from
    one pass of scores (the levels of one route share every matmul).

    float32 inputs run on JAX's default device in chunks of queries: one jitted matmul per chunk
    (the next chunk's is dispatched before this one is ranked). On CPU every level is ranked on
    the host (_ranks_on_host): a relevant item's rank is 1 + the items scored higher + those tied
    with it at a lower gallery index, counted from the items scored within the range of the row's
    relevant items, or from one sort of the row where that range holds much of the gallery. On
    accelerators, where every query has at most COUNT_RANKS_UP_TO relevant items (instance level),
    ranks are counted on the device, otherwise each row is sorted with lax.sort. AP comes from the
    ranks in float64 on the host. Peak memory is a few [chunk, n_gallery] blocks (chunk:
    `chunk_size` queries, or as many as fit SCORE_BLOCK_ELEMENTS). Other dtypes use the NumPy
    reference in float64."""
    if query.dtype != np.float32 or gallery.dtype != np.float32:
        return [_first_rank_and_ap_numpy(query, gallery, qk, gk, exclude_self, chunk_size or 1024)
                for qk, gk in key_pairs]
    import jax
    import jax.numpy as jnp

    count_ranks, sorted_ranks, scores = _jax_kernels()
    host_sort = jax.default_backend() == "cpu"  # NumPy's SIMD float32 sort beats XLA's on CPU
    query_unit = _l2_normalise(query)
    gallery_unit = _l2_normalise(gallery)
    if not host_sort:
        gallery_unit = jnp.asarray(gallery_unit)
    n_query, n_gallery = query.shape[0], gallery.shape[0]
    chunk = chunk_size or max(1, SCORE_BLOCK_ELEMENTS // n_gallery)
    chunk = max(1, min(chunk, n_query))
    levels = []
    for query_keys, gallery_keys in key_pairs:
        n_relevant, _ = _relevant_counts(query_keys, gallery_keys, exclude_self)
        level = {"n_relevant": n_relevant, "width": max(int(n_relevant.max()), 1),
                 "counting": int(n_relevant.max()) <= COUNT_RANKS_UP_TO,
                 "first": np.zeros(n_query, np.int64), "ap": np.full(n_query, np.nan)}
        if level["counting"] or host_sort:
            level["rel_idx"], level["rel_valid"] = _relevant_columns(query_keys, gallery_keys, exclude_self)
        else:
            codes = np.unique(np.concatenate([query_keys, gallery_keys]))
            level["q_code"] = np.searchsorted(codes, query_keys).astype(np.int32)
            level["g_code"] = jnp.asarray(np.searchsorted(codes, gallery_keys).astype(np.int32))
        levels.append(level)

    def finish(level, start, stop, ranks):
        width = level["width"]
        ranks = np.asarray(ranks)[: stop - start, :width].astype(np.float64)
        n_rel = level["n_relevant"][start:stop]
        ordinal = np.arange(1, width + 1)[None, :]
        with np.errstate(invalid="ignore", divide="ignore"):
            level["ap"][start:stop] = np.where(ordinal <= n_rel[:, None], ordinal / ranks, 0.0).sum(axis=1) / n_rel
        level["first"][start:stop] = np.where(n_rel > 0, ranks[:, 0], 0)

    def padded(x, start, stop, fill=0):  # the last chunk is padded so every chunk has one shape
        pad = chunk - (stop - start)
        return np.pad(x[start:stop], [(0, pad)] + [(0, 0)] * (x.ndim - 1), constant_values=fill)

    def block_at(start):
        stop = min(start + chunk, n_query)
        if host_sort:  # NumPy's BLAS in a worker thread (it releases the GIL): faster than XLA's dot here
            return matmul_thread.submit(_host_scores, query_unit[start:stop], gallery_unit, start, exclude_self)
        return scores(padded(query_unit, start, stop), gallery_unit, np.int32(start), exclude_self=exclude_self)

    if host_sort:
        from concurrent.futures import ThreadPoolExecutor
        matmul_thread = ThreadPoolExecutor(1)
    try:  # the worker thread is shut down also on errors
        starts = list(range(0, n_query, chunk))
        upcoming = block_at(starts[0])
        for i, start in enumerate(starts):
            stop = min(start + chunk, n_query)
            block = upcoming
            if i + 1 < len(starts):  # dispatched now, so the next matmul runs while this block is ranked
                upcoming = block_at(starts[i + 1])
            if host_sort:
                host_block = block.result()
                for level in levels:
                    finish(level, start, stop, _ranks_on_host(host_block, level["rel_idx"][start:stop],
                                                              level["rel_valid"][start:stop]))
                continue
            for level in levels:
                if level["counting"]:
                    ranks = count_ranks(block, padded(level["rel_idx"], start, stop),
                                        padded(level["rel_valid"], start, stop, False))
                else:
                    ranks = sorted_ranks(block, padded(level["q_code"], start, stop, -1), level["g_code"],
                                         np.int32(start), exclude_self=exclude_self, width=level["width"])
                finish(level, start, stop, ranks)
    finally:
        if host_sort:
            matmul_thread.shutdown(wait=True, cancel_futures=True)
    return [(lv["first"], lv["ap"], lv["n_relevant"]) for lv in levels]


def _host_scores(query_unit: np.ndarray, gallery_unit: np.ndarray, offset: int, exclude_self: bool) -> np.ndarray:
    """[c, n_g] float32 cosine scores on the host (CPU path of _first_rank_and_ap_levels); with
    exclude_self, each query's own gallery item (index offset + row) scores -inf."""
    s = query_unit @ gallery_unit.T
    if exclude_self:
        rows = np.arange(s.shape[0])
        s[rows, offset + rows] = -np.inf
    return s


def _ranks_on_host(block: np.ndarray, rel_idx: np.ndarray, rel_valid: np.ndarray) -> np.ndarray:
    """block: [c, n] float32 scores; rel_idx/rel_valid: [c, R] -> [c, R] 1-based ranks of the
    relevant items (stable descending order), ascending, int32 max where not valid. CPU path.

    Rows in which at most IN_RANGE_UP_TO of the gallery scores within [lo, hi] (lo, hi: the
    row's lowest and highest relevant score; always so at instance level, and for any model that
    ranks a class's items near each other) rank from those items alone (_ranks_in_range); the
    other rows are sorted (_ranks_by_sorted_scores). Row halves run in two threads."""
    def part(lo_row, hi_row):
        b, idx, valid = block[lo_row:hi_row], rel_idx[lo_row:hi_row], rel_valid[lo_row:hi_row]
        t = np.take_along_axis(b, idx, axis=1)
        lo = np.where(valid, t, np.inf).min(axis=1, initial=np.inf).astype(np.float32)
        hi = np.where(valid, t, -np.inf).max(axis=1, initial=-np.inf).astype(np.float32)
        hi[~valid.any(axis=1)] = np.inf  # no relevant item: nothing inside, nothing above
        above = b > hi[:, None]
        inside = b >= lo[:, None]
        np.logical_xor(inside, above, out=inside)  # above is a subset of inside: lo <= hi
        n_above = np.count_nonzero(above, axis=1)
        few = np.count_nonzero(inside, axis=1) <= IN_RANGE_UP_TO * b.shape[1]
        if few.all():
            return _ranks_in_range(b, inside, n_above, idx, valid)
        ranks = np.empty(idx.shape, np.int64)
        if few.any():
            ranks[few] = _ranks_in_range(b[few], inside[few], n_above[few], idx[few], valid[few])
        many = ~few
        ranks[many] = _ranks_by_sorted_scores(b[many], idx[many], valid[many])
        return ranks

    c = block.shape[0]
    if c < 128:
        return part(0, c)
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(2) as pool:  # NumPy's comparisons and sorts run without the GIL
        halves = list(pool.map(lambda bounds: part(*bounds), [(0, c // 2), (c // 2, c)]))
    return np.concatenate(halves)


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
            q, g, qk, gk = _validate_retrieval_inputs(query, gallery, query_keys, gallery_keys, exclude_self)
        else:
            qk = _as_keys(f"{level} query_keys", query_keys, q.shape[0], "query")
            gk = _as_keys(f"{level} gallery_keys", gallery_keys, g.shape[0], "gallery")
        checked[level] = (qk, gk)
    if not checked:
        return {}
    parts = _first_rank_and_ap_levels(q, g, list(checked.values()), exclude_self, chunk_size)
    return {level: _summarise(*part, ks, exclude_self, g.shape[0]) for level, part in zip(checked, parts)}


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


def _relevant_counts(
    query_keys: np.ndarray, gallery_keys: np.ndarray, exclude_self: bool
) -> tuple[np.ndarray, int]:
    """[n_query] relevant counts per query and the per-query gallery size N."""
    unique_keys, gallery_counts = np.unique(gallery_keys, return_counts=True)
    pos = np.searchsorted(unique_keys, query_keys)
    pos_clipped = np.minimum(pos, unique_keys.size - 1)
    found = unique_keys[pos_clipped] == query_keys
    n_relevant = np.where(found, gallery_counts[pos_clipped], 0).astype(np.int64)
    n_gallery = gallery_keys.shape[0]
    if exclude_self:
        n_relevant = n_relevant - (query_keys == gallery_keys).astype(np.int64)
        n_gallery -= 1
    return n_relevant, n_gallery


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


# ---------------------------------------------------------------------------
# geometry
# ---------------------------------------------------------------------------


def unit_centroid(emb: Any, name: str = "emb") -> np.ndarray:
    """[d] float64 mean of the L2-normalised rows of emb [n, d] (validated); two of them give
    the modality gap (:func:`centroid_gap`), so a set compared with many others is reduced once."""
    return _l2_normalise(_as_embeddings(name, emb).astype(np.float64)).mean(axis=0)


def centroid_gap(centroid_a: np.ndarray, centroid_b: np.ndarray) -> float:
    """:func:`modality_gap` from two :func:`unit_centroid` vectors [d]."""
    if centroid_a.shape != centroid_b.shape:
        raise ValueError(
            f"emb_a and emb_b have different embedding dimensions "
            f"({centroid_a.shape[-1]} vs {centroid_b.shape[-1]})"
        )
    return float(np.linalg.norm(centroid_a - centroid_b))


def modality_gap(emb_a: Any, emb_b: Any) -> float:
    """Euclidean distance between the centroids of the L2-normalised rows.

    Liang et al. 2022, "Mind the Gap".  0 for identical sets, at most 2.

    Args:
      emb_a: [n_a, d] float; emb_b: [n_b, d] float.
    """
    emb_a = _as_embeddings("emb_a", emb_a)
    emb_b = _as_embeddings("emb_b", emb_b)
    _check_same_dim("emb_a", emb_a, "emb_b", emb_b)
    return centroid_gap(_l2_normalise(emb_a.astype(np.float64)).mean(axis=0),
                        _l2_normalise(emb_b.astype(np.float64)).mean(axis=0))


def silhouette_cosine(
    emb: Any,
    labels: Any,
    sample_size: int | None = None,
    seed: int = 0,
    chunk_size: int = 1024,
) -> float:
    """Mean silhouette coefficient with cosine distance ``1 - cos``.

    Matches ``sklearn.metrics.silhouette_score(emb, labels, metric="cosine")``:
    distances are clipped to [0, 2], a point's distance to itself is 0, and
    points in singleton clusters score 0.  O(N^2) time, O(N * chunk_size)
    memory.

    Args:
      emb: [n, d] float embeddings.
      labels: [n] cluster labels; need 2 <= n_labels <= n - 1 (after sampling).
      sample_size: if given, score a random subset of this many rows (drawn
        without replacement with ``np.random.default_rng(seed)``).
      seed: seed for the subsample.
      chunk_size: rows of the distance matrix computed at a time.
    """
    emb = _as_embeddings("emb", emb)
    labels = _as_keys("labels", labels, emb.shape[0], "emb")
    chunk_size = _check_positive_int("chunk_size", chunk_size)
    if sample_size is not None:
        sample_size = _check_positive_int("sample_size", sample_size)
        if sample_size < emb.shape[0]:
            idx = np.random.default_rng(seed).choice(emb.shape[0], size=sample_size, replace=False)
            emb, labels = emb[idx], labels[idx]
    n = emb.shape[0]
    unique_labels, label_index = np.unique(labels, return_inverse=True)
    n_labels = unique_labels.size
    if not 2 <= n_labels <= n - 1:
        raise ValueError(
            f"silhouette needs 2 <= number of distinct labels <= n_samples - 1; got "
            f"{n_labels} labels for {n} samples"
        )
    unit = _l2_normalise(emb.astype(np.float64))
    one_hot = np.zeros((n, n_labels))
    one_hot[np.arange(n), label_index] = 1.0
    cluster_sizes = one_hot.sum(axis=0)

    scores = np.empty(n)
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        rows = np.arange(stop - start)
        distances = np.clip(1.0 - unit[start:stop] @ unit.T, 0.0, 2.0)
        distances[rows, rows + start] = 0.0
        sums = distances @ one_hot  # [c, n_labels]
        own = label_index[start:stop]
        own_size = cluster_sizes[own]
        intra = sums[rows, own] / np.maximum(own_size - 1, 1)
        mean_to_cluster = sums / cluster_sizes[None, :]
        mean_to_cluster[rows, own] = np.inf
        inter = mean_to_cluster.min(axis=1)
        denom = np.maximum(intra, inter)
        with np.errstate(invalid="ignore", divide="ignore"):
            s = np.where(denom > 0, (inter - intra) / denom, 0.0)
        s[own_size <= 1] = 0.0
        scores[start:stop] = s
    return float(np.mean(scores))


# ---------------------------------------------------------------------------
# reconstruction
# ---------------------------------------------------------------------------


def mean_cosine(pred: Any, target: Any) -> float:
    """Mean row-wise cosine similarity between predictions and targets.

    Args:
      pred: [n, d] float; target: [n, d] float (same shape).
    """
    pred = _as_embeddings("pred", pred)
    target = _as_embeddings("target", target)
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape; got {pred.shape} vs {target.shape}")
    cos = np.sum(_l2_normalise(pred.astype(np.float64)) * _l2_normalise(target.astype(np.float64)), axis=1)
    return float(np.mean(cos))


def mean_predictor_cosine(train_target: Any, target: Any) -> float:
    """Cosine baseline of a predictor that always outputs the mean train target.

    The constant prediction is the plain (un-normalised) mean of the rows of
    ``train_target``; the result is the mean over rows of ``target`` of its
    cosine with that vector.

    Args:
      train_target: [n_train, d] float; target: [n, d] float.
    """
    return mean_direction_cosine(mean_direction(train_target), target)


def mean_direction(train_target: Any) -> np.ndarray:
    """[d] float64 unit vector along the mean of the rows of train_target [n, d] (the constant
    prediction of :func:`mean_predictor_cosine`); compute it once per target modality."""
    train_target = _as_embeddings("train_target", train_target)
    mean_vector = train_target.astype(np.float64).mean(axis=0)
    norm = np.linalg.norm(mean_vector)
    if not norm > 0:
        raise ValueError("the mean of train_target is the zero vector; its cosine with targets is undefined")
    return mean_vector / norm


def mean_direction_cosine(direction: np.ndarray, target: Any) -> float:
    """Mean over rows of target [n, d] of their cosine with `direction` [d] (from :func:`mean_direction`)."""
    target = _as_embeddings("target", target)
    if target.shape[1] != direction.shape[0]:
        raise ValueError(
            f"train_target and target have different embedding dimensions "
            f"({direction.shape[0]} vs {target.shape[1]})"
        )
    cos = _l2_normalise(target.astype(np.float64)) @ direction
    return float(np.mean(cos))
