"""The host feed of data.host_sampling: each step's batch read from memory-mapped tables on worker
threads and placed on the device, float16 rows kept float16 until the device normalises them.

Where the time of the per-step HostSampler went (benchmarks/feed_bench.py, docs/scaling.md):
converting the rows to float32 and normalising them in numpy (numpy's float16 cast alone runs at
1.5-5 ns a value: 1,024 x 1,024 rows took 4-8 ms per table), copying twice the bytes to the device,
and splitting each read over 32 threads. HostFeed instead

- draws the (table, row) indices of a block of steps at once: the objective's own `sample()`, run
  on index tables as HostSampler does, vmapped over the block's step keys (the same keys, so the
  same rows: tested bit for bit);
- reads a batch entry's rows with one `np.take` from the memory-mapped table into its slot of a
  64-byte aligned buffer that holds every float16 entry of the same shape (on the CPU backend
  `device_put` adopts such a buffer without a copy), and packs every small leaf (row norms, pair
  labels) into one [B, columns] buffer: two transfers a step instead of one per leaf;
- keeps float16 rows float16: the host sends the rows and their norms, precomputed once per table
  by `NormalizedRows.row_norms` exactly as `rows()` computes them, and `finish` divides inside the
  jitted step (float16 -> float32 is exact and so is IEEE division, kept from XLA's rewrite into a
  multiplication by the reciprocal: the batch equals the one `rows()` normalises on the host).
  Tables of other dtypes are normalised on the host as before;
- runs whole steps on `workers` threads, `prefetch` steps ahead, in step order.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
from typing import Mapping

import numpy as np

from graphbridge.core.errors import DataError
from graphbridge.data.host import HostSampler, Prefetcher
from graphbridge.data.tables import NormalizedRows

ALIGN = 64  # bytes; XLA's CPU client adopts a numpy buffer aligned like this instead of copying


def aligned_empty(shape, dtype) -> np.ndarray:
  """np.empty(shape, dtype) whose data starts on an ALIGN-byte boundary."""
  dtype = np.dtype(dtype)
  size = int(np.prod(shape)) * dtype.itemsize
  raw = np.empty(size + ALIGN, np.uint8)
  start = (-raw.ctypes.data) % ALIGN
  return raw[start : start + size].view(dtype).reshape(shape)


@dataclasses.dataclass(frozen=True)
class _Column:
  """Columns [start, stop) of the packed small buffer hold batch leaf `leaf` (its norms if
  `norms`), of `shape` and `dtype` (4 bytes a value)."""

  leaf: int
  norms: bool
  start: int
  stop: int
  shape: tuple
  dtype: np.dtype


class HostFeed:
  """Batches of `sample(arrays, fold_in(rng, step), batch_size)` read on the host (the device
  sampler's batches, bit for bit), for tables too large for device memory.

  arrays: the objective's sampler arrays; [N, d] tables may be NormalizedRows views (memory-mapped
    .npy files) or numpy arrays. rng: the train state's RNG key.
  prefetch: steps read ahead (placed on the device, in step order); workers: threads reading them
    (default: prefetch; random reads from a disk are latency-bound, so many in flight help).
  index_block: steps whose indices one jitted call draws.

  A step travels as a list of `raw` arrays (`raw_shapes`): per group of float16 batch entries of
  one shape, their rows [G, B, ..., d] float16; the packed small leaves [B, columns] uint32 (row
  norms, labels); then every other leaf as it is. `finish(raw)`, run inside the jitted step,
  turns it into the batch the device sampler draws."""

  def __init__(
    self,
    sample,
    arrays: Mapping,
    batch_size: int,
    rng,
    prefetch: int = 16,
    workers: int | None = None,
    index_block: int = 64,
  ):
    import jax

    self.sampler = sampler = HostSampler(sample, arrays, batch_size, rng)
    self.batch_size = B = sampler.batch_size
    self.prefetch = max(int(prefetch), 1)
    self.workers = max(int(workers or self.prefetch), 1)
    self.index_block = max(int(index_block), 1)
    self._lock = threading.Lock()
    self._blocks: collections.OrderedDict = collections.OrderedDict()
    self.rows_read = 0  # table rows this process read (its own devices' share of each batch)
    self._finish = None
    self._index_block = jax.jit(jax.vmap(sampler.index_fn, in_axes=(None, None, 0)))
    shapes = jax.tree.leaves(sampler.batch_shapes)
    first = self._draw_block(0)
    # per batch leaf: None (not from a table) or (table, kind); kind float16 (rows sent float16,
    # divided on the device), normalise (NormalizedRows of another dtype: float32 from the host),
    # plain (an in-RAM table, gathered as it is)
    self._leaves = []
    for i, gathered in enumerate(sampler.gathered):
      if not gathered:
        self._leaves.append(None)
        continue
      table = int(first[i][0].reshape(-1, 2)[0, 0])
      rows = sampler.tables[table]
      kind = "plain"
      if isinstance(rows, NormalizedRows):
        kind = "normalise"
        if rows.raw.dtype == np.float16 and shapes[i].shape[:1] == (B,):  # norms pack by row
          kind = "float16"
      self._leaves.append((table, kind))
    self.rows_per_batch = sum(
      int(np.prod(s.shape[:-1])) for s, info in zip(shapes, self._leaves) if info is not None
    )
    # the raw layout: float16 groups, the packed small leaves, the rest alone
    groups: dict = {}
    columns, alone, width = [], [], 0
    for i, (shape, info) in enumerate(zip(shapes, self._leaves)):
      packs = shape.shape[:1] == (B,) and np.dtype(shape.dtype).itemsize == 4
      if info is not None and info[1] == "float16":
        groups.setdefault(tuple(shape.shape), []).append(i)
        n = int(np.prod(shape.shape[1:-1], dtype=np.int64))
        columns.append(_Column(i, True, width, width + n, shape.shape[:-1], np.dtype(np.float32)))
        width += n
      elif info is None and packs:
        n = int(np.prod(shape.shape[1:], dtype=np.int64))
        columns.append(_Column(i, False, width, width + n, shape.shape, np.dtype(shape.dtype)))
        width += n
      else:
        alone.append(i)
    self._groups = list(groups.items())  # [(shape of each member, [leaf, ...])]
    self._columns, self._width, self._alone = columns, width, alone
    self.raw_shapes = [
      jax.ShapeDtypeStruct((len(members),) + shape, np.float16) for shape, members in self._groups
    ]
    if columns:
      self.raw_shapes.append(jax.ShapeDtypeStruct((B, width), np.uint32))
    self.raw_shapes += [shapes[i] for i in alone]
    # every float16 table's norms, read once (in parallel with each other)
    self._norms = {}
    f16 = sorted({info[0] for info in self._leaves if info is not None and info[1] == "float16"})
    if f16:
      from concurrent.futures import ThreadPoolExecutor

      with ThreadPoolExecutor(len(f16)) as pool:
        norms = list(pool.map(lambda t: sampler.tables[t].row_norms(), f16))
      self._norms = dict(zip(f16, norms))
    self._clean = {t for t, n in self._norms.items() if np.isfinite(n).all() and n.all()}

  # -- indices --
  def _draw_block(self, block: int) -> list:
    """Flat index leaves of steps block*index_block.. (leading axis: the step)."""
    import jax

    steps = np.arange(block * self.index_block, (block + 1) * self.index_block, dtype=np.int32)
    leaves = jax.tree.leaves(self._index_block(self.sampler._small, self.sampler._rng, steps))
    return [np.asarray(x) for x in leaves]

  def _indices_of_block(self, block: int) -> list:
    """_draw_block with each gathered leaf as its table's row ids (int64), checked once."""
    out = []
    for x, info in zip(self._draw_block(block), self._leaves):
      if info is not None:
        if not (x[..., 0] == info[0]).all():
          raise DataError("host sampling: one batch entry gathers rows of several tables")
        x = x[..., 1].astype(np.int64)
      out.append(x)
    return out

  def indices(self, step: int) -> list:
    """The flat batch leaves of `step`, gathered leaves as their table's row ids [...] int64."""
    block, at = divmod(int(step), self.index_block)
    with self._lock:  # one thread draws a block; the others wait for it
      leaves = self._blocks.get(block)
      if leaves is None:
        leaves = self._indices_of_block(block)
        self._blocks[block] = leaves
        while len(self._blocks) > 4:  # steps run in order: older blocks are done
          self._blocks.popitem(last=False)
    return [x[at] for x in leaves]

  # -- reading --
  def _read(self, leaf: int, ids: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Rows `ids` [...] (int64) of leaf's table: float16 rows as stored (into `out` if given),
    else float32 rows, normalised unless the table is in RAM (and normalised already)."""
    table, kind = self._leaves[leaf]
    rows = self.sampler.tables[table]
    flat = ids.reshape(-1)
    with self._lock:
      self.rows_read += len(flat)
    if kind == "float16":
      if out is None:
        out = aligned_empty(ids.shape + (rows.shape[1],), np.float16)
      np.take(rows.raw, flat, axis=0, out=out.reshape(len(flat), -1), mode="clip")  # ids < N
      if table not in self._clean:  # a NaN, inf or zero row somewhere: is it one of these?
        rows.check_rows(flat, self._norms[table][flat])
      return out
    if kind == "normalise":
      return rows.rows(flat).reshape(ids.shape + (rows.shape[1],))
    return np.asarray(rows[flat]).reshape(ids.shape + (rows.shape[1],))

  def _packed(self, leaves: list, batch: slice = slice(None)) -> np.ndarray:
    """The packed small leaves of batch rows `batch`: [b, columns] uint32."""
    n = len(range(*batch.indices(self.batch_size)))
    out = aligned_empty((n, self._width), np.uint32)
    for c in self._columns:
      x = leaves[c.leaf][batch]
      if c.norms:
        x = self._norms[self._leaves[c.leaf][0]][x]
      out[:, c.start : c.stop] = np.ascontiguousarray(x, c.dtype).reshape(n, -1).view(np.uint32)
    return out

  def raw_batch(self, step: int) -> list:
    """The raw arrays of `step` as numpy (one process holding the whole batch)."""
    leaves = self.indices(step)
    out = []
    for shape, members in self._groups:
      rows = aligned_empty((len(members),) + shape, np.float16)
      for j, leaf in enumerate(members):
        self._read(leaf, leaves[leaf], out=rows[j])
      out.append(rows)
    if self._columns:
      out.append(self._packed(leaves))
    for leaf in self._alone:
      info = self._leaves[leaf]
      out.append(leaves[leaf] if info is None else self._read(leaf, leaves[leaf]))
    return out

  def raw_shardings(self, mesh, axis: str) -> list:
    """Shardings of the raw arrays over `mesh`: batch rows split over `axis` (as a batch whose
    leaves with a leading batch axis are split over it; other leaves replicated)."""
    from jax.sharding import NamedSharding, PartitionSpec as P

    B, out = self.batch_size, []
    for k, shape in enumerate(self.raw_shapes):
      if k < len(self._groups):
        spec = P(None, axis)
      else:
        spec = P(axis) if shape.shape[:1] == (B,) else P()
      out.append(NamedSharding(mesh, spec))
    return out

  def global_raw_batch(self, step: int, shardings: list) -> list:
    """The raw arrays of `step` as global jax.Arrays laid out by `shardings` (`raw_shardings`):
    each process reads only the rows its own devices hold, each slice once (devices that hold
    the same rows, e.g. along the edges axis, share one read)."""
    import jax

    leaves = self.indices(step)
    out, reads = [], {}

    def group_part(index, shape, members):
      key = (shape, tuple((s.start, s.stop, s.step) for s in index[:-1]))
      if key not in reads:  # index: (members, batch prefix..., columns)
        picked = members[index[0]]
        rows = aligned_empty(
          (len(picked),) + _sliced(shape[:-1], index[1:-1]) + shape[-1:], np.float16
        )
        for j, leaf in enumerate(picked):
          self._read(leaf, leaves[leaf][tuple(index[1:-1])], out=rows[j])
        reads[key] = rows
      return reads[key][..., index[-1]]

    def alone_part(index, leaf):
      key = (leaf, tuple((s.start, s.stop, s.step) for s in index[:-1]))
      if key not in reads:
        reads[key] = self._read(leaf, leaves[leaf][tuple(index[:-1])])
      return reads[key][..., index[-1]]

    for k, sharding in enumerate(shardings):
      shape = self.raw_shapes[k].shape
      if k < len(self._groups):
        part = lambda i, g=self._groups[k]: group_part(i, g[0], g[1])
      elif k == len(self._groups) and self._columns:
        part = lambda i: self._packed(leaves, i[0])[:, i[1]]
      else:
        leaf = self._alone[k - len(self._groups) - bool(self._columns)]
        if self._leaves[leaf] is None:
          part = lambda i, x=leaves[leaf]: x[i]
        else:
          part = lambda i, leaf=leaf: alone_part(i, leaf)
      out.append(jax.make_array_from_callback(shape, sharding, part))
    return out

  def finish(self, raw: list) -> dict:
    """The batch (as the device sampler draws it) from the raw arrays; jit-friendly, on device."""
    import jax
    import jax.numpy as jnp

    leaves, norms = [None] * len(self._leaves), {}
    for (_, members), rows in zip(self._groups, raw):
      for j, leaf in enumerate(members):
        leaves[leaf] = rows[j]
    rest = raw[len(self._groups) :]
    if self._columns:
      packed, rest = rest[0], rest[1:]
      for c in self._columns:
        value = jax.lax.bitcast_convert_type(packed[:, c.start : c.stop], c.dtype).reshape(c.shape)
        if c.norms:
          norms[c.leaf] = value
        else:
          leaves[c.leaf] = value
    for leaf, value in zip(self._alone, rest):
      leaves[leaf] = value
    for leaf, n in norms.items():
      # XLA rewrites x / broadcast(n) as x * broadcast(1 / n), which rounds differently from
      # numpy's x / n; an opaque divisor keeps the IEEE division
      divisor = jax.lax.optimization_barrier(jnp.broadcast_to(n[..., None], leaves[leaf].shape))
      leaves[leaf] = leaves[leaf].astype(jnp.float32) / divisor
    # the normalised rows are the batch: later divisions must not be merged into this one
    leaves = jax.lax.optimization_barrier(leaves)
    return jax.tree_util.tree_unflatten(self.sampler._batch_treedef, leaves)

  def batch(self, step: int) -> dict:
    """The finished batch of `step` on the default device (tests, one process)."""
    import jax

    if self._finish is None:
      self._finish = jax.jit(self.finish)
    return self._finish(jax.device_put(self.raw_batch(step)))

  def batches(self, start: int, stop: int, shardings=None) -> Prefetcher:
    """Raw batches of steps start..stop-1 placed on the device (one device: the default one;
    `shardings` (raw_shardings): laid out by them, each process reading its own rows), read ahead
    on the feed's threads; iterate in step order, close() at the end."""
    import jax

    if shardings is None:
      produce = lambda s: jax.device_put(self.raw_batch(s))
    else:
      produce = lambda s: self.global_raw_batch(s, shardings)
    return Prefetcher(produce, start, stop, size=self.prefetch, workers=self.workers)


def _sliced(shape: tuple, index: tuple) -> tuple:
  """The shape of x[index] for x of `shape` and a tuple of slices `index`."""
  return tuple(len(range(*s.indices(n))) for n, s in zip(shape, index)) + shape[len(index) :]
