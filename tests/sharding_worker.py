"""Multi-device checks run by tests/test_sharding.py in subprocesses with fake CPU devices.

XLA_FLAGS must name the device count before jax starts, which the pytest process has already
done with one device; so these run as their own processes:

  python tests/sharding_worker.py DATA_DIR ONE_DEVICE_WORKDIR OUT_DIR STEPS
      8 devices, one process: compares with ONE_DEVICE_WORKDIR, a 2*STEPS one-device run
      (checkpoints at STEPS and 2*STEPS, metrics every step); writes OUT_DIR/summary.json and exits
      non-zero with the failed check's message.
  python tests/sharding_worker.py --process=I --processes=2 --port=P DATA_DIR WORKDIR STEPS
      one of 2 processes x 4 devices (jax.distributed over localhost, gloo collectives): trains
      data 4 x edges 2 into WORKDIR (the test compares it afterwards).
"""

from __future__ import annotations

import os
import sys

import json
import re
import shutil

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from graphbridge.training import sharding as sharding_lib  # noqa: E402
from graphbridge.training import setup as setup_lib  # noqa: E402
from graphbridge.training import state as state_lib  # noqa: E402
from graphbridge.training import trained as trained_lib  # noqa: E402
from graphbridge.training import optimizer as optimizer_lib  # noqa: E402
from graphbridge.training import trainer as trainer_lib  # noqa: E402
from graphbridge.training import writers as writers_lib  # noqa: E402
from graphbridge.data import readers as readers_lib  # noqa: E402
from graphbridge.data import feed as feed_lib  # noqa: E402
from graphbridge.data import tables as tables_lib  # noqa: E402
from graphbridge.training import step as step_lib  # noqa: E402

TESTS = os.path.dirname(os.path.abspath(__file__))

FAKE_DEVICES_FLAGS = (
  "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0 "
  "--xla_llvm_disable_expensive_passes=true"
)

TOL = 1e-5


def tiny_config(data_dir: str, steps: int, **overrides):
  """configs/digits.py:tiny on the test's data folder, shrunk as tests/conftest.py's tiny_config;
  overrides: {"mesh.data": 4, ...}."""
  import importlib.util

  spec = importlib.util.spec_from_file_location(
    "gb_digits_config", os.path.join(os.path.dirname(TESTS), "configs", "digits.py")
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("tiny")
  config.data.path = data_dir
  config.model.hidden = (16,)
  config.data.batch_size = 16
  config.optim.warmup_steps = 2
  config.train.steps = 2 * steps
  config.train.log_every = 1
  config.train.checkpoint_every = steps
  config.train.keep_checkpoints = 3
  for key, value in overrides.items():
    section, name = key.split(".")
    config[section][name] = value
  return config


def final_params(workdir: str, step: int) -> list[np.ndarray]:
  run = trained_lib.load_trained(workdir, step)
  return [np.asarray(x) for x in jax.tree.leaves(run.edge_params())]


def losses(workdir: str) -> dict[int, dict[str, float]]:
  rows = writers_lib.read_metrics(os.path.join(workdir, "metrics.jsonl"))
  return {r["step"]: {k: v for k, v in r.items() if k.startswith("loss/")} for r in rows}


def max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
  assert len(a) == len(b)
  return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))


def loss_diff(a: dict, b: dict, steps) -> float:
  """Largest difference of any logged loss term over `steps`, relative to the term (or to 1 if it is
  smaller): the terms are sums over the batch, whose order of reduction depends on the devices."""
  worst = 0.0
  for s in steps:
    assert a[s].keys() == b[s].keys(), (s, sorted(a[s]), sorted(b[s]))
    worst = max(worst, max(abs(a[s][k] - b[s][k]) / max(1.0, abs(b[s][k])) for k in a[s]))
  return worst


def copy_step(src_workdir: str, step: int, dst_workdir: str) -> None:
  """A fresh workdir whose only checkpoint is `step` of src (resume from exactly there)."""
  os.makedirs(os.path.join(dst_workdir, "checkpoints"), exist_ok=True)
  shutil.copytree(
    os.path.join(src_workdir, "checkpoints", str(step)),
    os.path.join(dst_workdir, "checkpoints", str(step)),
  )


def main(data_dir: str, one_device_workdir: str, out_dir: str, steps: int) -> None:
  assert jax.device_count() == 8, jax.devices()
  jax.config.update(
    "jax_compilation_cache_dir", os.path.join(out_dir, "xla_cache")
  )  # resume = same program
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  total = 2 * steps
  ref_params = final_params(one_device_workdir, total)
  ref_losses = losses(one_device_workdir)
  summary = {}
  quiet = lambda msg: None

  def check(name: str, workdir: str, steps_compared) -> None:
    p = max_diff(final_params(workdir, total), ref_params)
    loss = loss_diff(losses(workdir), ref_losses, steps_compared)
    summary[name] = {"param_max_abs_diff": p, "loss_max_rel_diff": loss}
    assert p <= TOL and loss <= TOL, f"{name}: differs from the one-device run: {summary[name]}"

  # data parallel over 8 devices, batch drawn on device
  workdir = os.path.join(out_dir, "dp8")
  trainer_lib.train(tiny_config(data_dir, steps), workdir, log=quiet)
  check("data8", workdir, range(1, total + 1))

  # data 4 x edges 2 (trained in 2 processes, see multihost): the state is built split as asked
  config = tiny_config(data_dir, steps, **{"mesh.data": 4, "mesh.edges": 2})
  setup = setup_lib.build_setup(config, readers_lib.load(data_dir))
  tx = optimizer_lib.make_optimizer(config)
  state = state_lib.init_state(
    setup, tx, 0, setup.plan.initial_weights(), mesh=sharding_lib.make_mesh(4, 2)
  )
  for key, tree in state["params"]["edges"].items():  # both buckets hold 2 edges: one per device
    for leaf in jax.tree.leaves(tree):
      assert leaf.sharding.spec[0] == "edges" and len(leaf.addressable_shards[0].data) == 1, (
        key,
        leaf.sharding,
      )
  for leaf in jax.tree.leaves(state["opt"]):  # Adam's mu/nu follow the params
    assert leaf.ndim < 2 or leaf.sharding.spec[0] == "edges", leaf.sharding

  # a table split by rows is padded to a multiple of the data axis, the real rows unchanged
  table = np.arange(30, dtype=np.float32).reshape(10, 3)
  placed = sharding_lib.put_arrays(
    {"emb": {"m": table}},
    sharding_lib.arrays_shardings(
      {"emb": {"m": table}}, sharding_lib.make_mesh(8, 1), by_rows=True
    ),
  )["emb"]["m"]
  assert placed.shape == (16, 3) and placed.sharding.spec[0] == "data", (
    placed.shape,
    placed.sharding,
  )
  np.testing.assert_array_equal(np.asarray(placed)[:10], table)
  assert not np.asarray(placed)[10:].any()

  # data rows sharded over the data axis (device sampler gathers across devices)
  workdir = os.path.join(out_dir, "rows")
  trainer_lib.train(
    tiny_config(data_dir, steps, **{"mesh.shard_data_rows": True}), workdir, log=quiet
  )
  check("data8_rows_sharded", workdir, range(1, total + 1))

  # the host feed's batch laid out over 8 devices is the device sampler's, bit for bit
  config = tiny_config(data_dir, steps, **{"data.host_sampling": True})
  dataset = readers_lib.load_memmapped(data_dir)
  setup = setup_lib.build_setup(config, dataset)
  arrays = step_lib.sampler_arrays(setup, dataset)
  rng = jax.random.PRNGKey(5)
  feed = feed_lib.HostFeed(setup.plan.sample, arrays, setup.batch_size, rng, index_block=2)
  assert {i[1] for i in feed._leaves if i is not None} == {"float16", "normalise"}, feed._leaves
  shardings = feed.raw_shardings(sharding_lib.make_mesh(8, 1), sharding_lib.DATA)
  device_sample = jax.jit(setup.plan.sample, static_argnums=2)
  device_arrays = jax.device_put(tables_lib.materialize_tables(arrays))
  finish = jax.jit(feed.finish)
  for s in (0, 3):
    got = finish(feed.global_raw_batch(s, shardings))
    expected = device_sample(device_arrays, jax.random.fold_in(rng, s), setup.batch_size)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
      assert a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b)), s
  assert feed.rows_read == 2 * feed.rows_per_batch, (feed.rows_read, feed.rows_per_batch)

  # host sampling from the memory-mapped folder, batches laid out over 8 devices
  workdir = os.path.join(out_dir, "host")
  result = trainer_lib.train(
    tiny_config(data_dir, steps, **{"data.host_sampling": True}), workdir, log=quiet
  )
  assert type(result.dataset.modalities["image"].emb).__name__ == "NormalizedRows"
  check("data8_host_sampling", workdir, range(1, total + 1))

  # a one-device checkpoint resumes on 8 devices and ends as the one-device run does
  workdir = os.path.join(out_dir, "resume_on_8")
  copy_step(one_device_workdir, steps, workdir)
  result = trainer_lib.train(tiny_config(data_dir, steps), workdir, log=quiet)
  assert result.steps_run == steps, result.steps_run
  check("one_to_8_resume", workdir, range(steps + 1, total + 1))

  with open(os.path.join(out_dir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)


def multihost(
  process: int, processes: int, port: int, data_dir: str, workdir: str, steps: int
) -> None:
  """One process of a multi-process run: data 4 x edges 2 over every process's devices."""
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
    f"localhost:{port}", num_processes=processes, process_id=process, initialization_timeout=60
  )
  messages = []
  config = tiny_config(
    data_dir, steps, **{"mesh.data": 4, "mesh.edges": 2, "data.host_sampling": True}
  )
  trainer_lib.train(config, workdir, log=messages.append)
  # each process read the rows of its own 2 of the 4 data shards, once (not once per edges device)
  read = [m for m in messages if m.startswith("host feed: ")]
  assert len(read) == 1, messages
  rows, per_step = re.match(r"host feed: (\d+) table rows read .*\((\d+) a step", read[0]).groups()
  assert int(rows) * processes == int(per_step) * optimizer_lib.total_steps(config), read
  assert jax.process_count() == processes and jax.device_count() == 8, (
    jax.process_count(),
    jax.devices(),
  )
  assert any(
    "6x8-h16-gelu-ln edges, 8x6-h16-gelu-ln edges" in m and f"in {processes} process(es)" in m
    for m in messages
  ), messages
  jax.distributed.shutdown()


if __name__ == "__main__":
  args = [a for a in sys.argv[1:] if not a.startswith("--")]
  opts = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--"))
  if opts:
    os.environ["XLA_FLAGS"] = FAKE_DEVICES_FLAGS.replace(
      "count=8", f"count={8 // int(opts['processes'])}"
    )
    multihost(
      int(opts["process"]),
      int(opts["processes"]),
      int(opts["port"]),
      args[0],
      args[1],
      int(args[2]),
    )
  else:
    os.environ["XLA_FLAGS"] = (
      FAKE_DEVICES_FLAGS  # read when the CPU backend starts: before any computation
    )
    main(args[0], args[1], args[2], int(args[3]))
