"""float32 matmul rates of the CPU step's shapes under XLA and PyTorch, interleaved (issue #17).

The standard CPU workload (d=256, h=512, B=128; rows per edge call 128-512) runs these 2-D matmuls
per edge: forward x[rows, d_in] @ W[d_in, d_out], the input gradient g[rows, d_out] @ W^T, and the
weight gradient x^T[d_in, rows] @ g[rows, d_out]. Both frameworks' rates on each, median of rounds
that alternate the two, show how much of the step's gap to the peer is the matmul library itself.

  PYTHONPATH=$PWD python benchmarks/gemm_shapes.py --threads 2
  XLA_FLAGS=--xla_cpu_use_onednn=true python benchmarks/gemm_shapes.py   # another XLA:CPU library
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# (name, m, k, n, layout): [m, k] @ [k, n]; layout "nn" plain, "tn" lhs stored transposed [k, m]
# (the weight gradient x^T g, contracting over rows), "nt" rhs stored transposed [n, k] (the input
# gradient g W^T)
SHAPES = (
  ("square 2048", 2048, 2048, 2048, "nn"),
  ("fwd d->h", 512, 256, 512, "nn"),
  ("fwd h->h", 512, 512, 512, "nn"),
  ("fwd h->d", 512, 512, 256, "nn"),
  ("dgrad h->d (g W^T)", 512, 256, 512, "nt"),
  ("dgrad h->h (g W^T)", 512, 512, 512, "nt"),
  ("wgrad h x h (x^T g)", 512, 512, 512, "tn"),
  ("wgrad d x h (x^T g)", 256, 512, 512, "tn"),
  ("fwd h->h, 128 rows", 128, 512, 512, "nn"),
)


def _time(fn, flops, min_s=0.3):
  fn()
  reps, t = 1, 0.0
  while True:
    start = time.perf_counter()
    for _ in range(reps):
      fn()
    t = time.perf_counter() - start
    if t >= min_s:
      return flops * reps / t / 1e9
    reps *= 2


def main(argv=None) -> int:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--threads", type=int, default=2)
  p.add_argument("--rounds", type=int, default=5)
  args = p.parse_args(argv)
  import jax
  import jax.numpy as jnp
  import torch

  torch.set_num_threads(args.threads)
  print(
    f"gemm_shapes float32, torch {torch.__version__} ({args.threads} threads), "
    f"jax {jax.__version__}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}",
    flush=True,
  )
  for name, m, k, n, layout in SHAPES:
    flops = 2 * m * k * n
    a_shape = (k, m) if layout == "tn" else (m, k)
    b_shape = (n, k) if layout == "nt" else (k, n)
    a_np = jax.random.normal(jax.random.PRNGKey(0), a_shape, jnp.float32)
    b_np = jax.random.normal(jax.random.PRNGKey(1), b_shape, jnp.float32)
    op = {"nn": lambda a, b: a @ b, "tn": lambda a, b: a.T @ b, "nt": lambda a, b: a @ b.T}[layout]
    f = jax.jit(op)
    ta, tb = torch.tensor(jax.device_get(a_np)), torch.tensor(jax.device_get(b_np))
    run_jax = lambda: f(a_np, b_np).block_until_ready()
    run_torch = lambda: op(ta, tb)
    xla, tor = [], []
    for _ in range(args.rounds):
      xla.append(_time(run_jax, flops))
      tor.append(_time(run_torch, flops))
    x, t = statistics.median(xla), statistics.median(tor)
    print(
      f"{name:22s} [{m}x{k}]@[{k}x{n}] {layout}: XLA {x:5.0f} GFLOP/s, "
      f"torch {t:6.0f} GFLOP/s, XLA/torch {x / t:.2f}",
      flush=True,
    )
  return 0


if __name__ == "__main__":
  sys.exit(main())
