"""Benchmark of the one-step training kernel (prints one comparable line per configuration).

Standard workload: M modalities with all M(M-1) directed edges, translator MLP d->h->h->d with GELU,
per-edge cosine + symmetric InfoNCE (temperature 0.07), every cycle of 2..L hops, one Adam step;
instance-aligned batches of B rows per modality (row i of every modality is one sample, so per-edge
terms share the first hop with the cycles), drawn on device from synthetic data.

Model FLOPs per step = 3 x forward matmul FLOPs of every translator application the step runs
(prefix-shared: a hop shared by several cycles is counted once, because it runs once). InfoNCE logit
FLOPs are reported separately. MFU is against a GEMM peak measured in the same run on the same
device (an 8192^3 matmul on GPU, 2048^3 on CPU) in the step's compute dtype.

  python benchmarks/step_bench.py --modalities=3 --dim=1024 --hidden=2048 --batch=256 \
    --dtype=bfloat16
  python benchmarks/step_bench.py --sweep=modalities --dim=256 --hidden=512 --batch=64   # M = 3..8
  python benchmarks/step_bench.py --sweep=cycle_length --dim=256 --hidden=512 --batch=64 # L = 2..4

Variants (opt-in library options; the default config is "base"), several per process:
  python benchmarks/step_bench.py --configs=3:256,5:1024 --variants=base,fused,fused+mu_bf16
  fused    model.impl="fused": Dense+bias+activation block whose backward recomputes the activation
           in float32 and sums the bias gradient in the same pass (translators.dense_bias_act)
  mu_bf16  optim.mu_dtype="bfloat16": Adam's first moment in bf16 (params, second moment f32)
  --xla_flags="--xla_gpu_..." is appended to XLA_FLAGS before jax starts (one setting per process).
"""

from __future__ import annotations

import json
import statistics
import sys
import time

from absl import app, flags
from graphbridge.data import readers as readers_lib
from graphbridge import defaults
from graphbridge.training import setup as setup_lib
from graphbridge.training import state as state_lib
from graphbridge.training import step as step_lib
from graphbridge.training import optimizer as optimizer_lib

flags.DEFINE_integer("modalities", 3, "M: number of modalities (complete graph, M(M-1) edges).")
flags.DEFINE_integer("dim", 1024, "d: embedding dim of every modality.")
flags.DEFINE_integer("hidden", 2048, "h: translator hidden width (d->h->h->d).")
flags.DEFINE_integer("batch", 256, "B: rows per modality per step.")
flags.DEFINE_integer("cycle_length", 3, "L: cycles of 2..L hops.")
flags.DEFINE_string(
  "dtype", "bfloat16", "matmul dtype: bfloat16 or float32 (params/optimizer stay f32)."
)
flags.DEFINE_integer("steps", 50, "timed steps per repeat.")
flags.DEFINE_integer("repeats", 3, "timed repeats (median reported).")
flags.DEFINE_bool("guard", True, "keep the non-finite guard (skip bad updates) as in training.")
flags.DEFINE_enum("sweep", "", ["", "modalities", "cycle_length"], "sweep M=3..8 or L=2..4.")
flags.DEFINE_string("json_out", "", "also append each result as a JSON line to this file.")
flags.DEFINE_string(
  "configs",
  "",
  "several configurations in one process: 'M:B,M:B' or with their "
  "own variants 'M:B:base|fused,M:B:fused' (overrides --modalities/--batch/--sweep).",
)
flags.DEFINE_list(
  "variants",
  ["base"],
  "variants to time per configuration: base, fused, mu_bf16, or '+'-joined, e.g. fused+mu_bf16.",
)
flags.DEFINE_string("xla_flags", "", "appended to XLA_FLAGS before jax is imported.")
flags.DEFINE_string("tag", "", "free text stored in each JSON result (e.g. which XLA flags).")
flags.DEFINE_string(
  "profile_dir", "", "trace 10 steps with jax.profiler here and print the top device ops."
)
FLAGS = flags.FLAGS


def measure_gemm_peak(dtype_name: str) -> float:
  """TFLOP/s of one large square matmul in `dtype` on the default device (median of 5)."""
  import jax
  import jax.numpy as jnp

  on_gpu = jax.devices()[0].platform == "gpu"
  n = 8192 if on_gpu else 2048
  dtype = jnp.bfloat16 if dtype_name == "bfloat16" else jnp.float32
  ka, kb = jax.random.split(jax.random.PRNGKey(0))
  a = jax.random.normal(ka, (n, n), dtype)
  b = jax.random.normal(kb, (n, n), dtype)
  f = jax.jit(lambda x, y: x @ y)
  f(a, b).block_until_ready()
  times = []
  reps = 10 if on_gpu else 2
  for _ in range(5):
    t = time.perf_counter()
    for _ in range(reps):
      out = f(a, b)
    out.block_until_ready()
    times.append((time.perf_counter() - t) / reps)
  return 2 * n**3 / statistics.median(times) / 1e12


def synthetic_dataset(modalities: int, dim: int, rows: int, seed: int = 0):
  import numpy as np

  rng = np.random.default_rng(seed)
  names = [f"m{i}" for i in range(modalities)]
  arrays = {f"{m}_emb": rng.standard_normal((rows, dim), dtype=np.float32) for m in names}
  identity = np.stack([np.arange(rows), np.arange(rows)], axis=1)
  for i in range(modalities):
    for j in range(i + 1, modalities):
      arrays[f"pairs_{names[i]}__{names[j]}"] = identity
  return readers_lib.from_arrays(arrays, source="synthetic")


VARIANT_PARTS = {
  "base": {},
  "fused": {"model.impl": "fused"},
  "mu_bf16": {"optim.mu_dtype": "bfloat16"},
  "batched": {"model.edge_apply": "batched"},  # one batched matmul per layer over stacked edges
  "per_edge": {"model.edge_apply": "per_edge"},  # one 2-D matmul per edge (auto's choice on CPU)
}


def variant_overrides(variant: str) -> dict:
  """'fused+mu_bf16' -> {"model.impl": "fused", "optim.mu_dtype": "bfloat16"}."""
  out = {}
  for part in variant.split("+"):
    if part not in VARIANT_PARTS:
      raise ValueError(
        f"unknown variant part {part!r} in {variant!r} (choices: {', '.join(VARIANT_PARTS)})"
      )
    out.update(VARIANT_PARTS[part])
  return out


def bench_config(
  modalities: int,
  dim: int,
  hidden: int,
  batch: int,
  cycle_length: int,
  dtype: str,
  guard: bool,
  variant: str = "base",
):
  c = defaults.base_config()
  names = [f"m{i}" for i in range(modalities)]
  c.graph.edges = ",".join(f"{a}->{b}" for a in names for b in names if a != b)
  c.data.batch_size = batch
  c.model.hidden = (hidden, hidden)
  c.model.activation = "gelu"
  c.model.layer_norm = False
  c.model.compute_dtype = dtype
  c.loss.edge_cos = 1.0
  c.loss.infonce = 1.0
  c.loss.temperature = 0.07
  c.loss.infonce_positives = "pair"
  c.loss.cycle_weights = tuple(1.0 for _ in range(2, cycle_length + 1))
  c.loss.aligned_batches = True
  c.optim.grad_clip = 0.0
  c.optim.warmup_steps = 1
  c.train.skip_nonfinite = guard
  for key, value in variant_overrides(variant).items():
    section, name = key.split(".")
    c[section][name] = value
  return c


_DATASETS: dict = {}


def run_one(
  modalities: int,
  dim: int,
  hidden: int,
  batch: int,
  cycle_length: int,
  dtype: str,
  steps: int,
  repeats: int,
  guard: bool,
  peak: float,
  variant: str = "base",
) -> dict:
  import jax

  t0 = time.perf_counter()
  rows = max(4 * batch, 2048)
  if (modalities, dim, rows) not in _DATASETS:  # variants of one configuration share the data
    _DATASETS.clear()
    _DATASETS[(modalities, dim, rows)] = synthetic_dataset(modalities, dim, rows=rows)
  dataset = _DATASETS[(modalities, dim, rows)]
  config = bench_config(modalities, dim, hidden, batch, cycle_length, dtype, guard, variant)
  t_data = time.perf_counter()
  setup = setup_lib.build_setup(config, dataset)
  tx = optimizer_lib.make_optimizer(config)
  t_plan = time.perf_counter()
  state = state_lib.init_state(setup, tx, 0, optimizer_lib.phase_weights(config, setup.plan, 0))
  jax.block_until_ready(state)
  t_state = time.perf_counter()
  arrays = jax.device_put(step_lib.sampler_arrays(setup, dataset))
  jax.block_until_ready(arrays)
  step = step_lib.make_device_step(setup, tx, skip_nonfinite=guard)
  t_build = time.perf_counter()
  setup_parts = {
    "data": t_data - t0,
    "plan": t_plan - t_data,
    "init_state": t_state - t_plan,
    "arrays": t_build - t_state,
  }
  compiled = step.lower(state, {}, arrays).compile()
  compile_s = time.perf_counter() - t_build
  state, metrics = compiled(state, {}, arrays)  # warm-up
  for _ in range(3):
    state, metrics = compiled(state, {}, arrays)
  jax.block_until_ready(state)
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    for _ in range(steps):
      state, metrics = compiled(state, {}, arrays)
    jax.block_until_ready(state)
    times.append((time.perf_counter() - t) / steps)
  step_s = statistics.median(times)
  if FLAGS.profile_dir:
    profile_top_ops(compiled, state, arrays, FLAGS.profile_dir, steps=10)
  plan = setup.plan
  model_flops = 3 * plan.forward_flops_per_row() * batch
  n_terms = len(plan.terms)
  infonce_flops = 3 * n_terms * 2 * batch * batch * dim
  loss = float(metrics["loss/total"])
  return {
    "variant": variant,
    "tag": FLAGS.tag,
    "xla_flags": FLAGS.xla_flags,
    "setup_parts_s": setup_parts,
    "M": modalities,
    "d": dim,
    "h": hidden,
    "B": batch,
    "L": cycle_length,
    "dtype": dtype,
    "guard": guard,
    "device": jax.devices()[0].device_kind,
    "edges": modalities * (modalities - 1),
    "cycles": len(plan.cycles),
    "applications": plan.applications,
    "steps_per_s": 1.0 / step_s,
    "step_ms": 1e3 * step_s,
    "samples_per_s": batch * modalities / step_s,
    "model_tflops": model_flops / step_s / 1e12,
    "model_tflop_per_step": model_flops / 1e12,
    "infonce_tflop_per_step": infonce_flops / 1e12,
    "peak_tflops": peak,
    "mfu": model_flops / step_s / 1e12 / peak,
    "compile_s": compile_s,
    "setup_s": t_build - t0,
    "loss": loss,
    "spread": (max(times) - min(times)) / step_s,
  }


def profile_top_ops(compiled, state, arrays, directory: str, steps: int, top: int = 30) -> None:
  """Trace `steps` steps and print device ops by total time (per step), plus device busy time."""
  import collections
  import glob
  import jax
  from jax.profiler import ProfileData

  with jax.profiler.trace(directory):
    for _ in range(steps):
      state, _ = compiled(state, {}, arrays)
    jax.block_until_ready(state)
  files = sorted(glob.glob(f"{directory}/**/*.xplane.pb", recursive=True))
  data = ProfileData.from_file(files[-1])
  totals: dict[str, float] = collections.defaultdict(float)
  counts: dict[str, int] = collections.defaultdict(int)
  busy = 0.0
  for plane in data.planes:
    if not plane.name.startswith("/device:"):
      continue
    print(f"profile plane {plane.name}: lines {[line.name for line in plane.lines]}", flush=True)
    for line in plane.lines:
      if "XLA Ops" not in line.name and "Kernel" not in line.name and "Stream" not in line.name:
        continue
      for event in line.events:
        totals[f"{line.name[:12]}|{event.name[:90]}"] += event.duration_ns
        counts[f"{line.name[:12]}|{event.name[:90]}"] += 1
        if "Stream" in line.name:
          busy += event.duration_ns
  print(f"profile: device busy {busy / steps / 1e3:.1f} us/step over {steps} steps", flush=True)
  for name, ns in sorted(totals.items(), key=lambda kv: -kv[1])[:top]:
    print(f"  {ns / steps / 1e3:9.1f} us/step  x{counts[name] // steps:<4d} {name}", flush=True)


def line(r: dict) -> str:
  return (
    f"step_bench [{r.get('variant', 'base')}{' ' + r['tag'] if r.get('tag') else ''}] M={r['M']} "
    f"d={r['d']} h={r['h']} B={r['B']} L={r['L']} {r['dtype']} "
    f"[{r['device']}]: {r['steps_per_s']:.1f} steps/s ({r['step_ms']:.2f} ms), "
    f"{r['samples_per_s']:,.0f} samples/s, {r['model_tflops']:.3g} model TFLOP/s, "
    f"MFU {100 * r['mfu']:.1f}% of {r['peak_tflops']:.3g} measured GEMM TFLOP/s, "
    f"compile {r['compile_s']:.1f} s; {r['applications']} translator applications, "
    f"{r['cycles']} cycles, {r['model_tflop_per_step']:.3g} model TFLOP/step "
    f"(+{r['infonce_tflop_per_step']:.3g} InfoNCE)"
  )


def main(argv):
  del argv
  if FLAGS.xla_flags:
    import os

    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + FLAGS.xla_flags).strip()
    print(f"XLA_FLAGS={os.environ['XLA_FLAGS']}", flush=True)
  for variant in FLAGS.variants:
    variant_overrides(variant)  # fail on a typo before anything compiles
  variants = tuple(FLAGS.variants)
  configs = [(FLAGS.modalities, FLAGS.cycle_length, FLAGS.batch, variants)]
  if FLAGS.configs:
    configs = []
    for item in FLAGS.configs.split(","):
      m, b, own = (item.split(":") + ["", ""])[:3]
      own_variants = tuple(own.split("|")) if own else variants
      for variant in own_variants:
        variant_overrides(variant)
      configs.append((int(m), FLAGS.cycle_length, int(b) if b else FLAGS.batch, own_variants))
  elif FLAGS.sweep == "modalities":
    configs = [(m, FLAGS.cycle_length, FLAGS.batch, variants) for m in range(3, 9)]
  elif FLAGS.sweep == "cycle_length":
    configs = [(FLAGS.modalities, length, FLAGS.batch, variants) for length in range(2, 5)]
  t = time.perf_counter()
  peak = measure_gemm_peak(FLAGS.dtype)
  print(
    f"gemm_peak {FLAGS.dtype}: {peak:.3g} TFLOP/s (jax start + measurement "
    f"{time.perf_counter() - t:.1f} s)",
    flush=True,
  )
  if FLAGS.json_out:
    import jax

    with open(FLAGS.json_out, "a") as f:
      f.write(
        json.dumps(
          {
            "gemm_peak_tflops": peak,
            "dtype": FLAGS.dtype,
            "tag": FLAGS.tag,
            "device": jax.devices()[0].device_kind,
            "jax": jax.__version__,
          }
        )
        + "\n"
      )
  failures = 0
  for modalities, cycle_length, batch, config_variants in configs:
    for variant in config_variants:
      try:
        result = run_one(
          modalities,
          FLAGS.dim,
          FLAGS.hidden,
          batch,
          cycle_length,
          FLAGS.dtype,
          FLAGS.steps,
          FLAGS.repeats,
          FLAGS.guard,
          peak,
          variant,
        )
      except Exception as exc:  # one failed variant (e.g. out of memory) must not stop the others
        failures += 1
        print(
          f"step_bench [{variant}] M={modalities} B={batch}: FAILED {type(exc).__name__}: "
          f"{str(exc)[:500]}",
          flush=True,
        )
        continue
      print(
        line(result)
        + " setup "
        + ", ".join(f"{k} {v:.1f} s" for k, v in result["setup_parts_s"].items()),
        flush=True,
      )
      if FLAGS.json_out:
        with open(FLAGS.json_out, "a") as f:
          f.write(json.dumps(result) + "\n")
  if failures:
    sys.exit(1)


if __name__ == "__main__":
  sys.path.insert(
    0,
    __import__("os").path.dirname(
      __import__("os").path.dirname(__import__("os").path.abspath(__file__))
    ),
  )
  app.run(main)
