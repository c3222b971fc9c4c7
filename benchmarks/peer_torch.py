"""PyTorch peer of benchmarks/step_bench.py's standard workload (benchmark only; torch is never a
dependency of graphbridge).

The same step as the project, written as a careful PyTorch engineer would: M modalities, all
M(M-1) directed edges, translator MLP d->h->h->d with tanh-GELU, edges stacked per layer and
applied with one `baddbmm` per layer and hop level (prefix-shared: a hop shared by several cycles
runs once), per-edge cosine + symmetric InfoNCE (temperature 0.07, label positives) and every
cycle of 2..L hops as batched tensor ops, one fused Adam step. Instance-aligned batches of B rows
per modality drawn on the device from L2-normalised synthetic data, as the project's sampler does.

  python benchmarks/peer_torch.py --modalities 3 --dim 256 --hidden 512 --batch 128 --cycle_length 3
  python benchmarks/peer_torch.py --device cuda --compile --amp bf16 --dim 1024 --hidden 2048
  --batch 256
  PYTHONPATH=$PWD python benchmarks/peer_torch.py --check   # same loss as the project (JAX) on the
                                                            # same batch and parameters

Prints one line per run, comparable with step_bench.py's:
  peer_torch M=3 d=256 h=512 B=128 L=3 float32 [cpu]: 16.5 steps/s (60.61 ms), ...
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from graphbridge.training import setup as setup_lib
from graphbridge.training import state as state_lib
from graphbridge.training import optimizer as optimizer_lib


# ---- the static plan: which edge runs on which slot at which hop ---------------------------------


def cycles_of(names, max_length):
  """Every simple directed cycle of 2..max_length hops in the complete graph, per start, in the
  order graphbridge.graph.ModalityGraph.cycles lists them (DFS over out-edges in node order)."""
  found = []

  def extend(path):
    for dst in names:
      if dst == path[-1]:
        continue
      hops = len(path)
      if dst == path[0]:
        if 2 <= hops <= max_length:
          found.append(tuple(path) + (path[0],))
      elif dst not in path and hops < max_length:
        extend(path + [dst])

  for s in names:
    extend([s])
  return found


class Plan:
  """Prefix tree of every translated path: level k holds the outputs of hop k as
  [E, R_k, B, d] (edge e applied to R_k row blocks, the same R_k for every edge of the complete
  graph); `gather[k]` picks each edge's inputs from level k-1 (flattened [n_prev * B rows])."""

  def __init__(self, modalities: int, cycle_length: int):
    self.names = [f"m{i}" for i in range(modalities)]
    self.edges = [(a, b) for a in self.names for b in self.names if a != b]
    self.edge_index = {e: i for i, e in enumerate(self.edges)}
    self.cycles = cycles_of(self.names, cycle_length)
    paths = set()
    for c in self.cycles:
      for k in range(2, len(c) + 1):
        paths.add(c[:k])
    for a, b in self.edges:
      paths.add((a, b))  # the per-edge terms (first hop, shared with the cycles)
    self.levels = []  # per level: list of paths, ordered edge-major: [E, R] flattened
    self.where = {}  # path -> (level, flat index in that level)
    for n in self.names:
      self.where[(n,)] = (0, self.names.index(n))
    for k in range(1, cycle_length + 1):
      by_edge = {
        e: sorted(p for p in paths if len(p) == k + 1 and (p[-2], p[-1]) == e) for e in self.edges
      }
      rows = {len(v) for v in by_edge.values()}
      if rows == {0}:
        break
      assert len(rows) == 1, "complete graph: every edge runs the same number of times per level"
      level = [p for e in self.edges for p in by_edge[e]]
      for i, p in enumerate(level):
        self.where[p] = (k, i)
      self.levels.append(level)
    self.rows = [len(level) // len(self.edges) for level in self.levels]
    self.inputs = [[self.where[p[:-1]][1] for p in level] for level in self.levels]
    self.cycle_lengths = sorted({len(c) - 1 for c in self.cycles})
    self.cycles_at = {
      L: [self.where[c][1] for c in self.cycles if len(c) - 1 == L] for L in self.cycle_lengths
    }
    self.cycle_target = {
      L: [self.names.index(c[0]) for c in self.cycles if len(c) - 1 == L]
      for L in self.cycle_lengths
    }
    self.edge_src = [self.names.index(a) for a, _ in self.edges]
    self.edge_dst = [self.names.index(b) for _, b in self.edges]
    self.edge_first_hop = [self.where[e][1] for e in self.edges]

  def forward_flops_per_row(self, dim: int, hidden: int) -> int:
    per_app = 2 * (dim * hidden + hidden * hidden + hidden * dim)
    return sum(len(level) for level in self.levels) * per_app


# ---- model and loss -----------------------------------------------------------------------------


def init_params(n_edges: int, dim: int, hidden: int, device, seed: int = 0) -> list[torch.Tensor]:
  """[W1 [E,d,h], b1 [E,1,h], W2 [E,h,h], b2, W3 [E,h,d], b3]: LeCun-normal kernels, zero biases
  (close to flax.linen.Dense, whose normal is truncated; --check copies the project's)."""
  g = torch.Generator().manual_seed(seed)
  widths = [dim, hidden, hidden, dim]
  params = []
  for a, b in zip(widths[:-1], widths[1:]):
    params.append(torch.randn(n_edges, a, b, generator=g) / math.sqrt(a))
    params.append(torch.zeros(n_edges, 1, b))
  return [p.to(device).requires_grad_(True) for p in params]


def translate(params, x):
  """x: [E, rows, d] -> [E, rows, d], every edge at once: one baddbmm per layer."""
  w1, b1, w2, b2, w3, b3 = params
  h = F.gelu(torch.baddbmm(b1, x, w1), approximate="tanh")
  h = F.gelu(torch.baddbmm(b2, h, w2), approximate="tanh")
  return torch.baddbmm(b3, h, w3)


def normalize(x):
  x = x.float()
  return x * torch.rsqrt(torch.clamp(torch.sum(x * x, dim=-1, keepdim=True), min=1e-16))


def cosine_loss(pred, target):
  """[n, B, d] x2 -> [n]: mean over B of 1 - cos."""
  return 1.0 - torch.mean(torch.sum(normalize(pred) * normalize(target), dim=-1), dim=-1)


def symmetric_infonce(pred, target, labels, inv_t):
  """pred, target [E, B, d]; labels [B] (equal labels are positives) -> [E]."""
  logits = torch.bmm(normalize(pred), normalize(target).transpose(1, 2)).float() * inv_t
  positives = (labels[:, None] == labels[None, :]).float()
  n_pos = positives.sum(-1)
  targets = positives / n_pos[:, None]
  row = -(targets * torch.log_softmax(logits, dim=-1)).sum(-1) - torch.log(n_pos)
  col = -(targets * torch.log_softmax(logits, dim=1)).sum(1) - torch.log(n_pos)
  return 0.5 * (row.mean(-1) + col.mean(-1))


class Step:
  """Everything of one step except the optimizer: sample, translate level by level, losses."""

  def __init__(
    self, plan: Plan, batch: int, device, temperature: float = 0.07, cycle_weight: float = 1.0
  ):
    self.plan, self.batch, self.inv_t = plan, batch, 1.0 / temperature
    self.cycle_weight = cycle_weight
    t = lambda v: torch.as_tensor(v, dtype=torch.long, device=device)
    self.inputs = [t(i) for i in plan.inputs]
    self.src, self.dst, self.first = t(plan.edge_src), t(plan.edge_dst), t(plan.edge_first_hop)
    self.cycles_at = {L: t(v) for L, v in plan.cycles_at.items()}
    self.cycle_target = {L: t(v) for L, v in plan.cycle_target.items()}

  def loss(self, params, start, labels):
    """start: [M, B, d] the batch of every modality; labels [B] -> scalar loss."""
    plan, n_edges, batch = self.plan, len(self.plan.edges), self.batch
    pools = [start]
    for k, rows in enumerate(plan.rows):
      x = pools[-1].index_select(0, self.inputs[k])  # [E * R, B, d]
      x = x.reshape(n_edges, rows * batch, x.shape[-1])
      y = translate(params, x)
      pools.append(y.reshape(n_edges * rows, batch, y.shape[-1]))
    pred = pools[1].index_select(0, self.first)  # [E, B, d]
    target = start.index_select(0, self.dst)
    total = (
      cosine_loss(pred, target).mean() + symmetric_infonce(pred, target, labels, self.inv_t).mean()
    )
    for L in plan.cycle_lengths:
      rec = pools[L].index_select(0, self.cycles_at[L])
      total = (
        total
        + self.cycle_weight * cosine_loss(rec, start.index_select(0, self.cycle_target[L])).mean()
      )
    return total


def synthetic(modalities: int, dim: int, rows: int, seed: int = 0) -> np.ndarray:
  """[M, rows, d] float32, L2-normalised rows (what graphbridge stores after loading)."""
  rng = np.random.default_rng(seed)
  x = np.stack([rng.standard_normal((rows, dim), dtype=np.float32) for _ in range(modalities)])
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def measure_gemm(device, n: int = 2048) -> float:
  """TFLOP/s of one n^3 float32 matmul under torch (median of 5)."""
  a = torch.randn(n, n, device=device)
  b = torch.randn(n, n, device=device)
  a @ b
  times = []
  for _ in range(5):
    _sync(device)
    t = time.perf_counter()
    for _ in range(2):
      c = a @ b
    _sync(device)
    times.append((time.perf_counter() - t) / 2)
  del c
  return 2 * n**3 / statistics.median(times) / 1e12


def _sync(device):
  if torch.device(device).type == "cuda":
    torch.cuda.synchronize()


def make_stepper(args):
  """(one_step, plan): one_step() runs one training step (sample, forward, backward, Adam) and
  returns the loss tensor, detached, without waiting for the device."""
  device = torch.device(args.device)
  plan = Plan(args.modalities, args.cycle_length)
  n_rows = max(4 * args.batch, 2048)
  data = torch.as_tensor(synthetic(args.modalities, args.dim, n_rows), device=device)
  params = init_params(len(plan.edges), args.dim, args.hidden, device)
  opt = torch.optim.Adam(params, lr=args.lr, betas=(0.9, 0.999), fused=True)
  step_obj = Step(plan, args.batch, device)
  loss_fn = step_obj.loss
  if args.compile:
    loss_fn = torch.compile(loss_fn)
  amp = args.amp == "bf16"

  def one_step():
    pick = torch.randint(0, n_rows, (args.batch,), device=device)
    start = data.index_select(1, pick)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
      loss = loss_fn(params, start, pick)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()

  return one_step, plan


def run(args) -> dict:
  device = torch.device(args.device)
  one_step, plan = make_stepper(args)
  amp = args.amp == "bf16"
  t0 = time.perf_counter()
  for _ in range(3):
    loss = one_step()
  _sync(device)
  warmup_s = time.perf_counter() - t0
  times = []
  for _ in range(args.repeats):
    _sync(device)
    t = time.perf_counter()
    for _ in range(args.steps):
      loss = one_step()
    _sync(device)
    times.append((time.perf_counter() - t) / args.steps)
  step_s = statistics.median(times)
  model_flops = 3 * plan.forward_flops_per_row(args.dim, args.hidden) * args.batch
  dtype = "bfloat16" if amp else "float32"
  return {
    "impl": "peer_torch",
    "M": args.modalities,
    "d": args.dim,
    "h": args.hidden,
    "B": args.batch,
    "L": args.cycle_length,
    "dtype": dtype,
    "device": str(device) + (" compile" if args.compile else ""),
    "threads": torch.get_num_threads(),
    "edges": len(plan.edges),
    "cycles": len(plan.cycles),
    "applications": sum(len(level) for level in plan.levels),
    "steps_per_s": 1.0 / step_s,
    "step_ms": 1e3 * step_s,
    "samples_per_s": args.batch * args.modalities / step_s,
    "model_tflops": model_flops / step_s / 1e12,
    "model_tflop_per_step": model_flops / 1e12,
    "warmup_s": warmup_s,
    "loss": float(loss),
    "spread": (max(times) - min(times)) / step_s,
    "torch": torch.__version__,
  }


def line(r: dict) -> str:
  return (
    f"peer_torch M={r['M']} d={r['d']} h={r['h']} B={r['B']} L={r['L']} {r['dtype']} "
    f"[{r['device']}, {r['threads']} threads]: "
    f"{r['steps_per_s']:.1f} steps/s ({r['step_ms']:.2f} ms), "
    f"{r['samples_per_s']:,.0f} samples/s, {r['model_tflops']:.3g} model TFLOP/s, "
    f"warm-up {r['warmup_s']:.1f} s; {r['applications']} translator applications, "
    f"{r['cycles']} cycles, "
    f"{r['model_tflop_per_step']:.3g} model TFLOP/step"
  )


# ---- --check: the same loss as graphbridge on the same batch and parameters --------------------


def check(args) -> int:
  """Build the project's step for this workload (benchmarks/step_bench.py's config), copy its
  initial parameters into the peer, draw one batch, and compare the losses (float32)."""
  import os

  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  import jax
  import jax.numpy as jnp

  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import step_bench

  dataset = step_bench.synthetic_dataset(args.modalities, args.dim, rows=max(4 * args.batch, 2048))
  config = step_bench.bench_config(
    args.modalities, args.dim, args.hidden, args.batch, args.cycle_length, "float32", True
  )
  setup = setup_lib.build_setup(config, dataset)
  tx = optimizer_lib.make_optimizer(config)
  state = state_lib.init_state(setup, tx, 0, optimizer_lib.phase_weights(config, setup.plan, 0))
  ((bucket_key, stacked),) = state["params"]["edges"].items()
  names = [f"m{i}" for i in range(args.modalities)]
  rng = np.random.default_rng(1)
  n_rows = len(dataset.modalities["m0"].emb)
  pick = rng.integers(0, n_rows, args.batch).astype(np.int32)
  pick[1] = pick[0]  # a repeated row: label positives must agree too
  batch = {
    "start": {m: jnp.asarray(dataset.modalities[m].emb[pick]) for m in names},
    "pair_label": {k: jnp.asarray(pick) for k in setup.plan.pair_keys},
  }
  loss_fn = lambda p: setup.plan.loss(p, {}, batch, state["weights"], None, jnp.float32)
  (jax_loss, _), jax_grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])

  plan = Plan(args.modalities, args.cycle_length)
  assert [f"{a}->{b}" for a, b in plan.edges] == [
    e.name for e in setup.layout.bucket_by_key[bucket_key].edges
  ]
  assert len(plan.cycles) == len(setup.plan.cycles)
  layers = ["dense_0", "dense_1", "out"]
  params = []
  for layer in layers:
    params.append(torch.tensor(np.asarray(stacked[layer]["kernel"])).requires_grad_(True))
    params.append(torch.tensor(np.asarray(stacked[layer]["bias"]))[:, None, :].requires_grad_(True))
  start = torch.tensor(np.stack([dataset.modalities[m].emb[pick] for m in names]))
  torch_loss = Step(plan, args.batch, "cpu").loss(params, start, torch.tensor(pick).long())
  torch_loss.backward()
  torch_loss = torch_loss.detach()
  grads_j = [
    np.asarray(jax_grads["edges"][bucket_key][layer][kind])
    for layer in layers
    for kind in ("kernel", "bias")
  ]
  grads_t = [p.grad.numpy().reshape(g.shape) for p, g in zip(params, grads_j)]
  grad_err = max(
    float(np.max(np.abs(a - b)) / (np.max(np.abs(a)) + 1e-30)) for a, b in zip(grads_j, grads_t)
  )
  diff = abs(float(jax_loss) - float(torch_loss))
  ok = diff <= 1e-5 * max(1.0, abs(float(jax_loss))) and grad_err <= 1e-4
  print(
    f"peer_torch check M={args.modalities} d={args.dim} h={args.hidden} B={args.batch} "
    f"L={args.cycle_length}: project loss {float(jax_loss):.7f}, "
    f"peer loss {float(torch_loss):.7f}, "
    f"|diff| {diff:.2e}; max relative gradient difference {grad_err:.2e} -> "
    f"{'SAME' if ok else 'DIFFERENT'}",
    flush=True,
  )
  return 0 if ok else 1


def parse(argv=None):
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
  p.add_argument("--compile", action="store_true", help="torch.compile the forward + loss")
  p.add_argument(
    "--amp", default="none", choices=["none", "bf16"], help="autocast matmuls to bfloat16"
  )
  p.add_argument("--modalities", type=int, default=3)
  p.add_argument("--dim", type=int, default=256)
  p.add_argument("--hidden", type=int, default=512)
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--cycle_length", type=int, default=3)
  p.add_argument("--steps", type=int, default=30, help="timed steps per repeat")
  p.add_argument("--repeats", type=int, default=3, help="timed repeats (median reported)")
  p.add_argument("--lr", type=float, default=2e-3)
  p.add_argument(
    "--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)"
  )
  p.add_argument("--gemm", action="store_true", help="also print torch's 2048^3 float32 GEMM rate")
  p.add_argument("--json_out", default="", help="append the result as a JSON line to this file")
  p.add_argument(
    "--check",
    action="store_true",
    help="compare the loss and gradients with the project's on one batch (needs graphbridge)",
  )
  args = p.parse_args(argv)
  for name in ("modalities", "dim", "hidden", "batch", "steps", "repeats"):
    if getattr(args, name) < 1:
      p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
  if args.modalities < 2 or args.cycle_length < 2:
    p.error("--modalities and --cycle_length must be >= 2")
  if args.device == "cuda" and not torch.cuda.is_available():
    p.error("--device cuda: this torch build sees no CUDA device")
  return args


def main(argv=None) -> int:
  args = parse(argv)
  if args.threads:
    torch.set_num_threads(args.threads)
  if args.check:
    return check(args)
  if args.gemm:
    print(
      f"gemm_peak torch float32 [{args.device}]: {measure_gemm(args.device):.3g} TFLOP/s",
      flush=True,
    )
  result = run(args)
  print(line(result), flush=True)
  if args.json_out:
    with open(args.json_out, "a") as f:
      f.write(json.dumps(result) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
