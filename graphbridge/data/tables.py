"""Memory-mapped embedding tables read row by row (`NormalizedRows`) and the sampler arrays that
hold them: data larger than RAM."""

from __future__ import annotations

from typing import Mapping
import numpy as np

from graphbridge.core.rows import unit_rows
from graphbridge.core.errors import DataError
from typing import Sequence


_READ_POOL = None


READ_THREADS = (
  32  # concurrent row reads: random reads from disk are latency-bound, not bandwidth-bound
)


def _read_rows(raw, sorted_ids: np.ndarray) -> np.ndarray:
  """raw[sorted_ids] as float32; large requests are split over a thread pool (numpy releases the
  GIL while it copies, so the page faults of the chunks overlap)."""
  global _READ_POOL
  if len(sorted_ids) < 256 or READ_THREADS <= 1:
    return np.asarray(raw[sorted_ids], np.float32)
  if _READ_POOL is None:
    from concurrent.futures import ThreadPoolExecutor

    _READ_POOL = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="graphbridge-read")
  out = np.empty((len(sorted_ids),) + tuple(raw.shape[1:]), np.float32)
  bounds = np.linspace(0, len(sorted_ids), min(READ_THREADS, len(sorted_ids) // 32) + 1).astype(int)

  def read(i):
    out[bounds[i] : bounds[i + 1]] = raw[sorted_ids[bounds[i] : bounds[i + 1]]]

  list(_READ_POOL.map(read, range(len(bounds) - 1)))
  return out


class NormalizedRows:
  """Read-only [N, d] view of an embedding table on disk (a memory-mapped .npy of any float
  dtype): indexing reads only the rows asked for and returns them float32, L2-normalised.

  Stands in for `Modality.emb` of a data set loaded with `load_memmapped`, so evaluation code that
  indexes rows (emb[rows], emb[mask], emb[:64]) works unchanged; np.asarray(view) reads the whole
  table (what the device sampler needs) in chunks. Non-finite and zero rows are reported when
  read."""

  def __init__(self, raw, name: str):
    if np.ndim(raw) != 2:
      raise DataError(f"{name}_emb must be a [rows, dim] array, got shape {np.shape(raw)}")
    if not np.issubdtype(raw.dtype, np.floating):
      raise DataError(f"{name}_emb must be floating point, got dtype {raw.dtype}")
    self.raw, self.name = raw, name
    self.shape = (int(raw.shape[0]), int(raw.shape[1]))
    mapping = getattr(
      raw, "_mmap", None
    )  # np.memmap's mmap object (np.load(mmap_mode=...) of a file)
    if mapping is not None and hasattr(mapping, "madvise"):
      import mmap

      # batches read scattered rows: the kernel's read-ahead would page in ~128 KB around each one
      mapping.madvise(mmap.MADV_RANDOM)
    self.dtype = np.dtype(np.float32)
    self.ndim = 2

  def __len__(self) -> int:
    return self.shape[0]

  def __repr__(self) -> str:
    return f"NormalizedRows({self.name!r}, shape={self.shape}, on disk as {self.raw.dtype})"

  def _row_ids(self, index) -> np.ndarray | int:
    if isinstance(index, slice):
      return np.arange(*index.indices(self.shape[0]))
    if isinstance(index, (int, np.integer)):
      return int(index)
    index = np.asarray(index)
    if index.dtype == bool:
      if index.shape != (self.shape[0],):
        raise IndexError(
          f"boolean index of shape {index.shape} for {self.shape[0]} rows of {self.name}"
        )
      return np.nonzero(index)[0]
    return index

  def __getitem__(self, index):
    rest = ()
    if isinstance(index, tuple):
      index, rest = index[0], index[1:]
    ids = self._row_ids(index)
    if isinstance(ids, int):
      out = self.rows(np.asarray([ids]))[0]
      return out[rest] if rest else out
    out = self.rows(ids.reshape(-1)).reshape(ids.shape + (self.shape[1],))
    return out[(slice(None),) * ids.ndim + rest] if rest else out

  def rows(self, ids: np.ndarray) -> np.ndarray:
    """[len(ids), d] float32, L2-normalised; reads each distinct row once, in file order."""
    ids = np.asarray(ids, np.int64)
    if len(ids) == 0:
      return np.zeros((0, self.shape[1]), np.float32)
    unique, inverse = np.unique(ids, return_inverse=True)
    if unique[0] < -self.shape[0] or unique[-1] >= self.shape[0]:
      raise IndexError(f"row {int(unique[-1])} out of range for {self.name} ({self.shape[0]} rows)")
    x = _read_rows(self.raw, unique)
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
      row = int(unique[np.argmin(finite)])
      kind = "NaN" if np.isnan(x[np.argmin(finite)]).any() else "inf"
      raise DataError(f"embedding {self.name!r} row {row} has {kind}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if not norms.all():
      raise DataError(
        f"embedding {self.name!r} row {int(unique[np.argmin(norms[:, 0])])} has zero norm; "
        "cosine alignment needs non-zero embeddings"
      )
    x = unit_rows(x, floor=0)  # non-zero rows (checked above)
    return x if len(unique) == len(ids) and np.array_equal(unique, ids) else x[inverse.reshape(-1)]

  def __array__(self, dtype=None, copy=None):
    out = np.empty(self.shape, np.float32)
    chunk = max(1, (64 << 20) // max(4 * self.shape[1], 1))  # ~64 MB at a time
    for start in range(0, self.shape[0], chunk):
      out[start : start + chunk] = self.rows(np.arange(start, min(start + chunk, self.shape[0])))
    return out if dtype is None else out.astype(dtype)


def materialize_tables(arrays):
  """Sampler arrays with every `NormalizedRows` view read into a numpy array (the device sampler
  needs whole tables); other leaves are returned as they are."""
  if isinstance(arrays, NormalizedRows):
    return np.asarray(arrays)
  if isinstance(arrays, Mapping):
    return {k: materialize_tables(v) for k, v in arrays.items()}
  return arrays


def is_table(keys: Sequence[str], leaf) -> bool:
  """Embedding tables of sampler arrays: arrays["emb"][m] or arrays["<name>_emb"], [N, d]."""
  return isinstance(leaf, NormalizedRows) or (
    np.ndim(leaf) == 2 and bool(keys) and ("emb" in keys[:-1] or keys[-1].endswith("_emb"))
  )
