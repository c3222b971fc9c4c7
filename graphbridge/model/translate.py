"""Translating rows along paths outside the training step (evaluation, the Python API):
jitted per-edge calls over fixed-size chunks, shared path prefixes computed once."""

from __future__ import annotations

import functools
from typing import Mapping, Sequence
import numpy as np

from graphbridge.core.rows import unit_rows
from graphbridge.core.errors import GraphError
from graphbridge.core.graph import path_edges
from graphbridge.model import translators as translators_lib


TRANSLATE_CHUNK = 1024  # rows per jitted call; inputs are padded to it, so each edge compiles once


@functools.cache
def _edge_fn():
  """One jitted translator call per (d_out, architecture, dtype), not per edge: the edge's params
  are an argument, so every edge of a bucket (and the same edges at initialisation) share one
  compile."""
  import jax

  def apply(edge_params, x, d_out, arch, dtype_name):
    module = translators_lib.Translator(
      d_out, arch, dtype=translators_lib.dtype_from_name(dtype_name)
    )
    return module.apply({"params": edge_params}, x)

  return jax.jit(apply, static_argnames=("d_out", "arch", "dtype_name"))


def _edge_params(layout, params: Mapping, edge):
  """(params of one edge, sliced from its bucket's stack; d_out; arch)."""
  one, bucket = translators_lib.edge_params(layout, params, edge)
  return one, bucket.d_out, bucket.arch


def translate_paths(
  layout, params: Mapping, compute_dtype: str, routes: Sequence[str], x: np.ndarray
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
    raise ValueError(
      f"translate: input must be [rows, {d_src}] ({starts[0]} embeddings), got shape {x.shape}"
    )
  fn = _edge_fn()
  edge_args = {}
  chunks: dict[str, list[np.ndarray]] = {r: [] for r in paths}
  for lo in range(0, max(len(x), 1), TRANSLATE_CHUNK):
    block = x[lo : lo + TRANSLATE_CHUNK]
    padded = np.zeros((TRANSLATE_CHUNK, d_src), np.float32)
    padded[: len(block)] = block
    prefix: dict[tuple, object] = {(): jnp.asarray(padded)}
    for route, path in paths.items():
      edges = path_edges(path)
      for i, edge in enumerate(edges):
        if edges[: i + 1] not in prefix:
          if edge not in edge_args:
            edge_args[edge] = _edge_params(layout, params, edge)
          edge_params, d_out, arch = edge_args[edge]
          prefix[edges[: i + 1]] = fn(
            edge_params, prefix[edges[:i]], d_out=d_out, arch=arch, dtype_name=compute_dtype
          )
      chunks[route].append(np.asarray(prefix[edges], np.float32)[: len(block)])
  out = {}
  for route, parts in chunks.items():
    z = np.concatenate(parts)
    out[route] = unit_rows(z, floor=1e-8, wide=True)
  return out
