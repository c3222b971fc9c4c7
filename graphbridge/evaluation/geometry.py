"""Geometry of the embeddings: modality gap, cosine silhouette, reconstruction cosines."""

from __future__ import annotations

from typing import Any
import numpy as np
from graphbridge.evaluation.metrics import (
  _as_embeddings,
  _as_keys,
  _check_positive_int,
  _check_same_dim,
)
from graphbridge.evaluation.ranks import _l2_normalise


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
  return centroid_gap(
    _l2_normalise(emb_a.astype(np.float64)).mean(axis=0),
    _l2_normalise(emb_b.astype(np.float64)).mean(axis=0),
  )


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


def mean_cosine(pred: Any, target: Any) -> float:
  """Mean row-wise cosine similarity between predictions and targets.

  Args:
    pred: [n, d] float; target: [n, d] float (same shape).
  """
  pred = _as_embeddings("pred", pred)
  target = _as_embeddings("target", target)
  if pred.shape != target.shape:
    raise ValueError(
      f"pred and target must have the same shape; got {pred.shape} vs {target.shape}"
    )
  cos = np.sum(
    _l2_normalise(pred.astype(np.float64)) * _l2_normalise(target.astype(np.float64)), axis=1
  )
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
    raise ValueError(
      "the mean of train_target is the zero vector; its cosine with targets is undefined"
    )
  return mean_vector / norm


def mean_direction_cosine(direction: np.ndarray, target: Any) -> float:
  """Mean over rows of target [n, d] of their cosine with `direction` [d] (from
  :func:`mean_direction`)."""
  target = _as_embeddings("target", target)
  if target.shape[1] != direction.shape[0]:
    raise ValueError(
      f"train_target and target have different embedding dimensions "
      f"({direction.shape[0]} vs {target.shape[1]})"
    )
  cos = _l2_normalise(target.astype(np.float64)) @ direction
  return float(np.mean(cos))
