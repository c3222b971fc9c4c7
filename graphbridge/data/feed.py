"""The host feed of data.host_sampling: each step's batch read from memory-mapped tables on worker
threads and placed on the device, float16 rows kept float16 until the device normalises them.

Where the time of the per-step HostSampler went (benchmarks/feed_bench.py, docs/scaling.md):
converting the rows to float32 and normalising them in numpy (numpy's float16 cast alone runs at
1.5-5 ns a value: 1,024 x 1,024 rows took 4-8 ms per table), copying twice the bytes to the device,
and splitting each read over 32 threads. HostFeed instead

- draws the (table, row) indices of a block of steps at once: the objective's own `sample()`, run
  on index tables as HostSampler does, vmapped over the block's step keys (the same keys, so the
  same rows: tested bit for bit);
- reads a batch's rows with one `np.take` from the memory-mapped table into a fresh 64-byte aligned
  buffer (on the CPU backend `device_put` then adopts the buffer without a copy);
- keeps float16 rows float16: the host sends the rows and their norms, precomputed once per table
  by `NormalizedRows.row_norms` exactly as `rows()` computes them, and `finish` divides inside the
  jitted step (float16 -> float32 is exact and so is IEEE division, kept from XLA's rewrite into a
  multiplication by the reciprocal: the batch equals the one `rows()` normalises on the host).
  Tables of other dtypes are normalised on the host as before;
- runs whole steps on `workers` threads, `prefetch` steps ahead, in step order.
"""

from __future__ import annotations

import collections
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


class HostFeed:
  """Batches of `sample(arrays, fold_in(rng, step), batch_size)` read on the host (the device
  sampler's batches, bit for bit), for tables too large for device memory.

  arrays: the objective's sampler arrays; [N, d] tables may be NormalizedRows views (memory-mapped
    .npy files) or numpy arrays. rng: the train state's RNG key.
  prefetch: steps read ahead; workers: threads reading them (default: prefetch).
  index_block: steps whose indices one jitted call draws.

  A step's batch travels as `raw` leaves (see `raw_shapes`): a gathered leaf of a float16
  NormalizedRows table is a pair (rows [..., d] float16, norms [...] float32); `finish(raw)`, run
  inside the jitted step, turns it into the batch the device sampler draws."""

  def __init__(
    self,
    sample,
    arrays: Mapping,
    batch_size: int,
    rng,
    prefetch: int = 4,
    workers: int | None = None,
    index_block: int = 64,
  ):
    import jax

    self.sampler = sampler = HostSampler(sample, arrays, batch_size, rng)
    self.batch_size = sampler.batch_size
    self.prefetch = max(int(prefetch), 1)
    self.workers = max(int(workers or self.prefetch), 1)
    self.index_block = max(int(index_block), 1)
    self._lock = threading.Lock()
    self._blocks: collections.OrderedDict = collections.OrderedDict()
    self.rows_read = 0  # table rows this process read (its own devices' share of each batch)
    self._finish = None
    block_fn = jax.vmap(sampler.index_fn, in_axes=(None, None, 0))
    self._index_block = jax.jit(block_fn)
    # per batch leaf: None (not from a table), or (table index, kind)
    index_shapes = jax.tree.leaves(
      jax.eval_shape(sampler.index_fn, sampler._small, sampler._rng, np.int32(0))
    )
    first = self._indices_of_block(0)
    self._leaves = []
    self.raw_shapes = []
    for i, (shape, gathered) in enumerate(
      zip(jax.tree.leaves(sampler.batch_shapes), sampler.gathered)
    ):
      if not gathered:
        self._leaves.append(None)
        self.raw_shapes.append(shape)
        continue
      table = int(first[i][0].reshape(-1, 2)[0, 0])
      rows = sampler.tables[table]
      kind = "plain"
      if isinstance(rows, NormalizedRows):
        kind = "float16" if rows.raw.dtype == np.float16 else "normalise"
      self._leaves.append((table, kind))
      prefix = tuple(index_shapes[i].shape[:-1])
      if kind == "float16":
        self.raw_shapes.append(
          (
            jax.ShapeDtypeStruct(prefix + (rows.shape[1],), np.float16),
            jax.ShapeDtypeStruct(prefix, np.float32),
          )
        )
      else:
        self.raw_shapes.append(shape)
    self.rows_per_batch = sum(
      int(np.prod(s.shape[:-1]))
      for s, g in zip(jax.tree.leaves(sampler.batch_shapes), sampler.gathered)
      if g
    )
    # every float16 table's norms, read once (in parallel with each other)
    self._norms = {}
    f16 = sorted({leaf[0] for leaf in self._leaves if leaf is not None and leaf[1] == "float16"})
    if f16:
      from concurrent.futures import ThreadPoolExecutor

      with ThreadPoolExecutor(len(f16)) as pool:
        norms = list(pool.map(lambda t: sampler.tables[t].row_norms(), f16))
      self._norms = dict(zip(f16, norms))

  # -- indices --
  def _indices_of_block(self, block: int) -> list:
    import jax

    steps = np.arange(block * self.index_block, (block + 1) * self.index_block, dtype=np.int32)
    leaves = jax.tree.leaves(self._index_block(self.sampler._small, self.sampler._rng, steps))
    return [np.asarray(x) for x in leaves]

  def indices(self, step: int) -> list:
    """The flat batch leaves of `step` with table rows as (table, row) uint32 pairs."""
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
  def _read(self, leaf_info, ids: np.ndarray):
    """The raw value of one gathered leaf for table rows `ids` [...] (int64)."""
    table, kind = leaf_info
    rows = self.sampler.tables[table]
    flat = ids.reshape(-1)
    with self._lock:
      self.rows_read += len(flat)
    if kind == "float16":
      out = aligned_empty((len(flat), rows.shape[1]), np.float16)
      np.take(rows.raw, flat, axis=0, out=out, mode="clip")  # ids come from arange(N)
      norms = self._norms[table][flat]
      rows.check_rows(flat, norms)
      return out.reshape(ids.shape + (rows.shape[1],)), norms.reshape(ids.shape)
    if kind == "normalise":
      return rows.rows(flat).reshape(ids.shape + (rows.shape[1],))
    return np.asarray(rows[flat]).reshape(ids.shape + (rows.shape[1],))

  def _ids(self, x: np.ndarray, leaf_info) -> np.ndarray:
    if not (x[..., 0] == leaf_info[0]).all():
      raise DataError("host sampling: one batch entry gathers rows of several tables")
    return x[..., 1].astype(np.int64)

  def raw_batch(self, step: int) -> list:
    """The raw leaves of `step` as numpy (one process holding the whole batch)."""
    out = []
    for x, info in zip(self.indices(step), self._leaves):
      out.append(x if info is None else self._read(info, self._ids(x, info)))
    return out

  def global_raw_batch(self, step: int, shardings) -> list:
    """The raw leaves of `step` as global jax.Arrays laid out by `shardings` (like `raw_shapes`):
    each process reads only the rows its own devices hold, each slice once (devices that hold
    the same rows, e.g. along the edges axis, share one read)."""
    import jax

    sharding_leaves = jax.tree.leaves(
      shardings, is_leaf=lambda s: isinstance(s, jax.sharding.Sharding)
    )
    out, k = [], 0
    for x, info in zip(self.indices(step), self._leaves):
      if info is None:
        out.append(jax.make_array_from_callback(x.shape, sharding_leaves[k], lambda i, x=x: x[i]))
        k += 1
        continue
      ids = self._ids(x, info)
      d = self.sampler.tables[info[0]].shape[1]
      reads = {}

      def read(index, ids=ids, info=info, reads=reads):
        key = tuple((s.start, s.stop, s.step) for s in index)
        if key not in reads:
          reads[key] = self._read(info, ids[tuple(index)])
        return reads[key]

      if info[1] == "float16":
        rows = lambda i, read=read: read(i[:-1])[0][..., i[-1]]
        norms = lambda i, read=read: read(i)[1]
        out.append(
          (
            jax.make_array_from_callback(ids.shape + (d,), sharding_leaves[k], rows),
            jax.make_array_from_callback(ids.shape, sharding_leaves[k + 1], norms),
          )
        )
        k += 2
      else:
        part = lambda i, read=read: read(i[:-1])[..., i[-1]]
        out.append(jax.make_array_from_callback(ids.shape + (d,), sharding_leaves[k], part))
        k += 1
    return out

  def finish(self, raw: list) -> dict:
    """The batch (as the device sampler draws it) from raw leaves; jit-friendly, runs on device."""
    import jax
    import jax.numpy as jnp

    leaves = []
    for value, info in zip(raw, self._leaves):
      if info is not None and info[1] == "float16":
        rows, norms = value
        # XLA rewrites x / broadcast(n) as x * broadcast(1 / n), which rounds differently from
        # numpy's x / n; an opaque divisor keeps the IEEE division
        divisor = jax.lax.optimization_barrier(jnp.broadcast_to(norms[..., None], rows.shape))
        value = rows.astype(jnp.float32) / divisor
      leaves.append(value)
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
    `shardings`: laid out by them, each process reading its own rows), read ahead on the
    feed's threads; iterate in step order, close() at the end."""
    import jax

    if shardings is None:
      produce = lambda s: jax.device_put(self.raw_batch(s))
    else:
      produce = lambda s: self.global_raw_batch(s, shardings)
    return Prefetcher(produce, start, stop, size=self.prefetch, workers=self.workers)
