"""The host feed (data.HostFeed, data.host_sampling): its batches are the device sampler's, bit
for bit, for float16 tables normalised on the device, other dtypes normalised on the host and
in-RAM tables; bad rows are reported when a batch reads them; training on it matches training on
device-resident tables. Multi-device layouts: tests/sharding_worker.py."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest

from conftest import make_synthetic_arrays, make_tri_modal_arrays
from graphbridge.core import errors
from graphbridge.data import feed as feed_lib
from graphbridge.data import readers as readers_lib
from graphbridge.data import tables as tables_lib
from graphbridge.training import setup as setup_lib
from graphbridge.training import sharding as sharding_lib
from graphbridge.training import step as step_lib
from graphbridge.training import trainer as trainer_lib


def hard_float16(x: np.ndarray, seed: int) -> np.ndarray:
  """x as float16 with values float16 rounds badly: subnormals, the largest finite value, a row
  of subnormals only, mixed magnitudes."""
  rng = np.random.default_rng(seed)
  out = x.astype(np.float16)
  n, d = out.shape
  out[0, 0] = np.float16(65504.0)
  out[1] = np.float16(6e-8) * (1 + np.arange(d) % 3)  # subnormals only (norm ~1e-7)
  out[2, : d // 2] = np.float16(3.0e-5)  # subnormal next to normal values
  out[3] = np.float16(-1.0e4) * rng.random(d)
  return out


def save_folder(folder, arrays: dict, float16: tuple) -> str:
  """arrays as .npy files; the tables of `float16` modalities stored float16 (hard values)."""
  os.makedirs(folder, exist_ok=True)
  for k, (name, value) in enumerate(sorted(arrays.items())):
    if name.endswith("_emb") and name[:-4] in float16:
      value = hard_float16(value, k)
    np.save(os.path.join(folder, f"{name}.npy"), value)
  return str(folder)


def aligned_arrays(n: int = 40) -> dict:
  arrays = make_synthetic_arrays({"a": 6, "b": 8}, {"a": n, "b": n}, [])
  arrays["pairs_a__b"] = np.stack([np.arange(n), np.arange(n)], axis=1)  # row i of a is row i of b
  return arrays


def feed_and_reference(config, folder, index_block=4):
  dataset = readers_lib.load_memmapped(folder)
  setup = setup_lib.build_setup(config, dataset)
  arrays = step_lib.sampler_arrays(setup, dataset)
  rng = jax.random.PRNGKey(3)
  feed = feed_lib.HostFeed(
    setup.plan.sample, arrays, setup.batch_size, rng, index_block=index_block
  )
  device_sample = jax.jit(setup.plan.sample, static_argnums=2)
  device_arrays = jax.device_put(tables_lib.materialize_tables(arrays))

  def expected(step):
    return device_sample(device_arrays, jax.random.fold_in(rng, step), setup.batch_size)

  return feed, expected


def assert_same_batch(got, expected):
  assert jax.tree.structure(got) == jax.tree.structure(expected)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("aligned", [False, True])
def test_feed_draws_the_device_samplers_batches(tmp_path, tiny_config, aligned):
  """Float16 tables normalised on the device, a float32 table on the host: the device sampler's
  batch for every step (several index blocks, any start of the prefetching iterator)."""
  config = tiny_config.copy_and_resolve_references()
  config.loss.aligned_batches = aligned
  arrays = aligned_arrays() if aligned else make_tri_modal_arrays()
  float16 = ("a",) if aligned else ("image", "audio")
  feed, expected = feed_and_reference(config, save_folder(tmp_path / "d", arrays, float16))
  kinds = {info[1] for info in feed._leaves if info is not None}
  assert kinds == {"float16", "normalise"}, kinds
  for step in (0, 1, 3, 4, 9):  # index blocks of 4 steps
    assert_same_batch(feed.batch(step), expected(step))
  finish = jax.jit(feed.finish)
  batches = feed.batches(5, 11)
  try:
    for step, raw in zip(range(5, 11), batches):
      assert_same_batch(finish(raw), expected(step))
  finally:
    batches.close()
  # laid out by shardings (here one device): the path of several devices and processes
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), (sharding_lib.DATA,))
  shardings = feed.raw_shardings(mesh, sharding_lib.DATA)
  assert_same_batch(finish(feed.global_raw_batch(2, shardings)), expected(2))


def test_feed_reads_in_ram_tables_as_they_are(tiny_config):
  """Tables already in RAM (normalised when loaded) are gathered, not normalised again."""
  dataset = readers_lib.from_arrays(make_tri_modal_arrays())
  setup = setup_lib.build_setup(tiny_config, dataset)
  arrays = step_lib.sampler_arrays(setup, dataset)
  rng = jax.random.PRNGKey(0)
  feed = feed_lib.HostFeed(setup.plan.sample, arrays, setup.batch_size, rng, index_block=3)
  assert {info[1] for info in feed._leaves if info is not None} == {"plain"}
  device_sample = jax.jit(setup.plan.sample, static_argnums=2)
  for step in (0, 2, 5):
    expected = device_sample(jax.device_put(arrays), jax.random.fold_in(rng, step), 16)
    assert_same_batch(feed.batch(step), expected)


def test_row_norms_are_the_norms_rows_divides_by(tmp_path):
  x = hard_float16(np.random.default_rng(0).normal(size=(3000, 96)).astype(np.float32), 0)
  np.save(tmp_path / "x.npy", x)
  table = tables_lib.NormalizedRows(np.load(tmp_path / "x.npy", mmap_mode="r"), "x")
  norms = table.row_norms(threads=3)
  assert norms.dtype == np.float32 and norms.shape == (3000,)
  x32 = x.astype(np.float32)
  np.testing.assert_array_equal(norms, np.linalg.norm(x32, axis=1))
  ids = np.asarray([5, 0, 2999, 1, 5])
  np.testing.assert_array_equal(table.rows(ids), x32[ids] / norms[ids, None])
  # the file reader and plain slicing agree, across chunk ends
  read = tables_lib._block_reader(table.raw)
  np.testing.assert_array_equal(read(1, 2999), x[1:2999])


def build_feed(config, folder) -> feed_lib.HostFeed:
  dataset = readers_lib.load_memmapped(folder)
  setup = setup_lib.build_setup(config, dataset)
  arrays = step_lib.sampler_arrays(setup, dataset)
  return feed_lib.HostFeed(setup.plan.sample, arrays, setup.batch_size, jax.random.PRNGKey(0))


def test_bad_rows_are_reported_when_a_batch_reads_them(tmp_path, tiny_config):
  arrays = aligned_arrays(n=12)
  for m in ("a", "b"):  # every row is drawn
    arrays[f"{m}_train"][:], arrays[f"{m}_test"][:] = True, False
  folder = save_folder(tmp_path / "d", arrays, ("a",))
  a = np.load(os.path.join(folder, "a_emb.npy"))
  a[7, 2] = np.nan
  np.save(os.path.join(folder, "a_emb.npy"), a)
  config = tiny_config.copy_and_resolve_references()
  config.loss.aligned_batches = True
  config.loss.infonce_positives = "pair"  # "auto" reads rows to choose
  config.model.linear_rank = 0  # and so does the linear path's auto
  feed = build_feed(config, folder)  # building it does not raise: the row may never be drawn
  with pytest.raises(errors.DataError, match="embedding 'a' row 7 has NaN"):
    for step in range(20):  # 16 draws of 12 rows a step
      feed.raw_batch(step)
  a[7, 2], a[4] = 1.0, 0.0
  zero = tables_lib.NormalizedRows(a, "a")
  with pytest.raises(errors.DataError, match="embedding 'a' row 4 has zero norm"):
    zero.check_rows(np.asarray([3, 4]), zero.row_norms()[[3, 4]])


def test_training_on_the_feed_matches_device_sampling(tmp_path, tiny_config):
  """data.host_sampling over float16 files trains as device sampling of the same files does."""
  folder = save_folder(tmp_path / "d", make_tri_modal_arrays(), ("image", "audio"))
  runs, messages = {}, []
  for host in (False, True):
    config = tiny_config.copy_and_resolve_references()
    config.data.path = folder
    config.data.host_sampling = host
    config.train.steps = 6
    config.finetune.steps = 0
    runs[host] = trainer_lib.train(config, None, log=messages.append)
  device, host = runs[False], runs[True]
  assert type(host.dataset.modalities["image"].emb).__name__ == "NormalizedRows"
  rows_per_step = build_feed(config, folder).rows_per_batch
  assert (
    f"host feed: {6 * rows_per_step} table rows read by this process ({rows_per_step} a step on "
    "all processes)" in messages
  )
  for a, b in zip(jax.tree.leaves(device.state["params"]), jax.tree.leaves(host.state["params"])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)
  assert abs(device.final_metrics["loss/total"] - host.final_metrics["loss/total"]) <= 1e-6
