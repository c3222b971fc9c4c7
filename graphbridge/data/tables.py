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


def _block_reader(raw):
  """read(start, stop) -> raw[start:stop] as a numpy array. A memory-mapped .npy (np.load with
  mmap_mode) is read with os.pread on its file, in order, so the kernel reads ahead."""
  import os

  filename = getattr(raw, "filename", None)
  header = None
  if isinstance(raw, np.memmap) and filename and raw.flags.c_contiguous:
    try:
      with open(filename, "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = (
          np.lib.format.read_array_header_1_0
          if version == (1, 0)
          else np.lib.format.read_array_header_2_0
        )
        header = read_header(f), f.tell()
    except (OSError, ValueError):
      header = None
  if header is None or header[0] != (tuple(raw.shape), False, raw.dtype):
    return lambda start, stop: np.asarray(raw[start:stop])
  offset, row_bytes = header[1], raw.dtype.itemsize * int(np.prod(raw.shape[1:]))

  def read(start, stop):
    out = np.empty((stop - start,) + tuple(raw.shape[1:]), raw.dtype)
    view = memoryview(out.reshape(-1).view(np.uint8))
    fd = os.open(filename, os.O_RDONLY)
    try:
      done = 0
      while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + start * row_bytes + done)
        if n <= 0:
          raise DataError(f"{filename}: file ends before row {stop}")
        done += n
    finally:
      os.close(fd)
    return out

  return read


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
    self._norms = None

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

  def row_norms(self, threads: int = 0) -> np.ndarray:
    """[N] float32: each row's L2 norm exactly as `rows` computes it (np.linalg.norm of the row
    read as float32), for the whole table, computed once and kept (4 bytes a row). The table is
    scanned in order with plain file reads (the mapping is advised MADV_RANDOM, which would page a
    scan in 4 KB at a time), in chunks over `threads` threads (0: one per CPU, at most 8). A row
    with NaN or inf has a non-finite norm, an all-zero row norm 0: `check_rows` reports them."""
    if self._norms is not None:
      return self._norms
    import os
    from concurrent.futures import ThreadPoolExecutor

    norms = np.empty(self.shape[0], np.float32)
    chunk = max(1, (4 << 20) // max(self.raw.dtype.itemsize * self.shape[1], 1))  # ~4 MB a read
    read = _block_reader(self.raw)

    def one(start):
      x = np.asarray(read(start, min(start + chunk, self.shape[0])), np.float32)
      with np.errstate(over="ignore", invalid="ignore"):
        norms[start : start + len(x)] = np.linalg.norm(x, axis=1)

    threads = threads or min(os.cpu_count() or 1, 8)
    with ThreadPoolExecutor(threads, thread_name_prefix="graphbridge-norms") as pool:
      list(pool.map(one, range(0, self.shape[0], chunk)))
    self._norms = norms
    return norms

  def check_rows(self, ids: np.ndarray, norms: np.ndarray) -> None:
    """Raises the DataError `rows(ids)` raises when one of the rows has NaN, inf or zero norm
    (`norms`: their row_norms)."""
    if np.isfinite(norms).all() and norms.all():
      return
    bad = int(np.asarray(ids).reshape(-1)[np.argmax(~np.isfinite(norms) | (norms == 0))])
    self.rows(np.asarray([bad]))  # raises with the row number and what is wrong
    raise DataError(f"embedding {self.name!r} row {bad} has a non-finite or zero norm")

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
