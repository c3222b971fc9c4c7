"""Time and peak memory of the evaluation report against rows per modality.

Synthetic instance-aligned data: 3 modalities of 256-d, N rows each (row i of every modality is
one sample, id i, one of 100 classes), 20% test rows. A 3-node graph (every directed edge, the
default translator) is trained for --steps steps, then the full report (retrieval at instance and
class level, gap, silhouette, reconstruction, figures unless --noplots) is built on the test rows.
Each size runs in a fresh process so its peak RSS (ru_maxrss) is its own.

  PYTHONPATH=$PWD python benchmarks/report_scale.py --rows 5000,20000,50000,200000
  PYTHONPATH=$PWD python benchmarks/report_scale.py --rows 50000 --max_queries 2000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from graphbridge.data import readers as readers_lib
from graphbridge import defaults
from graphbridge.evaluation import report as report_lib
from graphbridge.evaluation.aligners import GraphAligner
from graphbridge.training import setup as setup_lib
from graphbridge.training import state as state_lib
from graphbridge.training import step as step_lib
from graphbridge.training import optimizer as optimizer_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def one(
  rows: int, steps: int, plots: bool, max_queries: int, classes: int, querybank_k: int = -1
) -> dict:
  sys.path.insert(0, ROOT)
  import jax
  import numpy as np

  t0 = time.perf_counter()
  rng = np.random.default_rng(0)
  names = ("a", "b", "c")
  labels = rng.integers(0, classes, rows)
  centres = {m: rng.standard_normal((classes, 256)).astype(np.float32) for m in names}
  shared = rng.standard_normal((rows, 256)).astype(np.float32)
  test = np.zeros(rows, bool)
  test[rng.permutation(rows)[: rows // 5]] = True
  arrays = {}
  for i, m in enumerate(names):
    mix = rng.standard_normal((256, 256)).astype(np.float32) / 16
    arrays[f"{m}_emb"] = (
      centres[m][labels] + shared @ mix + 0.5 * rng.standard_normal((rows, 256)).astype(np.float32)
    )
    arrays[f"{m}_label"] = labels
    arrays[f"{m}_id"] = np.arange(rows)
    arrays[f"{m}_test"] = test
    arrays[f"{m}_train"] = ~test
  identity = np.stack([np.arange(rows), np.arange(rows)], axis=1)
  for i, a in enumerate(names):
    for b in names[i + 1 :]:
      arrays[f"pairs_{a}__{b}"] = identity
  dataset = readers_lib.from_arrays(arrays, source=f"synthetic{rows}")
  del arrays
  t_data = time.perf_counter() - t0

  c = defaults.base_config()
  c.data.batch_size = 128
  c.model.hidden = (512, 512)
  c.train.steps = steps
  c.optim.warmup_steps = 5
  setup = setup_lib.build_setup(c, dataset)
  tx = optimizer_lib.make_optimizer(c)
  state = state_lib.init_state(setup, tx, 0, optimizer_lib.phase_weights(c, setup.plan, 0))
  arrays = jax.device_put(step_lib.sampler_arrays(setup, dataset))
  step = step_lib.make_device_step(setup, tx)
  t1 = time.perf_counter()
  for _ in range(steps):
    state, _ = step(state, {}, arrays)
  jax.block_until_ready(state)
  t_train = time.perf_counter() - t1

  params = state["params"]["edges"]
  aligner = GraphAligner(setup.layout, params, "float32", name="graph")
  before = GraphAligner(
    setup.layout, report_lib.initial_params(setup.layout, params, 0), "float32", name="graph"
  )
  options = report_lib.EvalOptions(max_queries=max_queries or 0, querybank_k=querybank_k)
  rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  cpu2 = time.process_time()
  t2 = time.perf_counter()
  with tempfile.TemporaryDirectory() as out:
    summary = report_lib.run_report(
      aligner, dataset, out, before, options, plots=plots, log=lambda s: None
    )
  t_report = time.perf_counter() - t2
  cpu_report = time.process_time() - cpu2
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  inst = [r for r in summary["rows"] if r["level"] == "instance"]
  return {
    "rows": rows,
    "test_rows": int(test.sum()),
    "classes": classes,
    "steps": steps,
    "plots": plots,
    "max_queries": max_queries,
    "querybank_k": summary.get("querybank_k"),
    "data_s": t_data,
    "train_s": t_train,
    "report_s": t_report,
    "report_cpu_s": cpu_report,
    "eval_s": summary["timing"]["eval_seconds"],
    "peak_rss_mb": rss,
    "rss_before_report_mb": rss_before,
    "instance_mAP_mean": float(np.mean([r["mAP"] for r in inst])) if inst else None,
    "n_queries": inst[0]["n_queries"] if inst else None,
    "devices": str(jax.devices()[0].platform),
  }


def main(argv=None) -> int:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument(
    "--rows", default="5000,20000,50000,200000", help="rows per modality, comma separated"
  )
  p.add_argument("--steps", type=int, default=100)
  p.add_argument("--classes", type=int, default=100)
  p.add_argument("--max_queries", type=int, default=0, help="eval.max_queries (0: every test row)")
  p.add_argument(
    "--querybank_k",
    default="-1",
    help="eval.querybank_k (-1 auto: on here, the pairs are instance-level; 0 off); a comma "
    "list runs each size once per value",
  )
  p.add_argument("--noplots", action="store_true")
  p.add_argument("--json_out", default="")
  p.add_argument("--one", type=int, default=0, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.one:
    print(
      "RESULT "
      + json.dumps(
        one(
          args.one,
          args.steps,
          not args.noplots,
          args.max_queries,
          args.classes,
          int(args.querybank_k),
        )
      )
    )
    return 0
  print(
    f"report_scale: 3 modalities x 256-d, 20% test, {args.classes} classes, "
    f"{args.steps} training steps, "
    f"plots {'off' if args.noplots else 'on'}, max_queries {args.max_queries or 'all'}; "
    f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores",
    flush=True,
  )
  runs = [(int(r), int(k)) for r in args.rows.split(",") for k in args.querybank_k.split(",")]
  for rows, bank in runs:
    cmd = [
      sys.executable,
      os.path.abspath(__file__),
      "--one",
      str(rows),
      "--steps",
      str(args.steps),
      "--classes",
      str(args.classes),
      "--max_queries",
      str(args.max_queries),
      "--querybank_k",
      str(bank),
    ]
    if args.noplots:
      cmd.append("--noplots")
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode or not lines:
      print(f"rows={rows}: failed (exit {proc.returncode})\n{proc.stderr[-3000:]}", flush=True)
      return 1
    r = json.loads(lines[-1][7:])
    print(
      f"rows={rows:>7,} per modality ({r['test_rows']:,} test): report {r['report_s']:.1f} s "
      f"({r['report_cpu_s']:.1f} CPU s; metrics {r['eval_s']:.1f} s), train {r['train_s']:.1f} s, "
      f"data {r['data_s']:.1f} s, "
      f"peak RSS {r['peak_rss_mb']:,.0f} MB "
      f"({r['rss_before_report_mb']:,.0f} MB before the report), "
      f"instance mAP {r['instance_mAP_mean']:.3f} over {r['n_queries']:,} queries, "
      f"querybank_k {r['querybank_k']}; load {os.getloadavg()[0]:.1f}",
      flush=True,
    )
    if args.json_out:
      with open(args.json_out, "a") as f:
        f.write(json.dumps(r) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
