"""Host-fed batches for data larger than device memory: rows read from memory-mapped tables,
normalised per batch, prefetched on background threads."""

from __future__ import annotations

from typing import Mapping
import numpy as np
from graphbridge.core.errors import DataError
from graphbridge.data.tables import NormalizedRows, is_table


class HostSampler:
  """Draws on the host the batch `sample(arrays, key, batch_size)` draws on device, reading only
  the batch's rows of each embedding table (numpy fancy indexing on a memmap) per step.

  The objective's own sampler runs (jitted, on the host's CPU device) on the small arrays (row
  lists, pairs, labels) with each [N, d] table replaced by an index table [N, 2] uint32 (table,
  row): its output names, for every batch entry, the table row the device sampler would have
  taken. So batches are the device sampler's batches, key for key. The sampler may only gather
  table rows (jnp.take / indexing), as every built-in objective does; anything else is an error.

  arrays: the objective's sampler arrays (tables may be numpy arrays or NormalizedRows views).
  rng: the train state's RNG key; step s uses fold_in(rng, s), as `train.make_device_step` does."""

  def __init__(self, sample, arrays: Mapping, batch_size: int, rng):
    import jax
    import jax.numpy as jnp

    self.batch_size = int(batch_size)
    flat, self._treedef = jax.tree_util.tree_flatten_with_path(
      arrays, is_leaf=lambda x: isinstance(x, NormalizedRows)
    )
    keys = [[str(getattr(k, "key", getattr(k, "idx", k))) for k in path] for path, _ in flat]
    leaves = [leaf for _, leaf in flat]
    self.tables = [leaf for k, leaf in zip(keys, leaves) if is_table(k, leaf)]
    self._table_pos = [i for i, (k, leaf) in enumerate(zip(keys, leaves)) if is_table(k, leaf)]
    small_pos = [i for i in range(len(leaves)) if i not in self._table_pos]
    sizes = [len(t) for t in self.tables]
    cpu = jax.local_devices(backend="cpu")[0]  # this process's own CPU, also in a multi-process run
    self._small = jax.device_put([np.asarray(leaves[i]) for i in small_pos], cpu)
    self._rng = jax.device_put(np.asarray(jax.device_get(rng)), cpu)
    treedef, table_pos = self._treedef, list(self._table_pos)

    def rebuild(small, tables):
      out = [None] * len(leaves)
      for i, v in zip(small_pos, small):
        out[i] = v
      for i, v in zip(table_pos, tables):
        out[i] = v
      return jax.tree_util.tree_unflatten(treedef, out)

    def index_batch(small, rng, step):
      index_tables = [
        jnp.stack([jnp.full((n,), t, jnp.uint32), jnp.arange(n, dtype=jnp.uint32)], axis=1)
        for t, n in enumerate(sizes)
      ]
      return sample(rebuild(small, index_tables), jax.random.fold_in(rng, step), self.batch_size)

    self.index_fn = index_batch  # (small arrays, rng, step) -> the batch with (table, row) leaves
    self._index_batch = jax.jit(index_batch)
    # which batch leaves are rows of a table: compare with the sampler's output on the real dtypes
    real = jax.eval_shape(
      lambda small, tables, rng: sample(rebuild(small, tables), rng, self.batch_size),
      self._small,
      [jax.ShapeDtypeStruct(t.shape, np.dtype(t.dtype)) for t in self.tables],
      self._rng,
    )
    index = jax.eval_shape(index_batch, self._small, self._rng, np.int32(0))
    self.batch_shapes = real  # ShapeDtypeStructs of one batch
    real_leaves, self._batch_treedef = jax.tree_util.tree_flatten_with_path(real)
    index_leaves = jax.tree.leaves(index)
    self.gathered = []
    for (path, r), x in zip(real_leaves, index_leaves):
      from_table = (
        x.dtype == np.uint32 and x.shape[-1:] == (2,) and np.issubdtype(r.dtype, np.floating)
      )
      if from_table and x.shape[:-1] != r.shape[:-1]:
        from_table = False
      if not from_table and (x.shape != r.shape or x.dtype != r.dtype):
        raise DataError(
          f"host sampling: batch entry {jax.tree_util.keystr(path)} is not a plain gather of "
          "table rows (the objective's sample() transforms them); use data.host_sampling=False"
        )
      self.gathered.append(from_table)

  def indices(self, step: int) -> list:
    """The batch for `step` with table rows as (table, row) indices: a flat list of numpy leaves."""
    import jax

    return [
      np.asarray(x)
      for x in jax.tree.leaves(self._index_batch(self._small, self._rng, np.int32(step)))
    ]

  def _rows(self, leaf: np.ndarray) -> np.ndarray:
    table = np.unique(leaf[..., 0])
    if len(table) != 1:
      raise DataError("host sampling: one batch entry gathers rows of several tables")
    rows = self.tables[int(table[0])]
    ids = leaf[..., 1].astype(np.int64)
    flat = (
      rows.rows(ids.reshape(-1))
      if isinstance(rows, NormalizedRows)
      else np.asarray(rows[ids.reshape(-1)])
    )
    return flat.reshape(ids.shape + (rows.shape[1],))

  def batch(self, step: int) -> dict:
    """The whole batch for `step`, as numpy (single process)."""
    import jax

    leaves = [self._rows(x) if g else x for x, g in zip(self.indices(step), self.gathered)]
    return jax.tree_util.tree_unflatten(self._batch_treedef, leaves)

  def global_batch(self, step: int, shardings) -> dict:
    """The batch for `step` as global jax.Arrays laid out by `shardings` (a pytree of Shardings
    like the batch): each process reads only the rows its own devices hold."""
    import jax

    sharding_leaves = jax.tree.leaves(
      shardings, is_leaf=lambda s: isinstance(s, jax.sharding.Sharding)
    )
    out = []
    for x, g, sharding in zip(self.indices(step), self.gathered, sharding_leaves):
      if g:  # x: [..., 2] (table, row) -> rows [..., d]; read only the slice this process holds
        shape = x.shape[:-1] + (self.tables[int(x.reshape(-1, 2)[0, 0])].shape[1],)
        part = lambda index, x=x: self._rows(x[tuple(index[:-1])])[..., index[-1]]
      else:
        shape, part = x.shape, (lambda index, x=x: x[index])
      out.append(jax.make_array_from_callback(shape, sharding, part))
    return jax.tree_util.tree_unflatten(self._batch_treedef, out)


class Prefetcher:
  """Runs `produce(step)` for steps start, start+1, ... < stop on `workers` threads (default
  `size`), up to `size` steps ahead (reading rows from disk while the device trains); iterating
  gives the results in step order. An exception in produce is raised by the iteration that
  reaches its step."""

  def __init__(self, produce, start: int, stop: int, size: int = 4, workers: int | None = None):
    import collections
    from concurrent.futures import ThreadPoolExecutor

    size = max(int(size), 1)
    self._produce = produce
    self._pool = ThreadPoolExecutor(
      max(int(workers or size), 1), thread_name_prefix="graphbridge-host-sampler"
    )
    self._steps = iter(range(start, stop))
    self._pending: "collections.deque" = collections.deque()
    for _ in range(size):
      self._submit()

  def _submit(self) -> None:
    step = next(self._steps, None)
    if step is not None:
      self._pending.append(self._pool.submit(self._produce, step))

  def __iter__(self):
    return self

  def __next__(self):
    if not self._pending:
      raise StopIteration
    future = self._pending.popleft()
    self._submit()
    return future.result()

  def close(self) -> None:
    for future in self._pending:
      future.cancel()
    self._pending.clear()
    self._pool.shutdown(wait=True, cancel_futures=True)
