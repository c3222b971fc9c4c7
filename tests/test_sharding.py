"""Multi-device training: on 8 fake CPU devices the run matches the one-device run to 1e-5 (batch
split over devices; tables split by rows; host sampling from memory-mapped files; bucket edges
split too, in 2 processes x 4 devices, host-fed, each process reading its own rows), and
checkpoints move between 1 and 8 devices both ways.

The multi-device runs are subprocesses (tests/sharding_worker.py): the device count is fixed when
jax starts, and this process already has one device."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

import sharding_worker as worker
from conftest import REPO_ROOT, make_synthetic_arrays, make_tri_modal_arrays
from graphbridge import defaults
from graphbridge.core import errors
from graphbridge.data import host as host_lib
from graphbridge.data import tables as tables_lib
from graphbridge.data import readers as readers_lib
from graphbridge.data import dataset as dataset_lib
from graphbridge.training import sharding as sharding_lib
from graphbridge.training import setup as setup_lib
from graphbridge.training import step as step_lib
from graphbridge.training import trainer as trainer_lib

STEPS = 3  # each run: STEPS steps, a checkpoint, STEPS more


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
  """The synthetic tri-modal set as a folder of .npy files (memory-mapped when loaded); image and
  audio stored float16 (the host feed normalises those on the device), text float32."""
  folder = tmp_path_factory.mktemp("tri_modal_npy")
  for name, array in make_tri_modal_arrays().items():
    if name in ("image_emb", "audio_emb"):
      array = array.astype(np.float16)
    np.save(folder / f"{name}.npy", array)
  return str(folder)


def test_mesh_axes():
  assert sharding_lib.resolve_axes(-1, 1, 8) == (8, 1)
  assert sharding_lib.resolve_axes(-1, 2, 8) == (4, 2)
  assert sharding_lib.resolve_axes(2, 2, 8) == (2, 2)
  with pytest.raises(errors.MeshError, match="mesh.edges=3 does not divide the 8 devices"):
    sharding_lib.resolve_axes(-1, 3, 8)
  with pytest.raises(errors.MeshError, match="needs 16 devices but there are 8"):
    sharding_lib.resolve_axes(8, 2, 8)
  mesh = jax.sharding.AbstractMesh((4, 2), ("data", "edges"))
  with pytest.raises(errors.MeshError, match=r"batch_size=18 is not divisible .* \(4 devices\)"):
    sharding_lib.check_batch(18, mesh)
  assert sharding_lib.mesh_from_config(defaults.base_config()) is None  # one device here


def test_edge_split_only_where_the_bucket_divides(tri_modal_dataset, tiny_config):
  layout = setup_lib.build_setup(tiny_config, tri_modal_dataset).layout  # two buckets of 2 edges
  key = layout.buckets[0].key
  for edges, expected in ((2, ("edges",)), (4, ())):
    mesh = jax.sharding.AbstractMesh((8 // edges, edges), ("data", "edges"))
    assert (
      tuple(
        sharding_lib.leaf_spec(
          layout, ["params", "edges", key, "dense_0", "kernel"], (2, 6, 16), mesh
        )
      )
      == expected
    )
    assert tuple(sharding_lib.leaf_spec(layout, ["health", "grads_finite", key], (2,), mesh)) == ()
    assert tuple(sharding_lib.leaf_spec(layout, ["opt", "0", "count"], (), mesh)) == ()


def test_normalized_rows_read_rows_on_demand(tmp_path):
  raw = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float16)
  np.save(tmp_path / "x.npy", raw)
  table = tables_lib.NormalizedRows(np.load(tmp_path / "x.npy", mmap_mode="r"), "x")
  full = dataset_lib.l2_normalize_rows("x", raw)
  np.testing.assert_array_equal(table[[3, 1, 3]], full[[3, 1, 3]])
  np.testing.assert_array_equal(table[2:5], full[2:5])
  np.testing.assert_array_equal(table[np.arange(10) % 3 == 0], full[::3])
  np.testing.assert_array_equal(table[4], full[4])
  np.testing.assert_array_equal(np.asarray(table), full)
  assert table.shape == (10, 4) and len(table) == 10 and table.dtype == np.float32
  raw[7, 1] = np.nan
  bad = tables_lib.NormalizedRows(raw, "x")
  bad[[1, 2]]  # rows are checked when read
  with pytest.raises(errors.DataError, match="embedding 'x' row 7 has NaN"):
    bad[[1, 7]]


def test_memmapped_dataset_keeps_tables_on_disk(data_dir):
  eager, lazy = readers_lib.load(data_dir), readers_lib.load_memmapped(data_dir)
  for m, mod in lazy.modalities.items():
    assert isinstance(mod.emb, tables_lib.NormalizedRows) and isinstance(mod.emb.raw, np.memmap)
    assert mod.dim == eager.modalities[m].dim and len(mod) == len(eager.modalities[m])
    np.testing.assert_allclose(mod.emb[mod.train], eager.modalities[m].emb[mod.train], atol=1e-6)
  assert lazy.pairs.keys() == eager.pairs.keys()


@pytest.mark.parametrize("aligned", [False, True])
def test_host_sampler_draws_the_device_samplers_batches(tiny_config, aligned):
  """The host sampler's batch for step s is the device sampler's batch, bit for bit."""
  config = tiny_config.copy_and_resolve_references()
  config.loss.aligned_batches = aligned
  if aligned:
    arrays = make_synthetic_arrays({"a": 6, "b": 8}, {"a": 40, "b": 40}, [])
    arrays["pairs_a__b"] = np.stack(
      [np.arange(40), np.arange(40)], axis=1
    )  # row i of a is row i of b
    dataset = readers_lib.from_arrays(arrays, source="<aligned>")
  else:
    dataset = readers_lib.from_arrays(make_tri_modal_arrays())
  setup = setup_lib.build_setup(config, dataset)
  arrays = step_lib.sampler_arrays(setup, dataset)
  rng = jax.random.PRNGKey(3)
  sampler = host_lib.HostSampler(setup.plan.sample, arrays, setup.batch_size, rng)
  device_sample = jax.jit(setup.plan.sample, static_argnums=2)
  device_arrays = jax.device_put(arrays)
  for step in (0, 7):
    expected = device_sample(device_arrays, jax.random.fold_in(rng, step), setup.batch_size)
    got = sampler.batch(step)
    assert jax.tree.structure(got) == jax.tree.structure(expected)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
      assert a.dtype == b.dtype
      np.testing.assert_array_equal(a, b)


def _free_port() -> int:
  with socket.socket() as sock:
    sock.bind(("localhost", 0))
    return sock.getsockname()[1]


def test_eight_devices_match_one_device_and_checkpoints_move_both_ways(data_dir, tmp_path):
  quiet = lambda msg: None
  one = str(tmp_path / "one_device")
  trainer_lib.train(
    worker.tiny_config(data_dir, STEPS), one, log=quiet
  )  # the reference, on this process
  out = tmp_path / "eight"
  out.mkdir()
  env = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(p for p in (REPO_ROOT, os.environ.get("PYTHONPATH")) if p),
  }
  env.pop("XLA_FLAGS", None)  # the worker sets its own device count
  run = lambda *args: subprocess.Popen(
    [sys.executable, worker.__file__, *map(str, args)],
    env=env,
    cwd=REPO_ROOT,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )

  def finish(proc):
    try:
      output = proc.communicate(timeout=300)[0]
    except subprocess.TimeoutExpired:
      proc.kill()
      output = proc.communicate()[0]
    assert proc.returncode == 0, output[-4000:]

  finish(run(data_dir, one, out, STEPS))  # 8 devices, one process
  summary = json.loads((out / "summary.json").read_text())
  assert set(summary) == {"data8", "data8_rows_sharded", "data8_host_sampling", "one_to_8_resume"}
  for name, diffs in summary.items():
    assert max(diffs.values()) <= 1e-5, (name, diffs)

  # 2 processes x 4 devices (jax.distributed over localhost), data 4 x edges 2: both buckets split
  multihost = str(tmp_path / "two_processes")
  port = _free_port()
  procs = [
    run(f"--process={i}", "--processes=2", f"--port={port}", data_dir, multihost, STEPS)
    for i in range(2)
  ]
  for proc in procs:
    finish(proc)
  assert (
    worker.max_diff(worker.final_params(multihost, 2 * STEPS), worker.final_params(one, 2 * STEPS))
    <= 1e-5
  )
  assert (
    worker.loss_diff(worker.losses(multihost), worker.losses(one), range(1, 2 * STEPS + 1)) <= 1e-5
  )

  # its checkpoint at step STEPS (edge-split, written by two processes) resumes here, on one device
  # (host-fed as it was), and ends where the one-device run ended
  back = str(tmp_path / "eight_to_one")
  worker.copy_step(multihost, STEPS, back)
  config = worker.tiny_config(data_dir, STEPS, **{"data.host_sampling": True})
  result = trainer_lib.train(config, back, log=quiet)
  assert result.steps_run == STEPS
  assert (
    worker.max_diff(worker.final_params(back, 2 * STEPS), worker.final_params(one, 2 * STEPS))
    <= 1e-5
  )
  assert (
    worker.loss_diff(worker.losses(back), worker.losses(one), range(STEPS + 1, 2 * STEPS + 1))
    <= 1e-5
  )
