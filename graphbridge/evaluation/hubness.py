"""Hubness corrections: CSLS (transductive) and the query bank (inductive)."""

from __future__ import annotations

from graphbridge.core.rows import _subsample

import numpy as np
from graphbridge.core import rows as rows_lib
from graphbridge.data.dataset import Dataset
from graphbridge.data.dataset import split_rows
from graphbridge.evaluation.encoding import Aligner, resolve_route_mode
from graphbridge.evaluation.encoding import Encoded


def csls_transform(zq: np.ndarray, zg: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """CSLS hubness correction (Conneau et al. 2018) as two embeddings whose cosine ranks the gallery
  as 2 cos(x, y) - r(y) does, r(y) = mean cosine of gallery row y to its k nearest queries.

  Transductive: r uses the whole query set. zq [n_q, d], zg [n_g, d] (unit rows) -> [n, d + 2]:
  queries [x, 1, 0], gallery [y, -r/2, sqrt(1/4 - r^2/4)]; every row of a side has the same norm,
  so cosine = (cos - r/2) / const."""
  return hubness_transform(zq, zg, knn_mean_similarity(zg, zq, k))


QUERYBANK_K = 10  # eval.querybank_k=-1 (auto): neighbours where every pair set is instance-level


QUERYBANK_MAX_ROWS = 2048  # train rows of the query modality in the bank (a seeded sample beyond)


def resolve_querybank(
  k: int, dataset: Dataset, csls_k: int = 0, split: str = "test"
) -> tuple[int, str]:
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


def querybank_k_used(k: int, dataset: Dataset) -> dict[str, int]:
  """{query modality: the neighbours its bank gives} for eval.querybank_k=k: k, or fewer where the
  bank (the modality's train rows, at most QUERYBANK_MAX_ROWS) holds fewer rows."""
  return {
    m: min(int(k), len(split_rows(dataset, m, "train")), QUERYBANK_MAX_ROWS)
    for m in dataset.names
    if len(split_rows(dataset, m, "train"))
  }


def hubness_transform(
  zq: np.ndarray, zg: np.ndarray, r: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
  """Two embeddings whose cosine ranks the gallery for each query as cos(x, y) - r(y)/2 does, for
  a per-gallery-row penalty r in [-1, 1] (zq, zg unit rows) -> [n, d + 2]: queries [x, 1, 0],
  gallery [y, -r/2, sqrt(1/4 - r^2/4)]; every row of a side has the same norm, so the cosine is
  (cos - r/2) / const and rankings (R@k, mAP, MRR) follow cos - r/2, i.e. CSLS's 2 cos - r."""
  zq = np.asarray(zq, np.float32)
  zg = np.asarray(zg, np.float32)
  a = -np.clip(np.asarray(r, np.float32), -1.0, 1.0) / 2
  q = np.concatenate([zq, np.ones((len(zq), 1), np.float32), np.zeros((len(zq), 1), np.float32)], 1)
  g = np.concatenate([zg, a[:, None], np.sqrt(np.maximum(0.25 - a**2, 0.0))[:, None]], 1)
  return q, g


def knn_mean_similarity(zg: np.ndarray, zb: np.ndarray, k: int) -> np.ndarray:
  """[n_g]: mean cosine of each row of zg to its k nearest rows of zb (unit rows), in blocks."""
  zg = np.asarray(zg, np.float32)
  zb = np.asarray(zb, np.float32)
  k = max(1, min(int(k), len(zb)))
  r = np.empty(len(zg), np.float32)
  n = len(zb)
  for lo in range(0, len(zg), 2048):
    sims = zg[lo : lo + 2048] @ zb.T
    sims.partition(n - k, axis=1)  # in place: the k largest last
    r[lo : lo + 2048] = np.mean(sims[:, n - k :], axis=1)
  return r


def unit(z) -> np.ndarray:
  """float32 unit rows, as the query bank computes its cosines."""
  return rows_lib.unit_rows(np.asarray(z, np.float32))


def bank_rows(
  aligner: Aligner, dataset: Dataset, query: str, gallery: str, route: str, seed: int = 0
):
  """The query bank along `route`: the query modality's train rows (at most QUERYBANK_MAX_ROWS,
  seeded), encoded as queries [n_bank, d]; None if the modality has no train rows."""
  bank = _subsample(
    split_rows(dataset, query, "train"), QUERYBANK_MAX_ROWS, seed, "querybank", query
  )
  if len(bank) == 0:
    return None
  mq, mg = dataset.modalities[query], dataset.modalities[gallery]
  zb, _ = aligner.encode(query, gallery, route, mq.emb[bank], mg.emb[:2])
  return zb


def querybank_scores(
  aligner: Aligner, dataset: Dataset, enc: Encoded, zq: np.ndarray, k: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
  """Query-bank hubness correction, the inductive form of CSLS (cf. QB-Norm, Bogolin et al., CVPR
  2022): gallery row y is penalised by r(y), its mean cosine to its k nearest rows of a *bank*, the
  query modality's train rows (bank_rows) brought along the same route, and ranked by
  cos(x, y) - r(y)/2. Hubs, gallery rows close to many queries whatever the query, are pushed down.
  Unlike eval.csls_k it never reads the test queries: a gallery row's penalty depends on that row
  and the train data only. Returns (zq, zg) as hubness_transform writes them (zq: the rows to score,
  e.g. a sample of enc.zq); unchanged if the query modality has no train rows."""
  zb = bank_rows(aligner, dataset, enc.spec.query, enc.spec.gallery, enc.spec.route, seed)
  if zb is None:
    return zq, enc.zg
  zg = unit(enc.zg)
  return hubness_transform(unit(zq), zg, knn_mean_similarity(zg, unit(zb), k))
