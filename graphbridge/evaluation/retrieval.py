"""The retrieval engine: every report, comparison and search scores through `retrieval_rows`."""

from __future__ import annotations

from graphbridge.core.rows import _subsample

from typing import Iterable, Sequence
import numpy as np
from graphbridge.evaluation import metrics as metrics_lib
from graphbridge.data.dataset import Dataset
from graphbridge.evaluation.encoding import Aligner
from graphbridge.evaluation.encoding import (
  route_origin,
  EncodingCache,
  levels_available,
  pairs_graph,
  planned_routes,
)
from graphbridge.evaluation.hubness import querybank_scores


def retrieval_rows(
  aligner: Aligner,
  dataset: Dataset,
  split: str = "test",
  extra_routes: Iterable[str] = (),
  ks: Sequence[int] = (1, 5, 10),
  pairs: Sequence[tuple[str, str]] | None = None,
  cache: EncodingCache | None = None,
  max_queries: int | None = None,
  seed: int = 0,
  querybank_k: int = 0,
) -> list[dict]:
  """One row per (query, gallery, route, level) with R@k, mAP, median rank and their chance values.

  Routes: the aligner's default for every ordered pair (or `pairs`), then `extra_routes` by name.
  Levels: "instance" where both modalities have ids, "class" where both have labels.
  max_queries: score at most this many query rows per route (a seeded sample, the same rows at
  every level), against the whole gallery; each row then records `query_rows` (the split's query
  rows) and `queries_sampled` = True. None or 0: every query row.
  querybank_k > 0: rank each gallery row by its cosine minus its hubness against a bank of the query
  modality's train rows (querybank_scores; resolve_querybank decides eval.querybank_k=-1)."""
  if max_queries is not None and (
    isinstance(max_queries, bool) or int(max_queries) != max_queries or max_queries < 0
  ):
    raise ValueError(
      f"eval.max_queries must be a non-negative integer (0: every query), got {max_queries!r}"
    )
  hops_graph = pairs_graph(dataset)
  cache = cache or EncodingCache(aligner, dataset, split)
  rows = []
  for spec in planned_routes(aligner, dataset, extra_routes, pairs):
    enc = cache.get(spec)
    if enc is None:
      continue
    n_query_rows = len(enc.query_rows)
    pick = np.arange(n_query_rows)
    if max_queries and n_query_rows > max_queries:
      pick = _subsample(
        pick, int(max_queries), seed, "max_queries", spec.query, spec.gallery, spec.route
      )
    zq, q_rows = enc.zq[pick], enc.query_rows[pick]
    zg = enc.zg
    if querybank_k and querybank_k > 0:
      zq, zg = querybank_scores(aligner, dataset, enc, zq, int(querybank_k), seed)
    keys = {}
    for level in levels_available(dataset, spec.query, spec.gallery):
      attr = "ids" if level == "instance" else "labels"
      kq = getattr(dataset.modalities[spec.query], attr)[q_rows]
      kg = getattr(dataset.modalities[spec.gallery], attr)[enc.gallery_rows]
      if np.isin(kq, kg).any():  # else no query has a relevant gallery item at this level
        keys[level] = (kq, kg)
    by_level = metrics_lib.retrieval_metrics_by_level(zq, zg, keys, ks=ks)  # one pass of scores
    for level, (kq, kg) in keys.items():
      scores = by_level[level]
      chance = metrics_lib.chance_retrieval_metrics(kq, kg, ks=ks)
      row = {
        "strategy": aligner.name,
        "query": spec.query,
        "gallery": spec.gallery,
        "route": spec.route,
        "named_route": spec.named,
        "hops": hops_graph.hop_distance(spec.query, spec.gallery),
        "edges": route_origin(aligner, dataset, spec.route),
        "level": level,
        "split": split,
      }
      row.update({k: (v if isinstance(v, int) else float(v)) for k, v in scores.items()})
      if len(pick) < n_query_rows:
        row.update({"query_rows": n_query_rows, "queries_sampled": True})
      row.update(
        {
          f"chance_{k}": float(chance[k])
          for k in chance
          if k.startswith(("R@", "mAP", "median_rank"))
        }
      )
      rows.append(row)
  return rows
