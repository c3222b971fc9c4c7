"""Search at scale: 1,000 queries against galleries of 100k and 1M rows (256-d), exact and
approximate, beside the matmul floor measured in the same run.

  PYTHONPATH=$PWD python benchmarks/search_scale.py --rows 100000,1000000

For each gallery size one line per method: seconds (best of --repeats), peak memory allocated
beyond the gallery (tracemalloc: NumPy's buffers), recall@10 against exact. The floor is the one
[1000 x 256] x [256 x N] float32 product (numpy BLAS), the least any exact search must do. The rows
are unit vectors of a mixture of 1,000 Gaussian clusters (real embeddings cluster; queries are
noisy copies of gallery rows). The approximate backend is faiss's IVF-Flat (inner product), built
once (its build time is its own line).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import tracemalloc

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from graphbridge.evaluation import search as search_lib  # noqa: E402


def data(n: int, d: int, queries: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(1000, d)).astype(np.float32)
  gallery = np.empty((n, d), np.float32)
  for lo in range(0, n, 100_000):  # in blocks: no float64 temporaries of the whole gallery
    hi = min(lo + 100_000, n)
    gallery[lo:hi] = centres[rng.integers(0, 1000, hi - lo)] + 0.7 * rng.normal(
      size=(hi - lo, d)
    ).astype(np.float32)
  gallery = search_lib.scoring_rows(gallery)
  pick = rng.choice(n, queries, replace=False)
  q = search_lib.scoring_rows(
    gallery[pick] + 0.3 * rng.normal(size=(queries, d)).astype(np.float32)
  )
  return q, gallery


def timed(fn, repeats: int):
  best, out, peak = float("inf"), None, 0
  for _ in range(repeats):
    tracemalloc.start()
    t0 = time.perf_counter()
    out = fn()
    best = min(best, time.perf_counter() - t0)
    peak = max(peak, tracemalloc.get_traced_memory()[1])
    tracemalloc.stop()
  return best, out, peak


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--rows", default="100000,1000000")
  p.add_argument("--dim", type=int, default=256)
  p.add_argument("--queries", type=int, default=1000)
  p.add_argument("--k", type=int, default=10)
  p.add_argument("--repeats", type=int, default=2)
  a = p.parse_args()
  try:
    import faiss

    faiss_version = faiss.__version__
  except ImportError:
    faiss_version = None
  print(
    f"search_scale: {a.queries} queries, dim {a.dim}, k {a.k}; numpy {np.__version__}, "
    f"faiss {faiss_version or 'not installed'}; {os.cpu_count()} CPUs"
  )
  for n in (int(r) for r in a.rows.split(",")):
    one_size(n, a, faiss_version)


def one_size(n: int, a, faiss_version) -> None:
  q, g = data(n, a.dim, a.queries)
  floor, _, floor_mem = timed(lambda: q @ g.T, a.repeats)
  print(
    f"rows {n}: gallery {g.nbytes / 2**30:.2f} GiB; matmul floor "
    f"[{a.queries}x{a.dim}]x[{a.dim}x{n}] "
    f"{floor:.2f}s ({2 * a.queries * a.dim * n / floor / 1e9:.0f} GFLOP/s, output "
    f"{floor_mem / 2**30:.2f} GiB)"
  )
  seconds, (_, i_exact), peak = timed(lambda: search_lib.exact_top_k(q, g, a.k), a.repeats)
  print(
    f"rows {n}: exact      {seconds:7.2f}s  {seconds / floor:5.2f}x floor  peak beyond gallery "
    f"{peak / 2**30:.3f} GiB  recall@{a.k} 1.000"
  )
  if faiss_version:
    built, index, build_peak = timed(lambda: search_lib.faiss_index(g), 1)
    for nprobe in sorted({16, 32, 64, index.nprobe, 128}):
      index.nprobe = nprobe
      faiss_line(n, a, index, q, i_exact, floor, built, build_peak)


def faiss_line(n, a, index, q, i_exact, floor, built, build_peak) -> None:
  """One line of the approximate backend at its current nprobe."""
  seconds, (_, i_approx), peak = timed(lambda: index.search(q, a.k), a.repeats)
  recall = search_lib.recall_at_k(i_approx, i_exact)
  print(
    f"rows {n}: faiss IVF  {seconds:7.2f}s  {seconds / floor:5.2f}x floor  peak beyond gallery "
    f"{peak / 2**30:.3f} GiB  recall@{a.k} {recall:.3f}  (nlist {index.nlist}, nprobe "
    f"{index.nprobe}; built in {built:.1f}s, {build_peak / 2**30:.2f} GiB)"
  )


if __name__ == "__main__":
  main()
