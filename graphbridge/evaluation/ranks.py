"""Ranks of the relevant gallery items: the kernels behind retrieval_metrics (numpy and jitted
JAX, blocked so memory stays bounded; CPU scores in a worker thread)."""

from __future__ import annotations

import numpy as np

from graphbridge.core.rows import unit_rows


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
      tr, jr = t[:, r : r + 1], rel_idx[:, r : r + 1]
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
    _, rel_sorted = jax.lax.sort(
      (neg, rel.astype(jnp.int32)), dimension=1, is_stable=True, num_keys=1
    )
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


def _ranks_by_sorted_scores(
  block: np.ndarray, rel_idx: np.ndarray, rel_valid: np.ndarray
) -> np.ndarray:
  """:func:`_ranks_by_sorted_rows` over row blocks in threads (NumPy sorts without the GIL)."""
  import os
  from concurrent.futures import ThreadPoolExecutor

  threads = min(
    len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
    max(1, block.shape[0] // 64),
  )
  if threads <= 1:
    return _ranks_by_sorted_rows(block, rel_idx, rel_valid)
  bounds = np.linspace(0, block.shape[0], threads + 1).astype(int)
  with ThreadPoolExecutor(threads) as pool:
    parts = list(
      pool.map(
        lambda i: _ranks_by_sorted_rows(
          block[bounds[i] : bounds[i + 1]],
          rel_idx[bounds[i] : bounds[i + 1]],
          rel_valid[bounds[i] : bounds[i + 1]],
        ),
        range(threads),
      )
    )
  return np.concatenate(parts)


def _ranks_by_sorted_rows(
  block: np.ndarray, rel_idx: np.ndarray, rel_valid: np.ndarray
) -> np.ndarray:
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


def _break_ties_and_sort(
  ranks: np.ndarray, tied: np.ndarray, block: np.ndarray, rel_idx: np.ndarray, rel_valid: np.ndarray
) -> np.ndarray:
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


def _ranks_in_range(
  block: np.ndarray,
  inside: np.ndarray,
  n_above: np.ndarray,
  rel_idx: np.ndarray,
  rel_valid: np.ndarray,
) -> np.ndarray:
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
  ranks = (
    1 + n_above[:, None].astype(np.int64) + higher - np.searchsorted(keys, rows << 32, side="left")
  )
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
  return _first_rank_and_ap_levels(
    query, gallery, [(query_keys, gallery_keys)], exclude_self, chunk_size
  )[0]


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
    return [
      _first_rank_and_ap_numpy(query, gallery, qk, gk, exclude_self, chunk_size or 1024)
      for qk, gk in key_pairs
    ]
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
    level = {
      "n_relevant": n_relevant,
      "width": max(int(n_relevant.max()), 1),
      "counting": int(n_relevant.max()) <= COUNT_RANKS_UP_TO,
      "first": np.zeros(n_query, np.int64),
      "ap": np.full(n_query, np.nan),
    }
    if level["counting"] or host_sort:
      level["rel_idx"], level["rel_valid"] = _relevant_columns(
        query_keys, gallery_keys, exclude_self
      )
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
      level["ap"][start:stop] = (
        np.where(ordinal <= n_rel[:, None], ordinal / ranks, 0.0).sum(axis=1) / n_rel
      )
    level["first"][start:stop] = np.where(n_rel > 0, ranks[:, 0], 0)

  def padded(x, start, stop, fill=0):  # the last chunk is padded so every chunk has one shape
    pad = chunk - (stop - start)
    return np.pad(x[start:stop], [(0, pad)] + [(0, 0)] * (x.ndim - 1), constant_values=fill)

  def block_at(start):
    stop = min(start + chunk, n_query)
    if (
      host_sort
    ):  # NumPy's BLAS in a worker thread (it releases the GIL): faster than XLA's dot here
      return matmul_thread.submit(
        _host_scores, query_unit[start:stop], gallery_unit, start, exclude_self
      )
    return scores(
      padded(query_unit, start, stop), gallery_unit, np.int32(start), exclude_self=exclude_self
    )

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
          finish(
            level,
            start,
            stop,
            _ranks_on_host(
              host_block, level["rel_idx"][start:stop], level["rel_valid"][start:stop]
            ),
          )
        continue
      for level in levels:
        if level["counting"]:
          ranks = count_ranks(
            block,
            padded(level["rel_idx"], start, stop),
            padded(level["rel_valid"], start, stop, False),
          )
        else:
          ranks = sorted_ranks(
            block,
            padded(level["q_code"], start, stop, -1),
            level["g_code"],
            np.int32(start),
            exclude_self=exclude_self,
            width=level["width"],
          )
        finish(level, start, stop, ranks)
  finally:
    if host_sort:
      matmul_thread.shutdown(wait=True, cancel_futures=True)
  return [(lv["first"], lv["ap"], lv["n_relevant"]) for lv in levels]


def _host_scores(
  query_unit: np.ndarray, gallery_unit: np.ndarray, offset: int, exclude_self: bool
) -> np.ndarray:
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


def _l2_normalise(arr: np.ndarray) -> np.ndarray:
  """Row-wise L2 normalisation, norms in float64 (large float32 values do not overflow); keeps
  float32 as float32, else float64. The rows were checked to be non-zero."""
  return unit_rows(arr, floor=0, wide=True)


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
