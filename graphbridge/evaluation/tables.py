"""The report's other tables (gap, silhouette, reconstruction, by hops) and their formatting."""

from __future__ import annotations

from graphbridge.core.rows import _subsample

import json
import os
from typing import Mapping, Sequence
import numpy as np
from graphbridge.evaluation import geometry as geometry_lib
from graphbridge.data.dataset import Dataset
from graphbridge.core.graph import path_name
from graphbridge.core.routes import short_name, split_ensemble
from graphbridge.data.dataset import split_rows
from graphbridge.evaluation.encoding import Aligner
from graphbridge.evaluation.encoding import (
  Encoded,
  EncodingCache,
  RouteSpec,
  pairs_graph,
  planned_routes,
)
from graphbridge.model.translate import translate_paths


def gap_rows(
  aligner: Aligner,
  dataset: Dataset,
  split: str = "test",
  before: Aligner | None = None,
  routes: Sequence[RouteSpec] | None = None,
  cache: EncodingCache | None = None,
  cache_before: EncodingCache | None = None,
) -> list[dict]:
  """Modality gap per route: distance between the centroids of translated query rows and gallery
  rows.

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
      raw_centroids[m] = geometry_lib.unit_centroid(dataset.modalities[m].emb[rows], m)
    return raw_centroids[m]

  rows = []
  for spec in routes:
    enc = cache.get(spec)
    if enc is None:
      continue
    same_dim = (
      dataset.modalities[spec.query].emb.shape[1] == dataset.modalities[spec.gallery].emb.shape[1]
    )
    raw = (
      geometry_lib.centroid_gap(
        raw_centroid(spec.query, enc.query_rows), raw_centroid(spec.gallery, enc.gallery_rows)
      )
      if same_dim
      else None
    )
    enc_before = cache_before.get(spec) if before is not None else None
    rows.append(
      {
        "strategy": aligner.name,
        "query": spec.query,
        "gallery": spec.gallery,
        "route": spec.route,
        "hops": hops_graph.hop_distance(spec.query, spec.gallery),
        "gap_raw": raw,
        "gap_before": None
        if enc_before is None
        else geometry_lib.modality_gap(enc_before.zq, enc_before.zg),
        "gap_after": geometry_lib.modality_gap(enc.zq, enc.zg),
      }
    )
  return rows


def _silhouette(emb: np.ndarray, labels: np.ndarray) -> float | None:
  if len(np.unique(labels)) < 2 or len(np.unique(labels)) > len(labels) - 1:
    return None
  return geometry_lib.silhouette_cosine(emb, labels)


def silhouette_rows(
  aligner: Aligner,
  dataset: Dataset,
  split: str = "test",
  before: Aligner | None = None,
  routes: Sequence[RouteSpec] | None = None,
  cache: EncodingCache | None = None,
  cache_before: EncodingCache | None = None,
  sample: int = 500,
  seed: int = 0,
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
    out.append(
      {
        "strategy": aligner.name,
        "query": spec.query,
        "gallery": spec.gallery,
        "route": spec.route,
        "query_raw": raw_score(spec.query),
        "gallery_raw": raw_score(spec.gallery),
        "query_translated": _silhouette(*pick(enc, "q", sample)),
        "mixed_before": mixed(cache_before.get(spec)) if before is not None else None,
        "mixed": mixed(enc),
      }
    )
  return out


def _id_matched(
  dataset: Dataset, src: str, dst: str, src_rows: np.ndarray, split: str
) -> tuple[np.ndarray, np.ndarray] | None:
  """(positions into src_rows, dst rows) for src rows whose id occurs among dst's split rows."""
  a, b = dataset.modalities[src], dataset.modalities[dst]
  if a.ids is None or b.ids is None:
    return None
  b_rows = split_rows(dataset, dst, split)
  if len(b_rows) == 0 or len(src_rows) == 0:  # a modality without rows in the split
    return None
  ids, first = np.unique(b.ids[b_rows], return_index=True)
  pos = np.searchsorted(ids, a.ids[src_rows])
  found = (pos < len(ids)) & (ids[np.minimum(pos, len(ids) - 1)] == a.ids[src_rows])
  if not found.any():
    return None
  return np.nonzero(found)[0], b_rows[first[pos[found]]]


def _paired(
  dataset: Dataset, src: str, dst: str, split: str, max_rows: int, seed: int
) -> tuple[np.ndarray, str] | None:
  """[P, 2] pairs (src row, dst row) of the data, with both rows in `split` if any, else train
  pairs."""
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


def reconstruction_rows(
  aligner: Aligner,
  dataset: Dataset,
  split: str = "test",
  cycle_length: int = 3,
  path_hops: int = 3,
  max_rows: int = 2000,
  max_paths: int = 200,
  seed: int = 0,
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
    return translate_paths(
      layout, aligner.params, getattr(aligner, "compute_dtype", "float32"), routes, x
    )

  graph = layout.graph
  has_rows = set(dataset.names)  # virtual nodes (shared spaces) can be passed through, not scored
  cycles = [c for c in graph.cycles(max_length=cycle_length) if c[0] in has_rows]
  paths = sorted(
    (p for p in graph.paths_up_to(path_hops) if p[0] in has_rows and p[-1] in has_rows), key=len
  )[:max_paths]

  directions: dict[str, np.ndarray] = {}  # the mean train row of each target modality, once

  def baseline(m: str, target: np.ndarray) -> float:
    if m not in directions:
      mod = dataset.modalities[m]
      directions[m] = geometry_lib.mean_direction(mod.emb[mod.train])
    return geometry_lib.mean_direction_cosine(directions[m], target)

  out = []
  for start in (m for m in graph.node_names if m in has_rows):
    mine_cycles = [c for c in cycles if c[0] == start]
    mine_paths = [p for p in paths if p[0] == start]
    rows = _subsample(split_rows(dataset, start, split), max_rows, seed, start)
    if len(rows) == 0 or not (mine_cycles or mine_paths):
      continue
    x = dataset.modalities[start].emb[rows]
    matched = {p: _id_matched(dataset, start, p[-1], rows, split) for p in mine_paths}
    wanted = [path_name(c) for c in mine_cycles] + [
      path_name(p) for p in mine_paths if matched[p] is not None
    ]
    z = translate_many(wanted, x) if wanted else {}
    for c in mine_cycles:
      out.append(
        {
          "strategy": aligner.name,
          "kind": "cycle",
          "route": path_name(c),
          "hops": len(c) - 1,
          "start": start,
          "end": start,
          "target": "same rows",
          "n": len(rows),
          "cosine": geometry_lib.mean_cosine(z[path_name(c)], x),
          "baseline": baseline(start, x),
        }
      )
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
        pred = translate_many([path_name(p)], dataset.modalities[start].emb[pairs[:, 0]])[
          path_name(p)
        ]
        target = dataset.modalities[end].emb[pairs[:, 1]]
      else:
        continue
      out.append(
        {
          "strategy": aligner.name,
          "kind": "path",
          "route": path_name(p),
          "hops": len(p) - 1,
          "start": start,
          "end": end,
          "target": what,
          "n": len(target),
          "cosine": geometry_lib.mean_cosine(pred, target),
          "baseline": baseline(end, target),
        }
      )
  out.sort(key=lambda r: (r["kind"] != "path", r["hops"], r["route"]))
  return out


def summarize_reconstruction(rows: Sequence[Mapping]) -> list[dict]:
  """Mean cosine and mean baseline per (kind, hops)."""
  groups: dict[tuple, list] = {}
  for r in rows:
    groups.setdefault((r["kind"], r["hops"]), []).append(r)
  return [
    {
      "kind": kind,
      "hops": hops,
      "routes": len(rs),
      "cosine": float(np.mean([r["cosine"] for r in rs])),
      "baseline": float(np.mean([r["baseline"] for r in rs])),
    }
    for (kind, hops), rs in sorted(groups.items(), key=lambda kv: (kv[0][0] != "path", kv[0][1]))
  ]


def hub_modality(dataset: Dataset) -> str:
  """The modality paired with the most others (ties: data order): the common space of the
  picture."""
  graph = pairs_graph(dataset)
  return max(dataset.names, key=lambda m: (len(graph.out_edges(m)), -dataset.names.index(m)))


def common_space_rows(
  aligner: Aligner, dataset: Dataset, space: str, cache: EncodingCache
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
  return {m: out[m] for m in dataset.names if m in out}, {
    m: routes[m] for m in dataset.names if m in routes
  }


def format_table(rows: Sequence[Mapping], columns: Sequence[str], floats: str = "{:.3f}") -> str:
  """Markdown table. A route ensemble shows by its short name (routes.short_name; the report
  spells it out, ensemble_legend)."""

  def cell(column, v):
    if isinstance(v, float):
      return "nan" if v != v else floats.format(v)
    if column == "route" and isinstance(v, str):
      return short_name(v)
    return "" if v is None else str(v)

  lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
  lines += ["| " + " | ".join(cell(c, r.get(c)) for c in columns) + " |" for r in rows]
  return "\n".join(lines)


def ensemble_legend(rows: Sequence[Mapping]) -> list[str]:
  """'query -> gallery, short name: the routes it averages' for every ensemble among `rows`."""
  seen, out = set(), []
  for r in rows:
    route = r.get("route")
    if not isinstance(route, str) or len(split_ensemble(route)) < 2 or route in seen:
      continue
    seen.add(route)
    parts = ", ".join(f"`{one}`" for one in split_ensemble(route))
    out.append(f"{r.get('query')} -> {r.get('gallery')}, {short_name(route)}: {parts}")
  return out


RETRIEVAL_COLUMNS = (
  "query",
  "gallery",
  "route",
  "hops",
  "edges",
  "level",
  "mAP",
  "R@1",
  "R@5",
  "R@10",
  "median_rank",
  "chance_mAP",
  "chance_R@1",
)


def summarize_by_hops(rows: Sequence[Mapping]) -> list[dict]:
  """Mean metrics over rows grouped by (level, hops): 1 = directly paired, 2+ = never paired."""
  groups: dict[tuple, list] = {}
  for r in rows:
    groups.setdefault((r["level"], r["hops"]), []).append(r)
  out = []
  for (level, hops), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or 99)):
    out.append(
      {
        "level": level,
        "hops": hops,
        "pairs": len(rs),
        **{
          k: float(np.mean([r[k] for r in rs]))
          for k in ("mAP", "R@1", "R@10", "chance_mAP")
          if all(k in r for r in rs)
        },
      }
    )
  return out


def write_json(path: str, obj) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(obj, f, indent=1, default=lambda o: o.item() if hasattr(o, "item") else str(o))
