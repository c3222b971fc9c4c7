"""Device meshes and shardings for training on several devices and hosts.

One `jax.sharding.Mesh` with two axes:

  data   the batch is split along it (data parallelism); translators are replicated across it, and
         XLA all-reduces their gradients.
  edges  the stacked edge axis of each bucket is split along it (wide graphs, many modalities):
         bucket params [E_b, ...] and their optimizer rows get PartitionSpec("edges") when E_b is
         divisible by the axis size, else they stay replicated.

Everything else in the train state (step, RNG key, loss weights, health record, learnt
temperature, Adam's step count) is replicated, and so are the step's metrics, so process 0 can
read them without a collective. The step is one `jax.jit` with in/out shardings (GSPMD); there
is no pmap and no hand-written collective.

Multi-host: every process runs the same program on the global arrays. Host values (numpy, a
memory-mapped table, a restored checkpoint) are placed with `jax.make_array_from_callback`, which
asks each process only for the slices its own devices hold; `to_host` gathers a global array back
(process_allgather where a process does not hold all of it).
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from graphbridge.data import tables as tables_lib
from graphbridge.model.translators import EdgeLayout
from graphbridge.core.errors import MeshError


PyTree = Any


DATA, EDGES = "data", "edges"


def initialize_distributed() -> None:
  """jax.distributed.initialize() for multi-host runs; call before anything touches devices.

  SLURM (srun), Cloud TPU pods, Open MPI and Kubernetes are detected by JAX itself. Elsewhere set
  JAX_COORDINATOR_ADDRESS (host:port of process 0), JAX_NUM_PROCESSES and JAX_PROCESS_ID."""
  kwargs = {}
  if os.environ.get("JAX_NUM_PROCESSES"):
    kwargs["num_processes"] = int(os.environ["JAX_NUM_PROCESSES"])
  if os.environ.get("JAX_PROCESS_ID"):
    kwargs["process_id"] = int(os.environ["JAX_PROCESS_ID"])
  jax.distributed.initialize(**kwargs)


def resolve_axes(data: int, edges: int, n_devices: int) -> tuple[int, int]:
  """Axis sizes with -1 (or 0) for data meaning "every device the edges axis leaves"."""
  edges = int(edges) if int(edges) > 0 else 1
  if n_devices % edges:
    raise MeshError(f"mesh.edges={edges} does not divide the {n_devices} devices")
  data = int(data) if int(data) > 0 else n_devices // edges
  if data * edges > n_devices:
    raise MeshError(
      f"mesh data={data} x edges={edges} needs {data * edges} devices but there are "
      f"{n_devices} ({jax.process_count()} process(es)); lower mesh.data or mesh.edges"
    )
  return data, edges


def make_mesh(data: int = -1, edges: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, edges) mesh over `devices` (default: every device of every process).

  Axis types are Auto: shardings are given at the jit boundary and as constraints, and XLA's
  partitioner propagates them (the lm1b/big_vision style)."""
  devices = list(devices if devices is not None else jax.devices())
  data, edges = resolve_axes(data, edges, len(devices))
  return jax.make_mesh(
    (data, edges), (DATA, EDGES), axis_types=(jax.sharding.AxisType.Auto,) * 2, devices=devices
  )


def mesh_from_config(config) -> Mesh | None:
  """The mesh config.mesh asks for, or None when it would hold one device (the plain
  single-device path: no shardings at all, results bit-identical to a run without a mesh)."""
  data, edges = int(config.mesh.data), int(config.mesh.edges)
  data, edges = resolve_axes(data, edges, jax.device_count())
  if data * edges == 1:
    return None
  return make_mesh(data, edges)


def describe(mesh: Mesh | None) -> str:
  if mesh is None:
    return f"one device ({jax.devices()[0].device_kind})"
  return (
    f"mesh data={mesh.shape[DATA]} x edges={mesh.shape[EDGES]} over {mesh.devices.size} "
    f"{mesh.devices.flat[0].device_kind} devices in {jax.process_count()} process(es)"
  )


def check_batch(batch_size: int, mesh: Mesh) -> None:
  if batch_size % mesh.shape[DATA]:
    raise MeshError(
      f"data.batch_size={batch_size} is not divisible by the mesh's data axis "
      f"({mesh.shape[DATA]} devices); use a multiple of {mesh.shape[DATA]} or set mesh.data"
    )


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def _key_str(k) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def edge_axis_spec(bucket_size: int, mesh: Mesh) -> P:
  """PartitionSpec of a bucket's leading edge axis: split over `edges` if it divides evenly."""
  n = mesh.shape[EDGES]
  return P(EDGES) if n > 1 and bucket_size % n == 0 else P()


def leaf_spec(layout: EdgeLayout, keys: Sequence[str], shape: Sequence[int], mesh: Mesh) -> P:
  """Edge-split for per-edge rows ([E_b, ...] with E_b the size of a bucket named in the leaf's
  path: params, Adam's mu/nu, the compute-dtype copy, frozen edges), replicated otherwise.

  Vectors such as the health record's per-edge flags stay replicated, so every process can read
  them without a collective."""
  if len(shape) < 2:
    return P()
  for k in keys:
    bucket = layout.bucket_by_key.get(k)
    if bucket is not None and shape[0] == bucket.size:
      return edge_axis_spec(bucket.size, mesh)
  return P()


def tree_shardings(layout: EdgeLayout, tree: PyTree, mesh: Mesh) -> PyTree:
  """NamedShardings for a train state (or frozen params) with the structure of `tree` (arrays
  or ShapeDtypeStructs)."""

  def one(path, leaf):
    return NamedSharding(mesh, leaf_spec(layout, [_key_str(k) for k in path], np.shape(leaf), mesh))

  return jax.tree_util.tree_map_with_path(one, tree)


def batch_shardings(batch: PyTree, batch_size: int, mesh: Mesh) -> PyTree:
  """Leaves with a leading batch axis are split over `data`; others (e.g. a memory bank)
  replicated."""
  return jax.tree.map(
    lambda x: NamedSharding(
      mesh, P(DATA) if np.ndim(x) >= 1 and np.shape(x)[0] == batch_size else P()
    ),
    batch,
  )


def arrays_shardings(arrays: PyTree, mesh: Mesh, by_rows: bool = False) -> PyTree:
  """Sampler arrays: replicated (small data), or with `by_rows` the embedding tables split by rows
  over `data` (each device holds 1/data of every table; the sampler's gathers become XLA
  collectives). Tables are padded to a multiple of the axis size by `put_arrays`."""

  def one(path, leaf):
    if by_rows and tables_lib.is_table([_key_str(k) for k in path], leaf):
      return NamedSharding(mesh, P(DATA))
    return replicated(mesh)

  return jax.tree_util.tree_map_with_path(one, arrays)


def _put_leaf(x, sharding: NamedSharding) -> jax.Array:
  if isinstance(x, jax.Array) and x.is_fully_addressable and jax.process_count() == 1:
    return jax.device_put(x, sharding)
  if isinstance(x, jax.Array):
    x = np.asarray(x)  # a process-local value (every process holds the same)
  shape, dtype = tuple(np.shape(x)), np.dtype(getattr(x, "dtype", np.asarray(x).dtype))
  # each process is asked only for the slices its devices hold (a memmap reads only those rows)
  return jax.make_array_from_callback(
    shape, sharding, lambda index: np.asarray(x[index]), dtype=dtype
  )


def put(tree: PyTree, shardings: PyTree) -> PyTree:
  """Place host (or single-device) values with `shardings`; every process passes the same values."""
  return jax.tree.map(_put_leaf, tree, shardings)


def put_arrays(arrays: PyTree, shardings: PyTree) -> PyTree:
  """Like `put`, but a table split by rows whose row count the axis does not divide is padded
  with zero rows (never sampled: samplers draw through row-index arrays)."""

  def one(x, sharding):
    spec = sharding.spec
    n = sharding.mesh.shape[DATA]
    if len(spec) and spec[0] == DATA and np.shape(x)[0] % n:
      rows, dim = np.shape(x)
      padded = -(-rows // n) * n
      dtype = np.dtype(x.dtype)

      def shard(index):
        sl = index[0]
        start, stop = sl.start or 0, min(sl.stop if sl.stop is not None else padded, padded)
        out = np.zeros((stop - start, dim), dtype)
        real = max(min(stop, rows) - start, 0)
        if real:
          out[:real] = np.asarray(x[start : start + real])
        return out[(slice(None),) + tuple(index[1:])]

      return jax.make_array_from_callback((padded, dim), sharding, shard, dtype=dtype)
    return _put_leaf(x, sharding)

  return jax.tree.map(one, arrays, shardings)


def to_host(tree: PyTree) -> PyTree:
  """numpy copies of (possibly global, sharded) arrays, the same on every process.

  Leaves every process holds completely (single host, or replicated) are copied; others are
  gathered with process_allgather, a collective: every process must call this at the same point."""
  from jax.experimental import multihost_utils

  def one(x):
    if not isinstance(x, jax.Array):
      return np.asarray(x)
    if x.is_fully_addressable or x.is_fully_replicated:
      return np.asarray(jax.device_get(x))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))

  return jax.tree.map(one, tree)


def zeros_like_host(tree: PyTree) -> PyTree:
  """A host template with the shapes and dtypes of `tree` (restore fills it; nothing is
  gathered)."""
  return jax.tree.map(lambda x: np.zeros(np.shape(x), x.dtype), tree)


def shardings_of(tree: PyTree) -> PyTree:
  return jax.tree.map(lambda x: x.sharding, tree)


def spec_summary(layout: EdgeLayout, params_edges: Mapping[str, PyTree]) -> dict[str, str]:
  """{bucket: "edges" | "replicated"} for a log line and tests."""
  out = {}
  for key, tree in params_edges.items():
    leaf = jax.tree.leaves(tree)[0]
    spec = getattr(getattr(leaf, "sharding", None), "spec", P())
    out[key] = "edges" if len(spec) and spec[0] == EDGES else "replicated"
  return out
