"""The project's training step against the PyTorch peer (benchmarks/peer_torch.py), interleaved.

Two persistent worker processes, one per implementation, each compiled and warmed up once per
configuration; the parent then times them alternately (A B A B ...), each turn running whole
steps for about --seconds, so a load change on a shared machine hits both alike. Printed per
configuration: the median steps/s of each and the median of the per-round ratios
(project / peer), plus each framework's measured float32 GEMM rate (1024^3 and 2048^3).
`--edge_apply auto,batched,per_edge` times the project once per `model.edge_apply` setting, each in
its own worker, all in the same rounds (A1 A2 A3 B, A1 A2 A3 B, ...).

  PYTHONPATH=$PWD python benchmarks/compare_peer.py                     # M=3,5,8 x L=2,3
  PYTHONPATH=$PWD python benchmarks/compare_peer.py --configs 3:3,5:3 --rounds 5 --threads 2
  PYTHONPATH=$PWD python benchmarks/compare_peer.py --configs 3:3,5:3 --edge_apply batched,per_edge
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from graphbridge.training import setup as setup_lib
from graphbridge.training import state as state_lib
from graphbridge.training import step as step_lib
from graphbridge.training import optimizer as optimizer_lib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


# ---- workers -------------------------------------------------------------------------------------


def _project_stepper(args):
  sys.path.insert(0, ROOT)
  sys.path.insert(0, HERE)
  import jax
  import step_bench

  dataset = step_bench.synthetic_dataset(args.modalities, args.dim, rows=max(4 * args.batch, 2048))
  config = step_bench.bench_config(
    args.modalities, args.dim, args.hidden, args.batch, args.cycle_length, "float32", True
  )
  config.model.edge_apply = args.edge_apply
  setup = setup_lib.build_setup(config, dataset)
  tx = optimizer_lib.make_optimizer(config)
  state = state_lib.init_state(setup, tx, 0, optimizer_lib.phase_weights(config, setup.plan, 0))
  arrays = jax.device_put(step_lib.sampler_arrays(setup, dataset))
  compiled = (
    step_lib.make_device_step(setup, tx, skip_nonfinite=True).lower(state, {}, arrays).compile()
  )
  box = {"state": state}

  def run_steps(n):
    state = box["state"]
    for _ in range(n):
      state, metrics = compiled(state, {}, arrays)
    jax.block_until_ready(state)
    box["state"] = state

  def gemm(n):
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    return _median_rate(lambda: f(a, a).block_until_ready(), n)

  return run_steps, gemm


def _peer_stepper(args):
  sys.path.insert(0, HERE)
  import torch
  import peer_torch

  if args.threads:
    torch.set_num_threads(args.threads)
  peer_args = peer_torch.parse(
    [
      "--modalities",
      str(args.modalities),
      "--dim",
      str(args.dim),
      "--hidden",
      str(args.hidden),
      "--batch",
      str(args.batch),
      "--cycle_length",
      str(args.cycle_length),
    ]
  )
  one_step, _ = peer_torch.make_stepper(peer_args)

  def run_steps(n):
    for _ in range(n):
      loss = one_step()
    float(loss)

  def gemm(n):
    a = torch.randn(n, n)
    a @ a
    return _median_rate(lambda: a @ a, n)

  return run_steps, gemm


def _median_rate(fn, n, reps=5):
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return 2 * n**3 / statistics.median(times) / 1e9  # GFLOP/s


def worker(args) -> None:
  """Line protocol on stdin/stdout: 'time S' -> '<steps> <seconds>'; 'gemm N' -> GFLOP/s."""
  if args.threads:
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[: args.threads]))
  t0 = time.perf_counter()
  run_steps, gemm = (_project_stepper if args.worker == "project" else _peer_stepper)(args)
  run_steps(3)  # compile (project) and warm-up
  print(f"ready {time.perf_counter() - t0:.1f}", flush=True)
  for cmd in sys.stdin:
    op, value = cmd.split()
    if op == "time":
      target, steps = float(value), 0
      t = time.perf_counter()
      n = 1
      while True:
        run_steps(n)
        steps += n
        elapsed = time.perf_counter() - t
        if elapsed >= target:
          break
        n = max(1, min(steps, int(steps * (target - elapsed) / elapsed)))
      print(f"{steps} {elapsed:.6f}", flush=True)
    elif op == "gemm":
      print(f"{gemm(int(value)):.1f}", flush=True)
    else:
      return


class Worker:
  def __init__(
    self,
    kind: str,
    args,
    modalities: int,
    cycle_length: int,
    edge_apply: str = "auto",
    xla_flags: str = "",
  ):
    env = dict(os.environ)
    if xla_flags:
      env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + xla_flags).strip()
    if args.threads:
      env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "")
        + f" --xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={args.threads}"
      )
      env["OMP_NUM_THREADS"] = str(args.threads)
    if kind == "peer" and not args.omp_active:
      env.setdefault(
        "OMP_WAIT_POLICY", "PASSIVE"
      )  # spinning OpenMP barriers collapse on a loaded machine
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [
      sys.executable,
      os.path.abspath(__file__),
      "--worker",
      kind,
      "--modalities",
      str(modalities),
      "--cycle_length",
      str(cycle_length),
      "--dim",
      str(args.dim),
      "--hidden",
      str(args.hidden),
      "--batch",
      str(args.batch),
      "--threads",
      str(args.threads),
      "--edge_apply",
      edge_apply,
    ]
    self.proc = subprocess.Popen(
      cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    self.kind = (
      kind if kind == "peer" else f"project[{edge_apply}{' ' + xla_flags if xla_flags else ''}]"
    )

  def ready(self) -> float:
    line = self.proc.stdout.readline()
    if not line.startswith("ready"):
      raise RuntimeError(f"{self.kind} worker failed to start (exit {self.proc.wait()})")
    return float(line.split()[1])

  def ask(self, text: str) -> str:
    self.proc.stdin.write(text + "\n")
    self.proc.stdin.flush()
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError(f"{self.kind} worker died (exit {self.proc.wait()})")
    return line.strip()

  def close(self):
    try:
      self.proc.stdin.write("quit 0\n")
      self.proc.stdin.close()
    except OSError:
      pass
    self.proc.wait(timeout=60)


def compare(args, modalities: int, cycle_length: int, gemm: bool) -> dict:
  variants = args.edge_apply.split(",")
  flag_sets = args.xla_variants.split(";") if args.xla_variants else [""]
  projects = [
    Worker("project", args, modalities, cycle_length, v, f.strip())
    for v in variants
    for f in flag_sets
  ]
  peer = Worker("peer", args, modalities, cycle_length)
  workers = projects + [peer]
  try:
    start_s = {w.kind: w.ready() for w in workers}
    rates = {w.kind: [] for w in workers}
    for _ in range(args.rounds):
      for w in workers:
        steps, seconds = w.ask(f"time {args.seconds}").split()
        rates[w.kind].append(int(steps) / float(seconds))
    ratios = {w.kind: [a / b for a, b in zip(rates[w.kind], rates["peer"])] for w in projects}
    first = projects[0].kind
    out = {
      "M": modalities,
      "L": cycle_length,
      "d": args.dim,
      "h": args.hidden,
      "B": args.batch,
      "threads": args.threads or os.cpu_count(),
      "rounds": args.rounds,
      "project_steps_per_s": statistics.median(rates[first]),
      "peer_steps_per_s": statistics.median(rates["peer"]),
      "ratio": statistics.median(ratios[first]),
      "ratios": ratios[first],
      "variants": {
        k: {"steps_per_s": statistics.median(rates[k]), "ratio": statistics.median(v), "ratios": v}
        for k, v in ratios.items()
      },
      "rates": rates,
      "startup_s": start_s,
      "loadavg_1min": os.getloadavg()[0],
    }
    if gemm:
      for n in (1024, 2048):
        out[f"gemm{n}_gflops"] = {
          "xla": float(projects[0].ask(f"gemm {n}")),
          "torch": float(peer.ask(f"gemm {n}")),
        }
    return out
  finally:
    for w in workers:
      w.close()


def main(argv=None) -> int:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--configs", default="3:2,3:3,5:2,5:3,8:2,8:3", help="M:L pairs, comma separated")
  p.add_argument("--dim", type=int, default=256)
  p.add_argument("--hidden", type=int, default=512)
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--rounds", type=int, default=4, help="A B turns per configuration")
  p.add_argument("--seconds", type=float, default=2.0, help="seconds of whole steps per turn")
  p.add_argument("--threads", type=int, default=0, help="cores for each worker (0: all)")
  p.add_argument(
    "--omp_active",
    action="store_true",
    help="leave torch's OpenMP threads spinning (default: OMP_WAIT_POLICY=PASSIVE for the peer, "
    "its faster setting on a shared machine; on an idle machine spinning may be faster)",
  )
  p.add_argument(
    "--edge_apply",
    default="auto",
    help="model.edge_apply setting(s) of the project, comma separated: each its own worker, "
    "timed in the same rounds (e.g. batched,per_edge)",
  )
  p.add_argument(
    "--xla_variants",
    default="",
    help="';'-separated XLA_FLAGS sets for the project's workers (one worker per set and "
    "edge_apply setting; an empty set = XLA's defaults), e.g. ';--xla_cpu_use_onednn=true'",
  )
  p.add_argument("--json_out", default="")
  p.add_argument("--worker", default="", choices=["", "project", "peer"], help=argparse.SUPPRESS)
  p.add_argument("--modalities", type=int, default=3, help=argparse.SUPPRESS)
  p.add_argument("--cycle_length", type=int, default=3, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.worker:
    worker(args)
    return 0
  try:
    configs = [tuple(int(v) for v in c.split(":")) for c in args.configs.split(",")]
    assert all(len(c) == 2 and c[0] >= 2 and c[1] >= 2 for c in configs)
  except (ValueError, AssertionError):
    p.error(f"--configs={args.configs!r}: expected M:L pairs such as 3:2,5:3 (M, L >= 2)")
  print(
    f"compare_peer d={args.dim} h={args.hidden} B={args.batch} float32, threads "
    f"{args.threads or os.cpu_count()}, {args.rounds} interleaved rounds of ~{args.seconds:g} s, "
    f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores",
    flush=True,
  )
  for i, (m, length) in enumerate(configs):
    r = compare(args, m, length, gemm=(i == 0))
    if i == 0:
      g = {n: r[f"gemm{n}_gflops"] for n in (1024, 2048)}
      print(
        "GEMM float32 GFLOP/s: "
        + ", ".join(f"{n}^3 XLA {v['xla']:.0f} torch {v['torch']:.0f}" for n, v in g.items()),
        flush=True,
      )
    for kind, v in r["variants"].items():
      print(
        f"M={m} L={length}: {kind} {v['steps_per_s']:.2f} steps/s, peer "
        f"{r['peer_steps_per_s']:.2f} steps/s, ratio {v['ratio']:.2f}x (rounds "
        f"{', '.join(f'{x:.2f}' for x in v['ratios'])}; load {r['loadavg_1min']:.1f})",
        flush=True,
      )
    if args.json_out:
      with open(args.json_out, "a") as f:
        f.write(json.dumps(r) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
