"""Search with the retrieval engine: a gallery put in the compared space once (an `Index`), then
exact top-k in memory bounded by the block size, or approximate top-k (faiss, optional).

The rows are prepared by the same functions as the report's (retrieval.py): the aligner's encoding
along the route, the query-bank correction (hubness.py), unit rows in float32 (ranks.py), and
scored by the same float32 block product (ranks._host_scores on CPU, the jitted kernel elsewhere).
So a search over the report's split ranks every gallery row exactly as the report does; ties go to
the lower gallery index, as in the report's ranks.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from graphbridge.core.errors import DataError, GraphError
from graphbridge.data.dataset import l2_normalize_rows
from graphbridge.evaluation import hubness as hubness_lib
from graphbridge.evaluation import ranks as ranks_lib

BACKENDS = ("exact", "faiss")
QUERY_CHUNK = 1024  # queries scored together (one matmul block's rows)
GALLERY_BLOCK = (
  1 << 14
)  # gallery rows per block: the score block is QUERY_CHUNK x GALLERY_BLOCK floats


def scoring_rows(z: np.ndarray) -> np.ndarray:
  """Rows as the engine scores them: float32, unit (norms in float64), as ranks._l2_normalise."""
  return ranks_lib._l2_normalise(np.asarray(z, np.float32))


def _block_scores(q: np.ndarray, g: np.ndarray, buffer: np.ndarray) -> np.ndarray:
  """[c, n] float32 scores of unit rows: the report's block product (ranks._host_scores, q @ g.T),
  written into `buffer` (reused, so no block pays for fresh pages)."""
  out = buffer[: len(q) * len(g)].reshape(len(q), len(g))
  return np.matmul(q, g.T, out=out)


def _merge(best_s, best_i, cand_rows, cand_s, cand_i, k):
  """The k best of each row among its current best and new candidates; order: score descending,
  then gallery index ascending (the report's stable order)."""
  c = best_s.shape[0]
  rows = np.concatenate([np.repeat(np.arange(c), best_s.shape[1]), cand_rows])
  scores = np.concatenate([best_s.ravel(), cand_s])
  index = np.concatenate([best_i.ravel(), cand_i])
  order = np.lexsort((index, -scores, rows))
  rows, scores, index = rows[order], scores[order], index[order]
  position = np.arange(len(rows)) - np.searchsorted(rows, np.arange(c))[rows]
  keep = position < k
  return scores[keep].reshape(c, k), index[keep].reshape(c, k)


def exact_top_k(
  queries: np.ndarray,
  gallery: np.ndarray,
  k: int,
  query_chunk: int = QUERY_CHUNK,
  gallery_block: int = GALLERY_BLOCK,
) -> tuple[np.ndarray, np.ndarray]:
  """The k highest-scoring gallery rows of every query: (scores [n_q, k] float32, indices [n_q, k]
  int64), best first, ties to the lower index. queries, gallery: scoring rows (scoring_rows).

  Memory beyond the inputs: one [query_chunk, gallery_block] score block and a few of its
  candidates. After the first block only scores above a row's current k-th enter the merge."""
  n_q, n_g = len(queries), len(gallery)
  k = min(int(k), n_g)
  out_s = np.empty((n_q, k), np.float32)
  out_i = np.empty((n_q, k), np.int64)
  buffer = np.empty(max(min(query_chunk, n_q), 2) * max(min(gallery_block, n_g), 1), np.float32)
  for lo in range(0, n_q, query_chunk):
    q = queries[lo : lo + query_chunk]
    single = len(q) == 1
    if single:  # a one-row product takes another BLAS path (other rounding): score two equal rows
      q = np.concatenate([q, q])
    c = len(q)
    best_s = np.full((c, 0), -np.inf, np.float32)
    best_i = np.zeros((c, 0), np.int64)
    # a small first block sets each row's k-th score cheaply; after it only what beats it is kept
    first = min(gallery_block, max(8 * k, 8192))
    for start, stop in [(0, first)] + [
      (lo, lo + gallery_block) for lo in range(first, n_g, gallery_block)
    ]:
      s = _block_scores(q, gallery[start:stop], buffer)
      if best_s.shape[1] < k:  # rows not yet full: this block's own k best (ties included) enter
        kk = min(k, s.shape[1])
        kth = -np.partition(-s, kk - 1, axis=1)[:, kk - 1]
        rows, cols = np.nonzero(s >= kth[:, None])
      else:  # only what beats the k-th: a later block's equal score loses the tie (higher index)
        rows, cols = np.divmod(np.flatnonzero(s > best_s[:, -1][:, None]), s.shape[1])
      if best_s.shape[1] < k:
        need = min(k, best_s.shape[1] + s.shape[1])
        pad = need - best_s.shape[1]
        best_s = np.concatenate([best_s, np.full((c, pad), -np.inf, np.float32)], 1)
        best_i = np.concatenate([best_i, np.full((c, pad), np.iinfo(np.int64).max, np.int64)], 1)
      best_s, best_i = _merge(best_s, best_i, rows, s[rows, cols], cols + start, best_s.shape[1])
    n = 1 if single else c
    out_s[lo : lo + n], out_i[lo : lo + n] = best_s[:n], best_i[:n]
  return out_s, out_i


@dataclasses.dataclass
class Index:
  """A gallery in the compared space of one (query modality, gallery modality, route), built once
  (`build_index`); `search(queries, k)` answers batch after batch.

  gallery_rows: [n, d'] scoring rows (query-bank columns appended where bank_k > 0).
  penalty: [n] the query-bank hubness of each gallery row (None: no correction)."""

  aligner: Any
  query: str
  gallery: str
  route: str
  query_dim: int
  gallery_dim: int
  gallery_rows: np.ndarray
  penalty: np.ndarray | None
  backend: str = "exact"
  faiss_index: Any = None

  def __len__(self) -> int:
    return len(self.gallery_rows)

  def prepare_queries(self, queries: np.ndarray) -> np.ndarray:
    """Raw query embeddings [n, d_query] -> scoring rows."""
    zq = encode_side(
      self.aligner, self.query, self.gallery, self.route, queries, "query", self.gallery_dim
    )
    if self.penalty is not None:
      zq, _ = hubness_lib.hubness_transform(
        hubness_lib.unit(zq), np.zeros((0, zq.shape[1]), np.float32), np.zeros(0, np.float32)
      )
    return scoring_rows(zq)

  def search(
    self, queries, k: int = 10, batch_size: int = 4096, data_rows: bool = False
  ) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest gallery rows of each query row: (scores [n, k] float32, indices [n, k] int64
    into the indexed gallery), best first, batch_size queries translated and scored at a time.
    queries: raw embeddings, normalised as the data set normalises its rows; data_rows=True: rows
    of a loaded data set (already normalised: used as they are, as the report uses them)."""
    queries = (
      check_rows(queries, "queries", self.query, self.query_dim)
      if data_rows
      else input_rows(queries, "queries", self.query, self.query_dim)
    )
    k = check_k(k, len(self))
    batch_size = check_k(batch_size, None, "batch_size")
    parts_s, parts_i = [], []
    for lo in range(0, len(queries), batch_size):
      q = self.prepare_queries(queries[lo : lo + batch_size])
      if self.backend == "faiss":
        s, i = self.faiss_index.search(q, k)
        parts_s.append(s.astype(np.float32))
        parts_i.append(i.astype(np.int64))
      else:
        s, i = exact_top_k(q, self.gallery_rows, k)
        parts_s.append(s)
        parts_i.append(i)
    return np.concatenate(parts_s), np.concatenate(parts_i)


def check_rows(x, what: str, modality: str, dim: int) -> np.ndarray:
  """x as a float32 [n, dim] array; DataError naming the problem otherwise."""
  if x is None:
    raise DataError(f"{what}: no rows given (expected [rows, {dim}] {modality} embeddings)")
  arr = np.asarray(x)
  if np.iscomplexobj(arr):
    raise DataError(f"{what}: complex values; {modality} embeddings are real [rows, {dim}] arrays")
  if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
    raise DataError(f"{what}: expected numbers, got dtype {arr.dtype}")
  arr = arr.astype(np.float32)
  if arr.ndim == 1 and arr.shape[0] == dim:
    arr = arr[None]
  if arr.ndim != 2 or arr.shape[1] != dim:
    raise DataError(f"{what}: expected [rows, {dim}] {modality} embeddings, got shape {arr.shape}")
  if len(arr) == 0:
    raise DataError(f"{what}: no rows (shape {arr.shape})")
  finite = np.isfinite(arr).all(axis=1)
  if not finite.all():
    bad = int(np.argmin(finite))
    kind = "NaN" if np.isnan(arr[bad]).any() else "inf"
    raise DataError(f"{what}: row {bad} has {kind} ({int((~finite).sum())} such rows)")
  return arr


def input_rows(x, what: str, modality: str, dim: int) -> np.ndarray:
  """Raw embeddings as the data's rows are: checked (check_rows), then L2-normalised the way the
  data set normalises its own rows, so raw rows of the run's data search as the report ranks
  them."""
  return l2_normalize_rows(f"{what} ({modality})", check_rows(x, what, modality, dim))


def check_k(k, limit: int | None, what: str = "k") -> int:
  """k as a positive int (at most `limit`); ValueError naming it otherwise."""
  integral = isinstance(k, (int, np.integer)) or (isinstance(k, float) and k.is_integer())
  if isinstance(k, bool) or not integral:
    raise ValueError(f"{what} must be a positive integer, got {k!r}")
  if k < 1:
    raise ValueError(f"{what} must be >= 1, got {k!r}")
  return int(k) if limit is None else min(int(k), limit)


def encode_side(
  aligner, query: str, gallery: str, route: str, x: np.ndarray, side: str, other_dim: int
) -> np.ndarray:
  """One side of a route in the compared space. Aligners encode both sides together; every built-in
  one encodes each side on its own, so the other side is two zero rows (of `other_dim`)."""
  if getattr(aligner, "csls_k", 0):
    raise GraphError(
      "CSLS (eval.csls_k) scores against the query set itself, so a gallery cannot be "
      "indexed ahead of the queries; use the query bank (eval.querybank_k) instead"
    )
  dummy = np.zeros((2, other_dim), np.float32)
  if side == "query":
    z, _ = aligner.encode(query, gallery, route, x, dummy)
  else:
    _, z = aligner.encode(query, gallery, route, dummy, x)
  return np.asarray(z, np.float32)


def build_index(
  aligner,
  dataset,
  query: str,
  gallery: str,
  rows,
  route: str | None = None,
  querybank_k: int = 0,
  seed: int = 0,
  backend: str = "exact",
  batch_size: int = 4096,
  faiss_options: dict | None = None,
  data_rows: bool = False,
) -> Index:
  """The gallery `rows` [n, d_gallery] of `gallery` put in the compared space of the route from
  `query` (default: the aligner's default route, as the report's). querybank_k > 0: the query-bank
  correction with the query modality's train rows of `dataset` as the bank (as the report's).
  data_rows: `rows` are a loaded data set's (normalised already), else raw embeddings."""
  if backend not in BACKENDS:
    raise ValueError(f"backend {backend!r}: choose one of {', '.join(BACKENDS)}")
  for m in (query, gallery):
    if m not in dataset.modalities:
      raise GraphError(
        f"modality {m!r} is not in the data (modalities: {', '.join(dataset.names)})"
      )
  if hasattr(aligner, "bind_data"):
    aligner.bind_data(dataset)
  route = route or aligner.default_route(query, gallery)
  if route is None:
    raise GraphError(f"no route joins {query} (query) and {gallery} (gallery)")
  dims = dataset.dims
  rows = (
    check_rows(rows, "gallery", gallery, dims[gallery])
    if data_rows
    else input_rows(rows, "gallery", gallery, dims[gallery])
  )
  zg = np.concatenate(
    [
      encode_side(
        aligner, query, gallery, route, rows[lo : lo + batch_size], "gallery", dims[query]
      )
      for lo in range(0, len(rows), batch_size)
    ]
  )
  penalty = None
  if querybank_k and querybank_k > 0:
    zb = hubness_lib.bank_rows(aligner, dataset, query, gallery, route, seed)
    if zb is not None:
      zg_unit = hubness_lib.unit(zg)
      penalty = hubness_lib.knn_mean_similarity(zg_unit, hubness_lib.unit(zb), querybank_k)
      _, zg = hubness_lib.hubness_transform(
        np.zeros((0, zg.shape[1]), np.float32), zg_unit, penalty
      )
  index = Index(
    aligner, query, gallery, route, dims[query], dims[gallery], scoring_rows(zg), penalty, backend
  )
  if backend == "faiss":
    index.faiss_index = faiss_index(index.gallery_rows, **(faiss_options or {}))
  return index


def faiss_index(
  gallery_rows: np.ndarray,
  nlist: int | None = None,
  nprobe: int = 64,
  seed: int = 0,
  iterations: int = 10,
):
  """An inverted-file inner-product index (faiss IndexIVFFlat) over scoring rows: nlist cells
  (default ~4 sqrt(n), faiss's own rule of thumb) from k-means (`iterations` rounds on 30 rows a
  cell), nprobe of them read per query (benchmarks/search_scale.py measures recall against exact
  search). `pip install graphbridge[search]`."""
  try:
    import faiss
  except ImportError as exc:
    raise ImportError("the faiss backend needs faiss-cpu: pip install graphbridge[search]") from exc
  n, d = gallery_rows.shape
  nlist = nlist or max(1, min(int(4 * np.sqrt(n)), n // 40))
  quantizer = faiss.IndexFlatIP(d)
  index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
  index.cp.niter = int(iterations)
  index.cp.seed = int(seed)
  sample = min(n, 30 * nlist)
  train = (
    gallery_rows
    if sample == n
    else gallery_rows[np.random.default_rng(seed).choice(n, sample, replace=False)]
  )
  index.train(np.ascontiguousarray(train))
  index.add(np.ascontiguousarray(gallery_rows))
  index.nprobe = min(nprobe, nlist)
  return index


def recall_at_k(approx: np.ndarray, exact: np.ndarray) -> float:
  """Mean fraction of each row's exact top-k indices that the approximate top-k found."""
  k = exact.shape[1]
  return float(np.mean([len(set(a[:k]) & set(e)) / k for a, e in zip(approx, exact)]))


def ranks_of(
  indices: np.ndarray, query_keys: np.ndarray, gallery_keys: np.ndarray
) -> list[np.ndarray]:
  """1-based ranks of the relevant gallery rows in each query's full ranking (search with k = the
  gallery's size): what the report's R@k and mAP are computed from."""
  return [np.nonzero(gallery_keys[row] == key)[0] + 1 for row, key in zip(indices, query_keys)]


def retrieval_from_ranks(
  ranks: Sequence[np.ndarray], ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
  """R@k and mAP from ranks_of (queries without a relevant row skipped, as the report does)."""
  ranks = [r for r in ranks if len(r)]
  out = {f"R@{k}": float(np.mean([r[0] <= k for r in ranks])) for k in ks}
  out["mAP"] = float(np.mean([np.mean(np.arange(1, len(r) + 1) / r) for r in ranks]))
  return out
