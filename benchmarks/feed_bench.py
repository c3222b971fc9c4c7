"""Benchmark of the host feed (data.host_sampling) alone: batches drawn, read from memory-mapped
.npy tables and placed on the device per second, no training step; beside the device sampler's
rate (the objective's jitted sample() on device-resident tables) and end-to-end training steps/s.

Writes M tables of random rows (--rows x --dim, --dtype; instance-aligned pairs) as a folder of
.npy files (or uses --dir), then runs each measurement in a fresh process and prints one line
each. Cache "warm": the tables are read once before timing (in the page cache); "cold": their
pages are dropped from the page cache (posix_fadvise DONTNEED, no root needed) before the feed is
built and again right before timing, so rows come from the disk.

  python benchmarks/feed_bench.py                         # the acceptance shape, ~4 GB of files
  python benchmarks/feed_bench.py --rows=65536 --seconds=3 --feeds=hostsampler --train_steps=0

Feeds: hostsampler (data.HostSampler + Prefetcher, the trainer's feed before issue 31: the jitted
index sample() per step, rows read, float32-normalised on the host, device_put), feed
(data.HostFeed, graphbridge/data/feed.py). rows/s counts table rows delivered (B x gathered
batch entries).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from absl import app, flags

flags.DEFINE_integer("rows", 1 << 20, "rows per table")
flags.DEFINE_integer("dim", 1024, "embedding dim")
flags.DEFINE_string("dtype", "float16", "dtype of the .npy tables")
flags.DEFINE_integer("batch", 1024, "batch size (rows per modality per step)")
flags.DEFINE_integer("modalities", 2, "number of modalities (tables)")
flags.DEFINE_bool("aligned", True, "loss.aligned_batches (row i of every table is one sample)")
flags.DEFINE_string("cache", "warm,cold", "page cache states to measure: warm, cold")
flags.DEFINE_string("feeds", "hostsampler,feed", "host feeds to measure")
flags.DEFINE_float("seconds", 10.0, "timed seconds per feed measurement")
flags.DEFINE_integer(
  "prefetch", 0, "data.prefetch: steps read ahead (0: each feed's default, 4 before, 16 after)"
)
flags.DEFINE_integer("workers", 0, "HostFeed worker threads (0: the feed's default)")
flags.DEFINE_bool(
  "finish", True, "also time HostFeed with its normalisation (feed.finish, jitted) per batch"
)
flags.DEFINE_integer("device_rows", 262144, "rows per table for the device sampler (RAM bound)")
flags.DEFINE_integer("train_steps", 30, "end-to-end training steps per measurement (0: skip)")
flags.DEFINE_integer("hidden", 512, "translator hidden width of the end-to-end runs")
flags.DEFINE_enum(
  "workload",
  "light",
  ["light", "step_bench"],
  "light: base config, translators d-hidden-d, aligned pairs m0-m(i); step_bench: step_bench.py's "
  "workload (every direction between the M modalities, d-h-h-d GELU, cycles up to --cycle_length)",
)
flags.DEFINE_integer("cycle_length", 3, "step_bench workload: cycles of 2..L hops")
flags.DEFINE_string("compute_dtype", "float32", "model.compute_dtype of the end-to-end runs")
flags.DEFINE_bool(
  "check", False, "only check HostFeed's batches against the device sampler's on this device"
)
flags.DEFINE_string("dir", "", "folder of tables to use or create (default: a temp dir, removed)")
flags.DEFINE_bool("keep", False, "keep the folder written under --dir")
flags.DEFINE_string("json_out", "", "append one JSON line per measurement here")
flags.DEFINE_string("child", "", "internal: one measurement (JSON spec) in this process")
FLAGS = flags.FLAGS
GB = 1 << 30


def write_tables(folder: str) -> None:
  import numpy as np

  rng = np.random.default_rng(0)
  chunk = max(1, (128 << 20) // (FLAGS.dim * 4))
  for m in range(FLAGS.modalities):
    out = np.lib.format.open_memmap(
      os.path.join(folder, f"m{m}_emb.npy"),
      mode="w+",
      dtype=np.dtype(FLAGS.dtype),
      shape=(FLAGS.rows, FLAGS.dim),
    )
    for start in range(0, FLAGS.rows, chunk):
      n = min(chunk, FLAGS.rows - start)
      out[start : start + n] = rng.standard_normal((n, FLAGS.dim), dtype=np.float32)
    out.flush()
    del out
  identity = np.stack([np.arange(FLAGS.rows)] * 2, axis=1).astype(np.int64)
  for a in range(FLAGS.modalities):  # every pair of modalities, row i with row i
    for b in range(a + 1, FLAGS.modalities):
      np.save(os.path.join(folder, f"pairs_m{a}__m{b}.npy"), identity)


def table_files(folder: str) -> list:
  return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith("_emb.npy"))


def remove_written(folder: str) -> None:
  """Delete the files write_tables wrote."""
  for name in os.listdir(folder):
    if name.endswith("_emb.npy") or (name.startswith("pairs_m") and name.endswith(".npy")):
      os.remove(os.path.join(folder, name))


def evict(folder: str) -> bool:
  """Drop the tables' clean pages from the page cache; False where the kernel refuses."""
  ok = True
  for path in table_files(folder):
    fd = os.open(path, os.O_RDONLY)
    try:
      os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError:
      ok = False
    finally:
      os.close(fd)
  return ok


def cached_fraction(folder: str) -> float:
  """Share of the tables' pages in the page cache (mincore over a fresh read-only mapping)."""
  import ctypes
  import mmap

  import numpy as np

  libc = ctypes.CDLL(None, use_errno=True)
  resident = total = 0
  for path in table_files(folder):
    mapping = np.memmap(path, dtype=np.uint8, mode="r")  # offset 0: page-aligned
    pages = (len(mapping) + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    vec = np.zeros(pages, np.uint8)
    rc = libc.mincore(
      ctypes.c_void_p(mapping.ctypes.data),
      ctypes.c_size_t(len(mapping)),
      vec.ctypes.data_as(ctypes.c_void_p),
    )
    if rc == 0:
      resident += int((vec & 1).sum())
      total += pages
    del mapping
  return resident / max(total, 1)


def warm(folder: str) -> None:
  for path in table_files(folder):
    with open(path, "rb") as f:
      while f.read(64 << 20):
        pass


def sampler_setup(folder: str, rows: int | None = None):
  """(config, setup, dataset): the benchmark's training config on the folder (memory-mapped), or
  with `rows`, on the first rows of every table, loaded into RAM (the device-sampled path)."""
  import numpy as np
  from graphbridge import defaults
  from graphbridge.data import readers as readers_lib
  from graphbridge.training import setup as setup_lib

  c = defaults.base_config()
  c.data.path = folder
  c.data.host_sampling = rows is None
  c.data.batch_size = FLAGS.batch
  if FLAGS.prefetch:
    c.data.prefetch = FLAGS.prefetch
  c.model.hidden = (FLAGS.hidden,)
  c.model.compute_dtype = FLAGS.compute_dtype
  c.loss.aligned_batches = FLAGS.aligned
  c.loss.infonce_positives = "pair"
  if FLAGS.workload == "step_bench":  # as benchmarks/step_bench.py's bench_config
    names = [f"m{i}" for i in range(FLAGS.modalities)]
    c.graph.edges = ",".join(f"{a}->{b}" for a in names for b in names if a != b)
    c.model.hidden = (FLAGS.hidden, FLAGS.hidden)
    c.model.activation = "gelu"
    c.model.layer_norm = False
    c.loss.edge_cos = c.loss.infonce = 1.0
    c.loss.temperature = 0.07
    c.loss.cycle_weights = tuple(1.0 for _ in range(2, FLAGS.cycle_length + 1))
    c.optim.grad_clip = 0.0
    c.optim.warmup_steps = 1
  c.train.steps = max(FLAGS.train_steps, 1)
  c.train.log_every = c.train.print_every = max(FLAGS.train_steps, 1)
  c.train.checkpoint_every = 0
  if rows is None:
    dataset = readers_lib.load_memmapped(folder)
  else:
    arrays = {}
    for name in os.listdir(folder):
      if name.endswith(".npy"):
        a = np.load(os.path.join(folder, name), mmap_mode="r")
        arrays[name[:-4]] = np.asarray(a[:rows])
    dataset = readers_lib.from_arrays(arrays, source=f"{folder}[:{rows}]")
  return c, setup_lib.build_setup(c, dataset), dataset


def run_feed(spec: dict) -> dict:
  """Batches per second of one host feed, placed on the default device (no training step)."""
  import jax
  from graphbridge.data import host as host_lib
  from graphbridge.training import step as step_lib

  folder = spec["folder"]
  if spec["cache"] == "cold":
    evict(folder)
  t0 = time.perf_counter()
  config, setup, dataset = sampler_setup(folder)
  arrays = step_lib.sampler_arrays(setup, dataset)
  rng = jax.random.PRNGKey(0)
  steps = 1 << 30
  if spec["feed"] == "hostsampler":
    sampler = host_lib.HostSampler(setup.plan.sample, arrays, setup.batch_size, rng)
    rows_per_batch = sum(
      int(s.shape[0]) for s, g in zip(jax.tree.leaves(sampler.batch_shapes), sampler.gathered) if g
    )
    prefetch = FLAGS.prefetch or 4  # data.prefetch's default before HostFeed
    batches = host_lib.Prefetcher(
      lambda s: jax.device_put(sampler.batch(s)), 0, steps, size=prefetch
    )
    close = batches.close
  else:
    from graphbridge.data import feed as feed_lib

    prefetch = int(config.data.prefetch)
    feed = feed_lib.HostFeed(
      setup.plan.sample,
      arrays,
      setup.batch_size,
      rng,
      prefetch=prefetch,
      workers=FLAGS.workers or None,
    )
    rows_per_batch = feed.rows_per_batch
    batches = feed.batches(0, steps)
    close = batches.close
    if spec.get("finish"):  # the normalisation the training step runs, here on its own
      finish, raw = jax.jit(feed.finish), batches
      batches = (finish(b) for b in raw)
  first = next(batches)  # compiles, starts the workers
  jax.block_until_ready(first)
  setup_seconds = time.perf_counter() - t0
  if spec["cache"] == "cold":
    evict(folder)
  n, t0 = 0, time.perf_counter()
  while time.perf_counter() - t0 < FLAGS.seconds:
    jax.block_until_ready(next(batches))
    n += 1
  seconds = time.perf_counter() - t0
  close()
  return {
    "batches_per_s": n / seconds,
    "rows_per_s": n * rows_per_batch / seconds,
    "batches": n,
    "rows_per_batch": rows_per_batch,
    "setup_s": setup_seconds,
    "prefetch": prefetch,
    "workers": FLAGS.workers or prefetch,
  }


def run_device_sampler(spec: dict) -> dict:
  """Batches per second of the objective's jitted sample() on device-resident tables."""
  import jax
  from graphbridge.data import tables as tables_lib
  from graphbridge.training import step as step_lib

  config, setup, dataset = sampler_setup(spec["folder"], rows=spec["device_rows"])
  arrays = jax.device_put(tables_lib.materialize_tables(step_lib.sampler_arrays(setup, dataset)))
  sample = jax.jit(lambda a, key: setup.plan.sample(a, key, setup.batch_size))
  rng = jax.random.PRNGKey(0)
  out = sample(arrays, rng)
  jax.block_until_ready(out)
  rows_per_batch = sum(
    int(x.shape[0]) for x in jax.tree.leaves(out) if x.ndim == 2 and x.shape[1] == FLAGS.dim
  )
  n, t0 = 0, time.perf_counter()
  while time.perf_counter() - t0 < FLAGS.seconds:
    outs = [sample(arrays, jax.random.fold_in(rng, n + i)) for i in range(16)]
    jax.block_until_ready(outs)
    n += 16
  seconds = time.perf_counter() - t0
  return {
    "batches_per_s": n / seconds,
    "rows_per_s": n * rows_per_batch / seconds,
    "batches": n,
    "rows_per_batch": rows_per_batch,
  }


def run_train(spec: dict) -> dict:
  """End-to-end training steps/s (compile excluded): host-fed from the memory-mapped folder, or
  device-fed (spec["device_rows"]: tables' first rows in device memory)."""
  from graphbridge.training import trainer as trainer_lib

  folder = spec["folder"]
  if spec["cache"] == "cold":
    evict(folder)
  config, setup, dataset = sampler_setup(folder, rows=spec.get("device_rows"))
  run = trainer_lib.train(config, None, dataset=dataset, log=lambda msg: None)
  train_seconds = run.seconds - run.compile_seconds
  steps_per_s = (run.steps_run - 1) / max(train_seconds, 1e-9)
  model_flops = 3 * setup.plan.forward_flops_per_row() * FLAGS.batch  # as step_bench counts them
  return {
    "steps_per_s": steps_per_s,
    "model_tflops": model_flops * steps_per_s / 1e12,
    "steps": run.steps_run,
    "compile_s": run.compile_seconds,
    "loss": run.final_metrics["loss/total"],
  }


def check(folder: str) -> bool:
  """HostFeed's batches against the device sampler's, bit for bit, on the default device: both
  samplers (aligned and not), 8 steps over 3 index blocks. Prints one line per sampler."""
  import jax
  import numpy as np
  from graphbridge.data import feed as feed_lib
  from graphbridge.data import tables as tables_lib
  from graphbridge.training import step as step_lib

  ok = True
  for aligned in (True, False):
    FLAGS.aligned = aligned
    _, setup, dataset = sampler_setup(folder)
    arrays = step_lib.sampler_arrays(setup, dataset)
    rng = jax.random.PRNGKey(7)
    feed = feed_lib.HostFeed(setup.plan.sample, arrays, setup.batch_size, rng, index_block=3)
    sample = jax.jit(setup.plan.sample, static_argnums=2)
    device_arrays = jax.device_put(tables_lib.materialize_tables(arrays))
    leaves = differ = 0
    for step in range(8):
      expected = sample(device_arrays, jax.random.fold_in(rng, step), setup.batch_size)
      got = feed.batch(step)
      for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        leaves += 1
        same = a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b))
        differ += not same
    ok &= differ == 0
    print(
      f"feed_bench check aligned={int(aligned)} on {jax.devices()[0].device_kind}: {leaves} batch "
      f"leaves over 8 steps, {differ} differ from the device sampler's"
      + (" (bit for bit equal)" if not differ else ""),
      flush=True,
    )
  return ok


def child(spec: dict) -> dict:
  kind = spec["kind"]
  result = {"feed": run_feed, "device": run_device_sampler, "train": run_train}[kind](spec)
  return {**spec, **result}


def describe(r: dict) -> str:
  shape = (
    f"rows={FLAGS.rows} dim={FLAGS.dim} dtype={FLAGS.dtype} batch={FLAGS.batch} "
    f"modalities={FLAGS.modalities} aligned={int(FLAGS.aligned)}"
  )
  if r["kind"] == "feed":
    return (
      f"feed_bench feed={r['feed']}{'+finish' if r.get('finish') else ''} cache={r['cache']} "
      f"{shape} prefetch={r['prefetch']} workers={r['workers']}: "
      f"{r['batches_per_s']:.1f} batches/s, {r['rows_per_s']:,.0f} rows/s "
      f"({r['rows_per_batch']} rows a batch, {r['batches']} batches, setup {r['setup_s']:.1f} s)"
    )
  if r["kind"] == "device":
    return (
      f"feed_bench device_sampler {shape} (tables' first {r['device_rows']} rows, float32 on "
      f"the device): {r['batches_per_s']:.1f} batches/s, {r['rows_per_s']:,.0f} rows/s"
    )
  fed = f"host-fed cache={r['cache']}" if "device_rows" not in r else "device-fed"
  return (
    f"feed_bench train {fed} {shape} workload={FLAGS.workload} hidden={FLAGS.hidden} "
    f"compute_dtype={FLAGS.compute_dtype}: {r['steps_per_s']:.2f} steps/s, model "
    f"{r['model_tflops']:.3g} TFLOP/s ({r['steps']} steps, compile {r['compile_s']:.1f} s, "
    f"loss {r['loss']:.3f})"
  )


def main(argv):
  del argv
  if FLAGS.child:
    print("RESULT " + json.dumps(child(json.loads(FLAGS.child))), flush=True)
    return
  folder, tmp = FLAGS.dir, None
  if not folder:
    tmp = tempfile.mkdtemp(prefix="gb_feed_")
    folder = tmp
  os.makedirs(folder, exist_ok=True)
  wrote = not table_files(folder)
  if wrote:
    need = FLAGS.modalities * FLAGS.rows * FLAGS.dim * 2
    free = shutil.disk_usage(folder).free
    if free < 1.2 * need:
      sys.exit(f"feed_bench: {need / GB:.1f} GB of tables but {free / GB:.1f} GB free in {folder}")
    t = time.perf_counter()
    write_tables(folder)
    print(f"feed_bench: wrote tables in {time.perf_counter() - t:.0f} s to {folder}", flush=True)
  if FLAGS.check:
    ok = check(folder)
    if wrote:
      remove_written(folder)
    if tmp is not None:
      shutil.rmtree(tmp, ignore_errors=True)
    sys.exit(0 if ok else 1)
  size = sum(os.path.getsize(p) for p in table_files(folder))
  can_evict = evict(folder)
  cold_ok = can_evict and cached_fraction(folder) < 0.05
  print(
    f"feed_bench: {size / GB:.2f} GB of tables; {os.cpu_count()} CPUs, load "
    f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}; cold cache "
    + ("by posix_fadvise(DONTNEED)" if cold_ok else "NOT available (pages stay cached)"),
    flush=True,
  )
  specs = []
  for cache in FLAGS.cache.split(","):
    if cache == "cold" and not cold_ok:
      print("feed_bench: skipping cache=cold (the kernel keeps the pages)", flush=True)
      continue
    for feed in FLAGS.feeds.split(","):
      specs.append({"kind": "feed", "feed": feed, "cache": cache})
      if feed == "feed" and FLAGS.finish:
        specs.append({"kind": "feed", "feed": feed, "cache": cache, "finish": True})
    if FLAGS.train_steps > 0:
      specs.append({"kind": "train", "cache": cache})
  specs.append(
    {"kind": "device", "cache": "ram", "device_rows": min(FLAGS.device_rows, FLAGS.rows)}
  )
  if FLAGS.train_steps > 0:
    specs.append(
      {"kind": "train", "cache": "ram", "device_rows": min(FLAGS.device_rows, FLAGS.rows)}
    )
  flag_args = [
    f"--{name}={getattr(FLAGS, name)}"
    for name in (
      "rows",
      "dim",
      "dtype",
      "batch",
      "modalities",
      "seconds",
      "prefetch",
      "workers",
      "train_steps",
      "hidden",
      "workload",
      "cycle_length",
      "compute_dtype",
    )
  ] + [f"--aligned={FLAGS.aligned}"]
  for spec in specs:
    spec["folder"] = folder
    if spec["cache"] == "warm":
      warm(folder)
    cmd = [sys.executable, os.path.abspath(__file__), *flag_args, "--child=" + json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
      print(f"feed_bench {spec}: failed\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}", flush=True)
      continue
    result = json.loads(lines[-1][7:])
    print(describe(result), flush=True)
    if FLAGS.json_out:
      with open(FLAGS.json_out, "a") as f:
        f.write(json.dumps({**result, "flags": flag_args}) + "\n")
  if tmp is not None or (wrote and not FLAGS.keep):
    remove_written(folder)
    if tmp is not None:
      shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  app.run(main)
