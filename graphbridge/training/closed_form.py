"""The closed-form start of translators with a linear path (`model.linear_rank`).

Each edge with train pairs starts as the ridge map of its pairs, its penalty chosen by
leave-one-out error (linear/baselines.ridge_loo_map, the map of the ridge-chain reference); the
MLP beside it is a residual whose output layer starts at zero (model/translators.py), so before
any step the translator *is* that map. Where the linear path is factored (rank r below the full
map), the start is the map's best rank-r approximation. The fitting lives here, not in model/:
the model layer only takes the arrays (`set_linear_map`).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
import numpy as np

from graphbridge.data.dataset import Dataset
from graphbridge.linear import baselines as baselines_lib
from graphbridge.model.translators import TranslatorArch, linear_rank, set_linear_map

MIN_PAIRS = 3  # the leave-one-out penalty needs three pairs; fewer keep the random start


@dataclasses.dataclass(frozen=True, eq=False)
class LinearStart:
  """x -> x @ left @ right + bias: one edge's ridge map (left [d_in, k], right [k, d_out])."""

  left: np.ndarray
  right: np.ndarray
  bias: np.ndarray
  alpha: float
  pairs: int

  def apply(self, x) -> np.ndarray:
    return (np.asarray(x, np.float64) @ self.left) @ self.right + self.bias


def fit_start(dataset: Dataset, src: str, dst: str, pairs: np.ndarray) -> LinearStart | None:
  """The ridge map src -> dst on `pairs` [P, 2] (rows of src, rows of dst); None below MIN_PAIRS."""
  pairs = np.asarray(pairs)
  if len(pairs) < MIN_PAIRS:
    return None
  x = np.asarray(dataset.modalities[src].emb[pairs[:, 0]], np.float64)
  y = np.asarray(dataset.modalities[dst].emb[pairs[:, 1]], np.float64)
  alpha, left, right, bias = baselines_lib.ridge_loo_map(x, y)
  return LinearStart(left, right, bias, alpha, len(pairs))


def factors(start: LinearStart, rank: int) -> tuple[np.ndarray, np.ndarray]:
  """(a [d_in, r'], b [r', d_out]) with a @ b the best rank-`rank` approximation of the start's
  map (r' = min(rank, rank of the map)); the singular values split evenly between the two.
  left has orthonormal columns (ridge_loo_map), so the SVD of `right` is the map's."""
  q, r = np.linalg.qr(start.left)
  u, s, vt = baselines_lib.thin_svd(r @ start.right)
  keep = min(rank, len(s))
  root = np.sqrt(s[:keep])
  return (q @ u[:, :keep]) * root, root[:, None] * vt[:keep]


def start_params(edge_params, arch: TranslatorArch, start: LinearStart):
  """One edge's params with the linear path at `start` and the MLP residual's output layer at zero:
  the translator is the start's map (its rank-r approximation on a factored path). Padding columns
  of a factored path beyond the map's rank keep their random linear_in and get zero linear_out
  rows, so the output is unchanged and the path can still grow there."""
  params = jax.tree.map(np.asarray, dict(edge_params))
  params["out"] = {k: np.zeros_like(v) for k, v in params["out"].items()}
  d_in, d_out = start.left.shape[0], start.right.shape[1]
  rank = linear_rank(d_in, d_out, arch.linear)
  if rank == 0:
    return set_linear_map(params, start.bias, kernel=start.left @ start.right)
  a, b = factors(start, rank)
  linear_in = np.array(params["linear_in"]["kernel"])
  linear_out = np.zeros((rank, d_out))
  linear_in[:, : a.shape[1]], linear_out[: b.shape[0]] = a, b
  return set_linear_map(params, start.bias, factors=(linear_in, linear_out))


def edge_starts(
  dataset: Dataset, pairs_by_edge: Mapping[str, np.ndarray]
) -> dict[str, LinearStart]:
  """{edge name: LinearStart} for every edge "a->b" of `pairs_by_edge` ({edge: [P, 2] rows of a,
  rows of b}) with at least MIN_PAIRS pairs."""
  out = {}
  for name, pairs in pairs_by_edge.items():
    src, dst = name.split("->")
    start = fit_start(dataset, src, dst, pairs)
    if start is not None:
      out[name] = start
  return out
