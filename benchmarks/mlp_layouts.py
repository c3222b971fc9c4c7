"""The translator MLP of the standard CPU workload, forward and backward, in three parameter layouts
and against PyTorch's `baddbmm`, timed interleaved in one run (issue #17: where the CPU step's gap
is).

  stacked   params [E, ...] applied with batched dots (einsum over the edge axis): the layout the
            training step uses today (translators.StackedTranslator)
  split     stacked params split per edge inside the jitted function (jnp.split), per-edge 2-D dots,
            gradients concatenated back
  lists     params held as one array per edge (no stacking), per-edge 2-D dots
  scan      stacked params, lax.scan over the edges (a loop of per-edge 2-D dots on slices)
  torch     the peer's layout: stacked params, one `baddbmm` per layer (benchmarks/peer_torch.py)

Workload: E edges, d->h->h->d, tanh-GELU, N rows per edge, loss sum(y * g). Each variant's median
over rounds (A B C D, A B C D, ...), so a load change on a shared machine hits all of them.

  PYTHONPATH=$PWD python benchmarks/mlp_layouts.py --edges 20 --rows 128,384,512
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

# the peer's OpenMP threads must not spin between calls while JAX runs (set before torch loads)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def jax_variants(E, N, d, h):
  import jax
  import jax.numpy as jnp

  key = jax.random.PRNGKey(0)
  k1, k2, k3 = jax.random.split(key, 3)
  ps = [
    jax.random.normal(jax.random.fold_in(k1, i), (E, a, b)) / a**0.5
    for i, (a, b) in enumerate([(d, h), (h, h), (h, d)])
  ]
  bs = [jnp.zeros((E, b)) for b in (h, h, d)]
  x = jax.random.normal(k2, (E, N, d))
  g = jax.random.normal(k3, (E, N, d))
  gelu = lambda z: jax.nn.gelu(z, approximate=True)

  def stacked(ps, bs, x):
    y = gelu(jnp.einsum("end,edh->enh", x, ps[0]) + bs[0][:, None])
    y = gelu(jnp.einsum("end,edh->enh", y, ps[1]) + bs[1][:, None])
    y = jnp.einsum("end,edh->enh", y, ps[2]) + bs[2][:, None]
    return jnp.sum(y * g)

  def per_edge(pl, bl, xs):
    ys = []
    for e in range(E):
      y = gelu(xs[e] @ pl[0][e] + bl[0][e])
      y = gelu(y @ pl[1][e] + bl[1][e])
      ys.append(y @ pl[2][e] + bl[2][e])
    return jnp.sum(jnp.stack(ys) * g)

  def split(ps, bs, x):
    parts = lambda a: [q[0] for q in jnp.split(a, E, axis=0)]
    return per_edge([parts(p) for p in ps], [parts(b) for b in bs], parts(x))

  def lists(pl, bl, xs):
    return per_edge(pl, bl, xs)

  def scan(ps, bs, x):
    def one(_, args):
      w1, w2, w3, c1, c2, c3, xe = args
      y = gelu(xe @ w1 + c1)
      y = gelu(y @ w2 + c2)
      return None, y @ w3 + c3

    _, ys = jax.lax.scan(one, None, (*ps, *bs, x))
    return jnp.sum(ys * g)

  pl = [[p[e] for e in range(E)] for p in ps]
  bl = [[b[e] for e in range(E)] for b in bs]
  xs = [x[e] for e in range(E)]
  grad = lambda f: jax.jit(jax.grad(f, argnums=(0, 1, 2)))
  f_stacked, f_split, f_lists, f_scan = grad(stacked), grad(split), grad(lists), grad(scan)
  return {
    "stacked": lambda: jax.block_until_ready(f_stacked(ps, bs, x)),
    "split": lambda: jax.block_until_ready(f_split(ps, bs, x)),
    "lists": lambda: jax.block_until_ready(f_lists(pl, bl, xs)),
    "scan": lambda: jax.block_until_ready(f_scan(ps, bs, x)),
  }


def torch_variant(E, N, d, h, threads):
  import torch
  import torch.nn.functional as F

  torch.set_num_threads(threads)
  g0 = torch.Generator().manual_seed(0)
  ps = [
    (torch.randn(E, a, b, generator=g0) / a**0.5).requires_grad_(True)
    for a, b in [(d, h), (h, h), (h, d)]
  ]
  bs = [torch.zeros(E, 1, b, requires_grad=True) for b in (h, h, d)]
  x = torch.randn(E, N, d, generator=g0, requires_grad=True)
  g = torch.randn(E, N, d, generator=g0)

  def run():
    y = F.gelu(torch.baddbmm(bs[0], x, ps[0]), approximate="tanh")
    y = F.gelu(torch.baddbmm(bs[1], y, ps[1]), approximate="tanh")
    y = torch.baddbmm(bs[2], y, ps[2])
    return torch.autograd.grad((y * g).sum(), ps + bs + [x])

  return run


def main(argv=None) -> int:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--edges", type=int, default=20)
  p.add_argument("--rows", default="128,384,512", help="rows per edge, comma-separated")
  p.add_argument("--dim", type=int, default=256)
  p.add_argument("--hidden", type=int, default=512)
  p.add_argument("--rounds", type=int, default=6)
  p.add_argument("--threads", type=int, default=2)
  p.add_argument("--no_torch", action="store_true")
  args = p.parse_args(argv)
  have_torch = not args.no_torch
  if have_torch:
    try:
      import torch  # noqa: F401
    except ImportError:
      have_torch = False
      print("torch not installed: the peer column is skipped")
  E, d, h = args.edges, args.dim, args.hidden
  for N in (int(r) for r in args.rows.split(",")):
    runs = jax_variants(E, N, d, h)
    if have_torch:
      runs["torch"] = torch_variant(E, N, d, h, args.threads)
    for r in runs.values():
      r()
      r()
    times = {k: [] for k in runs}
    for _ in range(args.rounds):
      for k, r in runs.items():
        t = time.perf_counter()
        r()
        r()
        times[k].append((time.perf_counter() - t) / 2)
    flops = 3 * 2 * E * N * (d * h + h * h + h * d)
    ref = statistics.median(times["stacked"])
    cells = []
    for k, v in times.items():
      t = statistics.median(v)
      cells.append(f"{k} {flops / t / 1e9:.0f} GFLOP/s ({ref / t:.2f}x)")
    print(f"E={E} N={N} d={d} h={h}: " + ", ".join(cells), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
