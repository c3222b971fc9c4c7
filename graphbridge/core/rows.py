"""Row helpers shared by every layer: unit rows, seeded deterministic row samples."""

from __future__ import annotations

import numpy as np
import zlib


def unit_rows(x: np.ndarray, floor: float = 1e-12, wide: bool = False, dtype=None) -> np.ndarray:
  """Every row of x [n, d] divided by its L2 norm, the one row normaliser of the library.

  floor: norms below it count as `floor` (rows of norm 0 stay 0; 0 divides as is, for rows
  checked to be non-zero). wide: norms and the division in float64, so large float32 values do
  not overflow. dtype: of the result (default: x's; float64 where `wide` and x is not float32)."""
  x = np.asarray(x)
  if wide:
    out_dtype = dtype or (np.float32 if x.dtype == np.float32 else np.float64)
    x = x.astype(np.float64)
  else:
    out_dtype = dtype or x.dtype
  norms = np.linalg.norm(x, axis=1, keepdims=True)
  out = x / (np.maximum(norms, floor) if floor else norms)
  return out.astype(out_dtype, copy=False)


def _stable_rng(seed: int, *names: str) -> np.random.Generator:
  return np.random.default_rng([int(seed)] + [zlib.crc32(n.encode()) for n in names])


def _subsample(rows: np.ndarray, size: int | None, seed: int, *names: str) -> np.ndarray:
  """At most `size` of `rows` (sorted, deterministic per names)."""
  if size is None or len(rows) <= size:
    return rows
  return np.sort(_stable_rng(seed, *names).choice(rows, size, replace=False))
