"""Cross-modal evaluation, strategy-agnostic: retrieval, modality gap, silhouette, reconstruction.

An *aligner* says, for a (query modality, gallery modality, route), how to put query rows and
gallery rows into one space where cosine similarity ranks the gallery. The translator graph does
it by translating queries along a path into the gallery's space; projector strategies (pivot,
pairwise, C-MCR) project both sides into a shared space. Every strategy is scored by the same code:
a route is an opaque string owned by the aligner, and every row carries `strategy` and `route`.

Hop distances (`hops` in retrieval and gap rows) are measured in the *paired-data* graph (one
edge per pair set in the data): 1 = the two modalities were paired in training, 2+ = never paired
(zero-shot), None = not connected at all. Reconstruction rows count translators applied instead.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import zlib
from typing import Iterable, Mapping, Protocol, Sequence

import numpy as np

from graphbridge import data as data_lib
from graphbridge import metrics as metrics_lib
from graphbridge.data import Dataset
from graphbridge.graph import GraphError, ModalityGraph, path_edges, path_name
from graphbridge.routes import best_route, parse_route

class Aligner(Protocol):
  """What evaluation needs from a strategy.

  Optional extras, used when present: `route_ends(route) -> (query, gallery)` (for named routes
  whose ends cannot be read from the string) and `layout`, `params`, `compute_dtype` (an aligner
  made of translators: enables the reconstruction table).
  """
  name: str

  def default_route(self, query: str, gallery: str) -> str | None:
    """Route name used when none is asked for (None: this pair cannot be compared)."""

  def encode(self, query: str, gallery: str, route: str, xq: np.ndarray, xg: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
    """Query rows [n_q, d_q] and gallery rows [n_g, d_g] -> both in one space [n, d]."""


def pairs_graph(dataset: Dataset) -> ModalityGraph:
  """Which modalities were paired in training (both directions), for hop distances."""
  return dataset.default_graph()


SPLITS = ("test", "train", "all")   # choices of eval.split


def split_rows(dataset: Dataset, modality: str, split: str) -> np.ndarray:
  """Row indices [n] of `modality` in `split` ("test", "train" or "all")."""
  mod = dataset.modalities[modality]
  if split == "test":
    mask = mod.test
  elif split == "train":
    mask = mod.train
  elif split == "all":
    mask = np.ones(len(mod), bool)
  else:
    raise ValueError(f"unknown split {split!r} (choices: test, train, all)")
  return np.nonzero(mask)[0]


def levels_available(dataset: Dataset, query: str, gallery: str) -> list[str]:
  q, g = dataset.modalities[query], dataset.modalities[gallery]
  levels = []
  if q.ids is not None and g.ids is not None:
    levels.append("instance")
  if q.labels is not None and g.labels is not None:
    levels.append("class")
  return levels


def route_ends(aligner: Aligner, route: str) -> tuple[str, str]:
  """(query, gallery) of a route: asked of the aligner if it can say, else read from the route's
  ends: `a->b->c` (query a, gallery c) or a meeting route `a->p<-c` (query a, gallery c)."""
  ends = getattr(aligner, "route_ends", None)
  if ends is not None:
    return ends(route)
  return route.split("->")[0].strip(), route.split("<-")[-1].split("->")[-1].strip()


def _stable_rng(seed: int, *names: str) -> np.random.Generator:
  return np.random.default_rng([int(seed)] + [zlib.crc32(n.encode()) for n in names])


def _subsample(rows: np.ndarray, size: int | None, seed: int, *names: str) -> np.ndarray:
  """At most `size` of `rows` (sorted, deterministic per names)."""
  if size is None or len(rows) <= size:
    return rows
  return np.sort(_stable_rng(seed, *names).choice(rows, size, replace=False))


# ---- routes and their encodings -----------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RouteSpec:
  query: str
  gallery: str
  route: str
  named: bool = False   # asked for by name (eval.paths / --paths), not the aligner's default


def planned_routes(aligner: Aligner, dataset: Dataset, extra_routes: Iterable[str] = (),
                   pairs: Sequence[tuple[str, str]] | None = None) -> list[RouteSpec]:
  """The default route of every ordered pair of distinct modalities (or of `pairs`), then named routes."""
  names = dataset.names
  if hasattr(aligner, "bind_data"):
    aligner.bind_data(dataset)
  wanted = [(q, g) for q in names for g in names if q != g] if pairs is None else list(pairs)
  specs = []
  for query, gallery in wanted:
    route = aligner.default_route(query, gallery)
    if route is not None:
      specs.append(RouteSpec(query, gallery, route))
  for route in extra_routes:
    route = route.strip()
    query, gallery = route_ends(aligner, route)
    for m in (query, gallery):
      if m not in dataset.modalities:
        raise GraphError(f"route {route}: modality {m!r} is not in the data (modalities: {', '.join(names)})")
    if not any(s.route == route for s in specs):
      specs.append(RouteSpec(query, gallery, route, named=True))
  return specs


@dataclasses.dataclass
class Encoded:
  """One route applied to the split's rows: zq [n_q, d], zg [n_g, d] in the compared space."""
  spec: RouteSpec
  query_rows: np.ndarray
  gallery_rows: np.ndarray
  zq: np.ndarray
  zg: np.ndarray


def encode_route(aligner: Aligner, dataset: Dataset, spec: RouteSpec, split: str) -> Encoded | None:
  q_rows, g_rows = split_rows(dataset, spec.query, split), split_rows(dataset, spec.gallery, split)
  if len(q_rows) == 0 or len(g_rows) == 0:
    return None
  zq, zg = aligner.encode(spec.query, spec.gallery, spec.route, dataset.modalities[spec.query].emb[q_rows],
                          dataset.modalities[spec.gallery].emb[g_rows])
  return Encoded(spec, q_rows, g_rows, np.asarray(zq), np.asarray(zg))


class EncodingCache:
  """Each (aligner, route) is encoded once and reused by retrieval, gap, silhouette and projection."""

  def __init__(self, aligner: Aligner, dataset: Dataset, split: str):
    self.aligner, self.dataset, self.split = aligner, dataset, split
    self._cache: dict[RouteSpec, Encoded | None] = {}

  def get(self, spec: RouteSpec) -> Encoded | None:
    key = RouteSpec(spec.query, spec.gallery, spec.route)  # named or not: same encoding
    if key not in self._cache:
      self._cache[key] = encode_route(self.aligner, self.dataset, key, self.split)
    return self._cache[key]


# ---- retrieval ----------------------------------------------------------------------------------

def retrieval_rows(aligner: Aligner, dataset: Dataset, split: str = "test",
                   extra_routes: Iterable[str] = (), ks: Sequence[int] = (1, 5, 10),
                   pairs: Sequence[tuple[str, str]] | None = None,
                   cache: EncodingCache | None = None, max_queries: int | None = None,
                   seed: int = 0, querybank_k: int = 0) -> list[dict]:
  """One row per (query, gallery, route, level) with R@k, mAP, median rank and their chance values.

  Routes: the aligner's default for every ordered pair (or `pairs`), then `extra_routes` by name.
  Levels: "instance" where both modalities have ids, "class" where both have labels.
  max_queries: score at most this many query rows per route (a seeded sample, the same rows at
  every level), against the whole gallery; each row then records `query_rows` (the split's query
  rows) and `queries_sampled` = True. None or 0: every query row.
  querybank_k > 0: rank each gallery row by its cosine minus its hubness against a bank of the query
  modality's train rows (querybank_scores; resolve_querybank decides eval.querybank_k=-1)."""
  if max_queries is not None and (isinstance(max_queries, bool) or int(max_queries) != max_queries
                                  or max_queries < 0):
    raise ValueError(f"eval.max_queries must be a non-negative integer (0: every query), got {max_queries!r}")
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
      pick = _subsample(pick, int(max_queries), seed, "max_queries", spec.query, spec.gallery, spec.route)
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
      row = {"strategy": aligner.name, "query": spec.query, "gallery": spec.gallery, "route": spec.route,
             "named_route": spec.named, "hops": hops_graph.hop_distance(spec.query, spec.gallery),
             "level": level, "split": split}
      row.update({k: (v if isinstance(v, int) else float(v)) for k, v in scores.items()})
      if len(pick) < n_query_rows:
        row.update({"query_rows": n_query_rows, "queries_sampled": True})
      row.update({f"chance_{k}": float(chance[k]) for k in chance
                  if k.startswith(("R@", "mAP", "median_rank"))})
      rows.append(row)
  return rows


# ---- modality gap -------------------------------------------------------------------------------

def gap_rows(aligner: Aligner, dataset: Dataset, split: str = "test", before: Aligner | None = None,
             routes: Sequence[RouteSpec] | None = None, cache: EncodingCache | None = None,
             cache_before: EncodingCache | None = None) -> list[dict]:
  """Modality gap per route: distance between the centroids of translated query rows and gallery rows.

  gap_after uses `aligner`, gap_before the same strategy at initialisation (`before`, optional);
  gap_raw compares the untranslated rows where the two modalities have the same dimension."""
  hops_graph = pairs_graph(dataset)
  cache = cache or EncodingCache(aligner, dataset, split)
  if before is not None:
    cache_before = cache_before or EncodingCache(before, dataset, split)
  routes = planned_routes(aligner, dataset) if routes is None else routes
  raw_centroids: dict[str, np.ndarray] = {}  # each modality's raw split rows, reduced once

  def raw_centroid(m: str, rows: np.ndarray) -> np.ndarray:
    if m not in raw_centroids:
      raw_centroids[m] = metrics_lib.unit_centroid(dataset.modalities[m].emb[rows], m)
    return raw_centroids[m]

  rows = []
  for spec in routes:
    enc = cache.get(spec)
    if enc is None:
      continue
    same_dim = dataset.modalities[spec.query].emb.shape[1] == dataset.modalities[spec.gallery].emb.shape[1]
    raw = metrics_lib.centroid_gap(raw_centroid(spec.query, enc.query_rows),
                                   raw_centroid(spec.gallery, enc.gallery_rows)) if same_dim else None
    enc_before = cache_before.get(spec) if before is not None else None
    rows.append({"strategy": aligner.name, "query": spec.query, "gallery": spec.gallery, "route": spec.route,
                 "hops": hops_graph.hop_distance(spec.query, spec.gallery), "gap_raw": raw,
                 "gap_before": None if enc_before is None else metrics_lib.modality_gap(enc_before.zq,
                                                                                      enc_before.zg),
                 "gap_after": metrics_lib.modality_gap(enc.zq, enc.zg)})
  return rows


# ---- cluster separability -----------------------------------------------------------------------

def _silhouette(emb: np.ndarray, labels: np.ndarray) -> float | None:
  if len(np.unique(labels)) < 2 or len(np.unique(labels)) > len(labels) - 1:
    return None
  return metrics_lib.silhouette_cosine(emb, labels)


def silhouette_rows(aligner: Aligner, dataset: Dataset, split: str = "test", before: Aligner | None = None,
                    routes: Sequence[RouteSpec] | None = None, cache: EncodingCache | None = None,
                    cache_before: EncodingCache | None = None, sample: int = 500, seed: int = 0
                    ) -> list[dict]:
  """Cosine silhouette by class label, per route (both modalities need labels).

  query_raw / gallery_raw: each modality's own embeddings; query_translated: the query rows in the
  compared space; mixed: translated query rows + gallery rows together, scored by class, so a high
  value means classes (not modalities) form the clusters; mixed_before: the same at initialisation.
  At most `sample` rows per set (`sample` // 2 per side for the mixed set)."""
  cache = cache or EncodingCache(aligner, dataset, split)
  if before is not None:
    cache_before = cache_before or EncodingCache(before, dataset, split)
  routes = planned_routes(aligner, dataset) if routes is None else routes
  raw: dict[str, float | None] = {}

  def raw_score(m: str) -> float | None:
    if m not in raw:
      rows = _subsample(split_rows(dataset, m, split), sample, seed, m)
      mod = dataset.modalities[m]
      raw[m] = _silhouette(mod.emb[rows], mod.labels[rows]) if len(rows) > 2 else None
    return raw[m]

  def pick(enc: Encoded, side: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    modality = enc.spec.query if side == "q" else enc.spec.gallery
    rows = enc.query_rows if side == "q" else enc.gallery_rows
    z = enc.zq if side == "q" else enc.zg
    keep = np.searchsorted(rows, _subsample(rows, size, seed, modality))
    return z[keep], dataset.modalities[modality].labels[rows[keep]]

  def mixed(enc: Encoded | None) -> float | None:
    if enc is None:
      return None
    (zq, lq), (zg, lg) = pick(enc, "q", sample // 2), pick(enc, "g", sample // 2)
    return _silhouette(np.concatenate([zq, zg]), np.concatenate([lq, lg]))

  out = []
  for spec in routes:
    q, g = dataset.modalities[spec.query], dataset.modalities[spec.gallery]
    if q.labels is None or g.labels is None:
      continue
    enc = cache.get(spec)
    if enc is None or len(enc.query_rows) < 3:
      continue
    out.append({"strategy": aligner.name, "query": spec.query, "gallery": spec.gallery, "route": spec.route,
                "query_raw": raw_score(spec.query), "gallery_raw": raw_score(spec.gallery),
                "query_translated": _silhouette(*pick(enc, "q", sample)),
                "mixed_before": mixed(cache_before.get(spec)) if before is not None else None,
                "mixed": mixed(enc)})
  return out


# ---- reconstruction along paths and cycles ------------------------------------------------------

def _id_matched(dataset: Dataset, src: str, dst: str, src_rows: np.ndarray, split: str
                ) -> tuple[np.ndarray, np.ndarray] | None:
  """(positions into src_rows, dst rows) for src rows whose id occurs among dst's split rows."""
  a, b = dataset.modalities[src], dataset.modalities[dst]
  if a.ids is None or b.ids is None:
    return None
  b_rows = split_rows(dataset, dst, split)
  ids, first = np.unique(b.ids[b_rows], return_index=True)
  pos = np.searchsorted(ids, a.ids[src_rows])
  found = (pos < len(ids)) & (ids[np.minimum(pos, len(ids) - 1)] == a.ids[src_rows])
  if not found.any():
    return None
  return np.nonzero(found)[0], b_rows[first[pos[found]]]


def _paired(dataset: Dataset, src: str, dst: str, split: str, max_rows: int, seed: int
            ) -> tuple[np.ndarray, str] | None:
  """[P, 2] pairs (src row, dst row) of the data, with both rows in `split` if any, else train pairs."""
  pairs = dataset.pairs_for(src, dst, split="all")
  if len(pairs) == 0:
    return None
  a, b = dataset.modalities[src], dataset.modalities[dst]
  if split != "all":
    mask_a, mask_b = (a.test, b.test) if split == "test" else (a.train, b.train)
    in_split = pairs[mask_a[pairs[:, 0]] & mask_b[pairs[:, 1]]]
    if len(in_split):
      pairs, target = in_split, f"paired rows ({split})"
    else:
      pairs, target = dataset.pairs_for(src, dst, split="train"), "paired rows (train)"
  else:
    target = "paired rows"
  if len(pairs) == 0:
    return None
  keep = _subsample(np.arange(len(pairs)), max_rows, seed, src, dst, "pairs")
  return pairs[keep], target


def reconstruction_rows(aligner: Aligner, dataset: Dataset, split: str = "test", cycle_length: int = 3,
                        path_hops: int = 3, max_rows: int = 2000, max_paths: int = 200, seed: int = 0
                        ) -> list[dict]:
  """Cosine between translations and their targets, by number of translators applied.

  Cycles (every cycle of the aligner's graph up to `cycle_length` hops, e.g. image->text->image)
  reconstruct the start rows. Paths a->...->b (up to `path_hops`, at most `max_paths`, shortest
  first) are scored against the b row with the same instance id; single hops without ids fall
  back to the data's pairs for that edge (the `target` column says which). `baseline` is the
  mean-predictor cosine (the mean train row of the target modality, as a constant prediction).
  Needs an aligner made of translators (`layout`, `params`, `compute_dtype`); others give []."""
  layout = getattr(aligner, "layout", None)
  if layout is None or not hasattr(aligner, "params"):
    return []

  def translate_many(routes, x):
    return translate_paths(layout, aligner.params, getattr(aligner, "compute_dtype", "float32"), routes, x)

  graph = layout.graph
  has_rows = set(dataset.names)  # virtual nodes (shared spaces) can be passed through, not scored
  cycles = [c for c in graph.cycles(max_length=cycle_length) if c[0] in has_rows]
  paths = sorted((p for p in graph.paths_up_to(path_hops) if p[0] in has_rows and p[-1] in has_rows),
                 key=len)[:max_paths]

  directions: dict[str, np.ndarray] = {}  # the mean train row of each target modality, once

  def baseline(m: str, target: np.ndarray) -> float:
    if m not in directions:
      mod = dataset.modalities[m]
      directions[m] = metrics_lib.mean_direction(mod.emb[mod.train])
    return metrics_lib.mean_direction_cosine(directions[m], target)

  out = []
  for start in (m for m in graph.node_names if m in has_rows):
    mine_cycles = [c for c in cycles if c[0] == start]
    mine_paths = [p for p in paths if p[0] == start]
    rows = _subsample(split_rows(dataset, start, split), max_rows, seed, start)
    if len(rows) == 0 or not (mine_cycles or mine_paths):
      continue
    x = dataset.modalities[start].emb[rows]
    matched = {p: _id_matched(dataset, start, p[-1], rows, split) for p in mine_paths}
    wanted = [path_name(c) for c in mine_cycles] + [path_name(p) for p in mine_paths if matched[p] is not None]
    z = translate_many(wanted, x) if wanted else {}
    for c in mine_cycles:
      out.append({"strategy": aligner.name, "kind": "cycle", "route": path_name(c), "hops": len(c) - 1,
                  "start": start, "end": start, "target": "same rows", "n": len(rows),
                  "cosine": metrics_lib.mean_cosine(z[path_name(c)], x), "baseline": baseline(start, x)})
    for p in mine_paths:
      end = p[-1]
      if matched[p] is not None:
        pos, end_rows = matched[p]
        pred, target, what = z[path_name(p)][pos], dataset.modalities[end].emb[end_rows], "same id"
      elif len(p) == 2:
        found = _paired(dataset, start, end, split, max_rows, seed)
        if found is None:
          continue
        pairs, what = found
        pred = translate_many([path_name(p)], dataset.modalities[start].emb[pairs[:, 0]])[path_name(p)]
        target = dataset.modalities[end].emb[pairs[:, 1]]
      else:
        continue
      out.append({"strategy": aligner.name, "kind": "path", "route": path_name(p), "hops": len(p) - 1,
                  "start": start, "end": end, "target": what, "n": len(target),
                  "cosine": metrics_lib.mean_cosine(pred, target), "baseline": baseline(end, target)})
  out.sort(key=lambda r: (r["kind"] != "path", r["hops"], r["route"]))
  return out


def summarize_reconstruction(rows: Sequence[Mapping]) -> list[dict]:
  """Mean cosine and mean baseline per (kind, hops)."""
  groups: dict[tuple, list] = {}
  for r in rows:
    groups.setdefault((r["kind"], r["hops"]), []).append(r)
  return [{"kind": kind, "hops": hops, "routes": len(rs), "cosine": float(np.mean([r["cosine"] for r in rs])),
           "baseline": float(np.mean([r["baseline"] for r in rs]))}
          for (kind, hops), rs in sorted(groups.items(), key=lambda kv: (kv[0][0] != "path", kv[0][1]))]


# ---- one common space for pictures ---------------------------------------------------------------

def hub_modality(dataset: Dataset) -> str:
  """The modality paired with the most others (ties: data order): the common space of the picture."""
  graph = pairs_graph(dataset)
  return max(dataset.names, key=lambda m: (len(graph.out_edges(m)), -dataset.names.index(m)))


def common_space_rows(aligner: Aligner, dataset: Dataset, space: str, cache: EncodingCache
                      ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """Every modality's split rows where it is compared with `space`.

  Returns ({modality: [n_m, d]}, {modality: route}).

  Other modalities are encoded by their default route to `space`; `space`'s own rows are the
  gallery side of the first such encoding: its raw rows for the translator graph (route "raw"),
  projected rows for strategies that meet in a shared space (route "gallery side of <route>")."""
  out, routes = {}, {}
  raw = dataset.modalities[space].emb[split_rows(dataset, space, cache.split)]
  layout = getattr(aligner, "layout", None)
  if hasattr(aligner, "bind_data"):
    aligner.bind_data(dataset)
  for m in dataset.names:
    if m == space:
      continue
    route = aligner.default_route(m, space)
    if hasattr(aligner, "route_graph") and m in layout.graph.dims and space in layout.graph.dims:
      # translators: go all the way into space's own space (a default route may meet elsewhere,
      # in another modality's dimension, or average several spaces: neither fits one picture)
      graph = aligner.route_graph()
      dist = graph.hop_distance(m, space)
      route = path_name(graph.shortest_path(m, space)) if dist is not None else route
    enc = cache.get(RouteSpec(m, space, route)) if route is not None else None
    if enc is None:
      continue
    out[m], routes[m] = enc.zq, route
    if space not in out:
      same = enc.zg.shape == raw.shape and np.allclose(enc.zg, raw, atol=1e-6)
      out[space], routes[space] = enc.zg, "raw" if same else f"gallery side of {route}"
  if space not in out:
    out[space], routes[space] = raw, "raw"
  return {m: out[m] for m in dataset.names if m in out}, {m: routes[m] for m in dataset.names if m in routes}


# ---- the translator graph as an aligner ---------------------------------------------------------

TRANSLATE_CHUNK = 1024  # rows per jitted call; inputs are padded to it, so each edge compiles once


@functools.cache
def _edge_fn():
  """One jitted translator call per (d_out, architecture, dtype), not per edge: the edge's params
  are an argument, so every edge of a bucket (and the same edges at initialisation) share one
  compile."""
  import jax

  from graphbridge import translators

  def apply(edge_params, x, d_out, arch, dtype_name):
    module = translators.Translator(d_out, arch, dtype=translators.dtype_from_name(dtype_name))
    return module.apply({"params": edge_params}, x)

  return jax.jit(apply, static_argnames=("d_out", "arch", "dtype_name"))


def _edge_params(layout, params: Mapping, edge):
  """(params of one edge, sliced from its bucket's stack; d_out; arch)."""
  import jax

  key, index = layout.where(edge)
  bucket = layout.bucket_by_key[key]
  if key not in params:
    raise GraphError(f"edge {bucket.edges[index].name}: no parameters for bucket {key!r} "
                     f"(have: {', '.join(params)})")
  return jax.tree.map(lambda p: p[index], params[key]), bucket.d_out, bucket.arch


def translate_paths(layout, params: Mapping, compute_dtype: str, routes: Sequence[str], x: np.ndarray
                    ) -> dict[str, np.ndarray]:
  """Translate the same rows x [n, d_src] along several paths that start at one modality.

  params: stacked ({bucket_key: ...}). Returns {route: [n, d_dst] float32, L2-normalised}.
  Shared path prefixes are computed once; rows go through one jitted call per edge in chunks of
  TRANSLATE_CHUNK (padded), so nothing recompiles for a new row count or a new path."""
  import jax.numpy as jnp

  paths = {r: layout.graph.parse_path(r) for r in routes}
  if not paths:
    return {}
  starts = sorted({p[0] for p in paths.values()})
  if len(starts) != 1:
    raise GraphError(f"translate_paths: routes start at different modalities ({', '.join(starts)})")
  d_src = layout.graph.dim(starts[0])
  x = np.asarray(x, np.float32)
  if x.ndim != 2 or x.shape[1] != d_src:
    raise ValueError(f"translate: input must be [rows, {d_src}] ({starts[0]} embeddings), got shape {x.shape}")
  fn = _edge_fn()
  edge_args = {}
  chunks: dict[str, list[np.ndarray]] = {r: [] for r in paths}
  for lo in range(0, max(len(x), 1), TRANSLATE_CHUNK):
    block = x[lo:lo + TRANSLATE_CHUNK]
    padded = np.zeros((TRANSLATE_CHUNK, d_src), np.float32)
    padded[:len(block)] = block
    prefix: dict[tuple, object] = {(): jnp.asarray(padded)}
    for route, path in paths.items():
      edges = path_edges(path)
      for i, edge in enumerate(edges):
        if edges[:i + 1] not in prefix:
          if edge not in edge_args:
            edge_args[edge] = _edge_params(layout, params, edge)
          edge_params, d_out, arch = edge_args[edge]
          prefix[edges[:i + 1]] = fn(edge_params, prefix[edges[:i]], d_out=d_out, arch=arch,
                                     dtype_name=compute_dtype)
      chunks[route].append(np.asarray(prefix[edges], np.float32)[:len(block)])
  out = {}
  for route, parts in chunks.items():
    z = np.concatenate(parts)
    norms = np.sqrt(np.maximum(np.sum(np.square(z, dtype=np.float64), axis=1, keepdims=True), 1e-16))
    out[route] = (z / norms).astype(np.float32)
  return out


ROUTE_MODES = ("auto", "ensemble", "ensemble_all", "best")


def resolve_route_mode(mode: str, dataset: Dataset) -> tuple[str, str]:
  """(route mode, why) for eval.routes on `dataset`. "auto" (the default) reads the pair sets with
  the rule of loss.infonce_positives="auto" (data.choose_positives): "ensemble_all" where every pair
  set is instance-level (the routes into the query's and gallery's own spaces add to the ensemble:
  never-paired MRR mv6 0.518 -> 0.536, fsdd_chain 0.428 -> 0.461), "ensemble" where any pair set is
  class-level (those routes cost zero-shot mAP on the digits set: 0.956 -> 0.944); docs/evaluation.md."""
  if mode != "auto":
    return mode, "asked for"
  pair_sets = [(a, b) for a, b in dataset.pairs if len(dataset.pairs_for(a, b))]
  class_level = [f"{a}<->{b}" for a, b in pair_sets
                 if a in dataset.modalities and b in dataset.modalities
                 and data_lib.choose_positives(dataset, a, b, "auto")[0] != "pair"]
  if class_level or not pair_sets:
    return "ensemble", ("auto: class-level pair sets " + ", ".join(class_level)) if class_level else "auto: no pairs"
  return "ensemble_all", f"auto: all {len(pair_sets)} pair sets instance-level"


def csls_transform(zq: np.ndarray, zg: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """CSLS hubness correction (Conneau et al. 2018) as two embeddings whose cosine ranks the gallery
  as 2 cos(x, y) - r(y) does, r(y) = mean cosine of gallery row y to its k nearest queries.

  Transductive: r uses the whole query set. zq [n_q, d], zg [n_g, d] (unit rows) -> [n, d + 2]:
  queries [x, 1, 0], gallery [y, -r/2, sqrt(1/4 - r^2/4)]; every row of a side has the same norm,
  so cosine = (cos - r/2) / const."""
  return hubness_transform(zq, zg, knn_mean_similarity(zg, zq, k))


QUERYBANK_K = 10            # eval.querybank_k=-1 (auto): neighbours where every pair set is instance-level
QUERYBANK_MAX_ROWS = 2048   # train rows of the query modality in the bank (a seeded sample beyond)


def resolve_querybank(k: int, dataset: Dataset, csls_k: int = 0, split: str = "test") -> tuple[int, str]:
  """(neighbours, why) for eval.querybank_k on `dataset`: k >= 0 as asked; -1 (auto, the default)
  reads the pair sets with the rule of routes="auto": QUERYBANK_K where every pair set is
  instance-level (docs/evaluation.md, "Hubness"), off where any is class-level (class-level mAP
  gains nothing: digits 0.956 -> 0.952), off where CSLS (eval.csls_k) is asked for, which
  corrects the same thing from the test queries, and off where the evaluated split is not "test"
  (the bank is the train rows: scored against themselves, each right answer would be penalised by
  its own query)."""
  k = int(k)
  if k >= 0:
    return k, "asked for"
  if csls_k and csls_k > 0:
    return 0, "auto: off, eval.csls_k is set"
  if split != "test":
    return 0, f"auto: off, the {split} split holds the bank's own train rows"
  mode, why = resolve_route_mode("auto", dataset)
  if mode == "ensemble_all":
    return QUERYBANK_K, why
  return 0, why


def hubness_transform(zq: np.ndarray, zg: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Two embeddings whose cosine ranks the gallery for each query as cos(x, y) - r(y)/2 does, for
  a per-gallery-row penalty r in [-1, 1] (zq, zg unit rows) -> [n, d + 2]: queries [x, 1, 0],
  gallery [y, -r/2, sqrt(1/4 - r^2/4)]; every row of a side has the same norm, so the cosine is
  (cos - r/2) / const and rankings (R@k, mAP, MRR) follow cos - r/2, i.e. CSLS's 2 cos - r."""
  zq = np.asarray(zq, np.float32)
  zg = np.asarray(zg, np.float32)
  a = -np.clip(np.asarray(r, np.float32), -1.0, 1.0) / 2
  q = np.concatenate([zq, np.ones((len(zq), 1), np.float32), np.zeros((len(zq), 1), np.float32)], 1)
  g = np.concatenate([zg, a[:, None], np.sqrt(np.maximum(0.25 - a ** 2, 0.0))[:, None]], 1)
  return q, g


def knn_mean_similarity(zg: np.ndarray, zb: np.ndarray, k: int) -> np.ndarray:
  """[n_g]: mean cosine of each row of zg to its k nearest rows of zb (unit rows), in blocks."""
  zg = np.asarray(zg, np.float32)
  zb = np.asarray(zb, np.float32)
  k = max(1, min(int(k), len(zb)))
  r = np.empty(len(zg), np.float32)
  n = len(zb)
  for lo in range(0, len(zg), 2048):
    sims = zg[lo:lo + 2048] @ zb.T
    sims.partition(n - k, axis=1)   # in place: the k largest last
    r[lo:lo + 2048] = np.mean(sims[:, n - k:], axis=1)
  return r


def querybank_scores(aligner: Aligner, dataset: Dataset, enc: Encoded, zq: np.ndarray, k: int,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Query-bank hubness correction, the inductive form of CSLS (cf. QB-Norm, Bogolin et al., CVPR
  2022): gallery row y is penalised by r(y), its mean cosine to its k nearest rows of a *bank*, the
  query modality's train rows (at most QUERYBANK_MAX_ROWS, seeded) brought along the same route,
  and ranked by cos(x, y) - r(y)/2. Hubs, gallery rows close to many queries whatever the query, are
  pushed down. Unlike eval.csls_k it never reads the test queries: a gallery row's penalty depends on
  that row and the train data only. Returns (zq, zg) as hubness_transform writes them (zq: the
  rows to score, e.g. a sample of enc.zq); unchanged if the query modality has no train rows."""
  q, g = enc.spec.query, enc.spec.gallery
  bank = _subsample(split_rows(dataset, q, "train"), QUERYBANK_MAX_ROWS, seed, "querybank", q)
  if len(bank) == 0:
    return zq, enc.zg
  mq, mg = dataset.modalities[q], dataset.modalities[g]
  zb, _ = aligner.encode(q, g, enc.spec.route, mq.emb[bank], mg.emb[enc.gallery_rows[:2]])
  unit = lambda z: metrics_lib.unit_rows(np.asarray(z, np.float32))
  zg = unit(enc.zg)
  return hubness_transform(unit(zq), zg, knn_mean_similarity(zg, unit(zb), k))


@dataclasses.dataclass
class GraphAligner:
  """Any strategy whose model is translators on a graph (graph, pivot, pairwise, C-MCR).

  Routes (see graphbridge/routes.py): `a->b->c` translates queries into the gallery's space;
  `a->p<-c` translates both sides into the meeting node p; `r1 + r2 + ...` averages the cosine
  similarity matrices of several routes. The default route (docs/evaluation.md, "Routes"): the
  direct edge where there is one; for modalities never paired, `routes="auto"` (default) is
  "ensemble_all" on instance-level pair sets and "ensemble" otherwise (resolve_route_mode);
  `routes="ensemble"`
  averages the fewest-hop routes that meet at a node between query and gallery (one per meeting
  node), `"ensemble_all"` also those into the query's or gallery's own space, `"best"` takes the
  best one (fewest hops, then the shortest longer side, then into the gallery's space). Edges trained by
  cycles only (`not_hops`, set from the data by `bind_data`) are never taken as a hop: they have
  no pairs behind them. csls_k > 0: CSLS hubness correction (transductive: uses the query set)."""
  layout: object
  params: Mapping
  compute_dtype: str = "float32"
  name: str = "graph"
  routes: str = "auto"
  csls_k: int = 0
  not_hops: frozenset | None = None   # None: not yet read from the data (bind_data)
  auto_routes: str | None = None      # the mode routes="auto" resolves to (bind_data; "ensemble" before)

  def __post_init__(self):
    if self.routes not in ROUTE_MODES:
      raise ValueError(f"routes={self.routes!r}: choose one of {', '.join(ROUTE_MODES)}")

  def bind_data(self, dataset: Dataset) -> None:
    """Edges between two modalities of the data that have no pairs (graph.extra_edges, trained by
    cycles only) are no paired hop: routes never take them. Called by evaluation."""
    if self.routes == "auto" and self.auto_routes is None:
      self.auto_routes = resolve_route_mode("auto", dataset)[0]
    if self.not_hops is None:
      self.not_hops = frozenset(e for e in self.layout.graph.edges if e.src in dataset.modalities
                                and e.dst in dataset.modalities and not dataset.pairs_for(e.src, e.dst).size)

  def route_graph(self) -> ModalityGraph:
    from graphbridge.routes import without_edges
    return without_edges(self.layout.graph, self.not_hops or ())

  def default_route(self, query: str, gallery: str) -> str | None:
    from graphbridge.routes import ensemble_name, meeting_routes
    graph = self.route_graph()
    if query not in graph.dims or gallery not in graph.dims:
      return None
    mode = self.route_mode
    routes = meeting_routes(graph, query, gallery, interior=mode == "ensemble")
    if not routes:
      return None
    if mode == "best" or routes[0].hops < 2 or len(routes) == 1:
      return routes[0].name
    return ensemble_name(routes)

  @property
  def route_mode(self) -> str:
    """The route mode in use: routes, with "auto" as bind_data resolved it ("ensemble" if unbound)."""
    return (self.auto_routes or "ensemble") if self.routes == "auto" else self.routes

  def route_ends(self, route: str) -> tuple[str, str]:
    from graphbridge.routes import parse_route, split_ensemble
    parsed = parse_route(self.layout.graph, split_ensemble(route)[0])
    return parsed.query, parsed.gallery

  def translate_many(self, routes: Sequence[str], x: np.ndarray) -> dict[str, np.ndarray]:
    """{path: [n, d_dst]} for the same rows x [n, d_src] along several paths (see translate_paths)."""
    return translate_paths(self.layout, self.params, self.compute_dtype, routes, x)

  def translate(self, path: str, x: np.ndarray) -> np.ndarray:
    """x: [n, d_src] -> [n, d_dst] float32 along one path (a single node: x itself), L2-normalised."""
    if "->" not in path:
      x = np.asarray(x, np.float32)
      return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-8)
    return translate_paths(self.layout, self.params, self.compute_dtype, [path], x)[path]

  def encode(self, query, gallery, route, xq, xg):
    from graphbridge.routes import parse_route, split_ensemble
    parts = split_ensemble(route)
    zqs, zgs = [], []
    for part in parts:
      parsed = parse_route(self.layout.graph, part)
      if (parsed.query, parsed.gallery) != (query, gallery):
        raise GraphError(f"route {part} does not join {query} (query) and {gallery} (gallery)")
      zqs.append(self.translate(path_name(parsed.query_path), xq))
      zgs.append(self.translate(path_name(parsed.gallery_path), xg))
    if len(parts) == 1:
      zq, zg = zqs[0], zgs[0]
    else:  # unit rows side by side, / sqrt(R): the cosine is the mean of the routes' cosines
      scale = np.float32(1.0 / np.sqrt(len(parts)))
      zq, zg = np.concatenate(zqs, 1) * scale, np.concatenate(zgs, 1) * scale
    if self.csls_k > 0:
      zq, zg = csls_transform(zq, zg, self.csls_k)
    return zq, zg


# ---- tables ------------------------------------------------------------------------------------

def format_table(rows: Sequence[Mapping], columns: Sequence[str], floats: str = "{:.3f}") -> str:
  """Markdown table."""
  def cell(v):
    if isinstance(v, float):
      return "nan" if v != v else floats.format(v)
    return "" if v is None else str(v)
  lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
  lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
  return "\n".join(lines)


RETRIEVAL_COLUMNS = ("query", "gallery", "route", "hops", "level", "mAP", "R@1", "R@5", "R@10",
                     "median_rank", "chance_mAP", "chance_R@1")


def summarize_by_hops(rows: Sequence[Mapping]) -> list[dict]:
  """Mean metrics over rows grouped by (level, hops): 1 = directly paired, 2+ = never paired."""
  groups: dict[tuple, list] = {}
  for r in rows:
    groups.setdefault((r["level"], r["hops"]), []).append(r)
  out = []
  for (level, hops), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or 99)):
    out.append({"level": level, "hops": hops, "pairs": len(rs),
                **{k: float(np.mean([r[k] for r in rs])) for k in ("mAP", "R@1", "R@10", "chance_mAP")
                   if all(k in r for r in rs)}})
  return out


def write_json(path: str, obj) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(obj, f, indent=1, default=lambda o: o.item() if hasattr(o, "item") else str(o))
