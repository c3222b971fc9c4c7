"""Row helpers shared by every layer: unit rows, seeded deterministic row samples."""

from __future__ import annotations

import numpy as np
import zlib


def unit_rows(x: np.ndarray) -> np.ndarray:
  """x / its row norms (rows of norm 0 stay 0), in x's dtype."""
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _stable_rng(seed: int, *names: str) -> np.random.Generator:
  return np.random.default_rng([int(seed)] + [zlib.crc32(n.encode()) for n in names])


def _subsample(rows: np.ndarray, size: int | None, seed: int, *names: str) -> np.ndarray:
  """At most `size` of `rows` (sorted, deterministic per names)."""
  if size is None or len(rows) <= size:
    return rows
  return np.sort(_stable_rng(seed, *names).choice(rows, size, replace=False))
