"""Memory of training on memory-mapped data larger than we would like to hold in RAM.

Writes M modalities of random float16 rows (instance-aligned pairs, --gb in all) as a folder of
.npy files, then runs in a fresh process each:

  host    train with data.host_sampling=True: tables stay on disk, each step reads its rows
  load    data.load(folder), the in-RAM path (L2-normalises whole tables into float32 copies)

and prints one line per mode: peak resident set (anonymous = the process's own memory, file =
pages of the memory-mapped tables, which the kernel can drop) against the size of the files. The
tables' pages are evicted from the page cache before each mode, so each starts cold.

  python benchmarks/host_sampling_rss.py --gb=4 --steps=200
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time

from absl import app, flags
from graphbridge.data import readers as readers_lib
from graphbridge import defaults
from graphbridge.training import trainer as trainer_lib

flags.DEFINE_float("gb", 4.0, "total size of the embedding files (GB)")
flags.DEFINE_integer("modalities", 2, "number of modalities (tables)")
flags.DEFINE_integer("dim", 1024, "embedding dim")
flags.DEFINE_integer("steps", 200, "training steps (host mode)")
flags.DEFINE_integer("batch", 256, "batch size")
flags.DEFINE_integer("prefetch", 4, "data.prefetch: batches read ahead, each on its own thread")
flags.DEFINE_string("dir", "", "folder for the data (default: a temp dir, removed after)")
flags.DEFINE_string("modes", "host,load", "comma-separated modes to run")
flags.DEFINE_string("child", "", "internal: run one mode in this process")
FLAGS = flags.FLAGS
GB = 1 << 30


def write_data(folder: str, gb: float, modalities: int, dim: int) -> int:
  import numpy as np

  rows = int(gb * GB / (modalities * dim * 2))
  rng = np.random.default_rng(0)
  chunk = max(1, (256 << 20) // (dim * 4))
  for m in range(modalities):
    out = np.lib.format.open_memmap(
      os.path.join(folder, f"m{m}_emb.npy"), mode="w+", dtype=np.float16, shape=(rows, dim)
    )
    for start in range(0, rows, chunk):
      n = min(chunk, rows - start)
      out[start : start + n] = rng.standard_normal((n, dim), dtype=np.float32)
    out.flush()
    del out
  identity = np.stack([np.arange(rows), np.arange(rows)], axis=1).astype(np.int64)
  for m in range(1, modalities):
    np.save(os.path.join(folder, f"pairs_m0__m{m}.npy"), identity)
  return rows


def evict_page_cache(folder: str) -> None:
  """Drop the tables' pages from the page cache (clean pages; no root needed), so every mode starts
  cold and the file-backed RSS counts only what that mode reads."""
  for name in os.listdir(folder):
    if name.endswith(".npy"):
      fd = os.open(os.path.join(folder, name), os.O_RDONLY)
      try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
      finally:
        os.close(fd)


class RssSampler:
  """Peak RssAnon / RssFile of this process, read from /proc every 20 ms."""

  def __init__(self):
    self.peak = {"RssAnon": 0, "RssFile": 0, "VmRSS": 0}
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)
    self._thread.start()

  def read(self) -> dict:
    out = {}
    with open("/proc/self/status") as f:
      for line in f:
        key, _, value = line.partition(":")
        if key in self.peak:
          out[key] = int(value.split()[0]) * 1024
    return out

  def _run(self):
    while not self._stop.is_set():
      for k, v in self.read().items():
        self.peak[k] = max(self.peak[k], v)
      time.sleep(0.02)

  def stop(self) -> dict:
    self._stop.set()
    self._thread.join()
    for k, v in self.read().items():
      self.peak[k] = max(self.peak[k], v)
    return self.peak


def child(mode: str, folder: str) -> dict:
  sampler = RssSampler()
  t0 = time.perf_counter()
  result = {}
  if mode == "load":
    dataset = readers_lib.load(folder)
    result["rows"] = {m: len(mod) for m, mod in dataset.modalities.items()}
  else:
    c = defaults.base_config()
    c.data.path = folder
    c.data.host_sampling = mode == "host"
    c.data.batch_size = FLAGS.batch
    c.data.prefetch = FLAGS.prefetch
    c.model.hidden = (512,)
    c.loss.aligned_batches = True
    c.loss.infonce_positives = "pair"
    c.train.steps = FLAGS.steps
    c.train.log_every = FLAGS.steps
    c.train.checkpoint_every = 0
    run = trainer_lib.train(c, None, log=lambda msg: None)
    result["steps_per_s"] = run.steps_run / max(run.seconds - run.compile_seconds, 1e-9)
    result["loss"] = run.final_metrics["loss/total"]
  result["seconds"] = time.perf_counter() - t0
  result["peak"] = sampler.stop()
  result["ru_maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  return result


def main(argv):
  del argv
  if FLAGS.child:
    mode, folder = FLAGS.child.split(":", 1)
    print("RESULT " + json.dumps(child(mode, folder)), flush=True)
    return
  tmp = None
  folder = FLAGS.dir
  if not folder:
    tmp = tempfile.TemporaryDirectory(prefix="gb_rss_")
    folder = tmp.name
  os.makedirs(folder, exist_ok=True)
  if not any(f.endswith("_emb.npy") for f in os.listdir(folder)):
    t = time.perf_counter()
    rows = write_data(folder, FLAGS.gb, FLAGS.modalities, FLAGS.dim)
    print(
      f"wrote {FLAGS.modalities} x {rows} rows x {FLAGS.dim} float16 in "
      f"{time.perf_counter() - t:.0f} s",
      flush=True,
    )
  size = sum(
    os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder) if f.endswith("_emb.npy")
  )
  for mode in FLAGS.modes.split(","):
    evict_page_cache(folder)
    cmd = [
      sys.executable,
      os.path.abspath(__file__),
      f"--child={mode}:{folder}",
      f"--steps={FLAGS.steps}",
      f"--batch={FLAGS.batch}",
      f"--prefetch={FLAGS.prefetch}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode or not lines:
      print(
        f"host_sampling_rss mode={mode}: failed\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}",
        flush=True,
      )
      continue
    r = json.loads(lines[-1][7:])
    p = r["peak"]
    extra = (
      f", {r['steps_per_s']:.1f} steps/s (B={FLAGS.batch}, prefetch {FLAGS.prefetch}), "
      f"loss {r['loss']:.3f}"
      if "steps_per_s" in r
      else ""
    )
    print(
      f"host_sampling_rss mode={mode} tables {size / GB:.2f} GB on disk: "
      f"peak RSS {p['VmRSS'] / GB:.2f} GB "
      f"(anonymous {p['RssAnon'] / GB:.2f} GB, file-backed {p['RssFile'] / GB:.2f} GB; ru_maxrss "
      f"{r['ru_maxrss'] / GB:.2f} GB), {r['seconds']:.0f} s{extra}",
      flush=True,
    )
  if tmp is not None:
    tmp.cleanup()


if __name__ == "__main__":
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  app.run(main)
