"""Development benchmark for zero-shot bridges: strategies and options side by side with linear
chains and a direct-pair oracle, on several data sets, by hop distance.

For each data set (digits: class-level star; mv6: 6 image views on a tree; fsdd_chain: 4 audio views
on a chain; mv8: 8 image views on a deeper tree) every method is trained with the data set's config
(configs/<name>.py: default settings, no per-data-set tuning) and scored on the test split for every
ordered pair of modalities by its default route. Printed per data set, for each metric (instance
R@1, instance MRR, class mAP) a table: one row per method, one column per hop distance in the
paired-data graph (1 = paired in training, 2+ = never paired) and `never` = the mean over
never-paired ordered pairs; then one SUMMARY line. Reference rows:

  ridge-chain / procrustes-chain  linear maps per paired hop composed along the same routes
                                  (graphbridge/baselines.py)
  oracle-ridge                    ridge fitted directly on the pairs the protocol withholds

  python benchmarks/bridges.py                          # everything (see the timing note below)
  python benchmarks/bridges.py --quick                  # 1/4 of the steps, default + pair only
  python benchmarks/bridges.py --datasets=mv6,fsdd_chain --methods=default,pair
  python benchmarks/bridges.py --set=loss.cycle_weights='(1.0,)'            # every trained method
  python benchmarks/bridges.py --method=cyc1:loss.cycle_weights='(1.0,)'     # one more named method
  python benchmarks/bridges.py --json=/tmp/bridges.json  # all rows, for plots / README tables

Methods are named option sets (METHODS below, extendable with --method NAME:key=value,key=value or
NAME:strategy=pivot); --set key=value overrides apply to every trained method (after its own).
Values are Python literals where they parse ('(1.0,)', '0.5', 'True'), else strings. Strategies that
cannot run on a data set's pairing shape (pivot needs a star) are listed as n/a with the reason. A
method whose config resolves to an earlier method's on a data set (`pair` where
`loss.infonce_positives="auto"` picks pair positives for every pair set, i.e. on instance-level
pairs) is not trained again: it gets the earlier method's rows, and the log says so.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from graphbridge.linear import baselines as baselines_lib
from graphbridge.data import readers as readers_lib
from graphbridge.data import positives as positives_lib
from graphbridge.evaluation import encoding as encoding_lib
from graphbridge.evaluation import hubness as hubness_lib
from graphbridge.evaluation import metrics as metrics_lib
from graphbridge import api
from graphbridge.runs import configs as configs_lib
from graphbridge.evaluation import report as report_lib
from graphbridge.strategies import registry as strategies
from graphbridge.core.errors import GraphError

DATASETS = ("digits", "mv6", "fsdd_chain", "mv8")
# name -> overrides ("strategy" selects the strategy; everything else is a dotted config field)
METHODS = {
  "default": {},
  "pair": {"loss.infonce_positives": "pair"},
  "pivot": {"strategy": "pivot"},
  "pairwise": {"strategy": "pairwise"},
}
DEFAULT_METHODS = ("default", "pair", "pivot", "pairwise")
QUICK_METHODS = ("default", "pair")
LINEAR = ("ridge-chain", "procrustes-chain", "oracle-ridge")
# the linear references again with the query-bank hubness correction that the default evaluation
# applies on this data set (eval.querybank_k, resolved as for the default method; absent where off)
LINEAR_QB = ("ridge-chain+qb", "oracle-ridge+qb")
METRICS = (("instance", "R@1"), ("instance", "MRR"), ("class", "mAP"))


def parse_value(text: str):
  """'(1.0,)' -> (1.0,), '0.5' -> 0.5, 'pair' -> 'pair'."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def parse_assignments(text: str) -> dict:
  """'a.b=1,c.d=(1,2)' -> {'a.b': 1, 'c.d': (1, 2)} (commas inside brackets/quotes stay)."""
  out, depth, part, parts = {}, 0, "", []
  for ch in text:
    if ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth -= 1
    if ch == "," and depth == 0:
      parts.append(part)
      part = ""
    else:
      part += ch
  parts.append(part)
  for p in parts:
    if not p.strip():
      continue
    if "=" not in p:
      raise SystemExit(f"bridges.py: override {p!r} must be key=value")
    key, value = p.split("=", 1)
    out[key.strip()] = parse_value(value.strip())
  return out


def make_config(dataset_name: str, overrides: dict):
  c = configs_lib.load(dataset_name)
  c.train.tensorboard = False
  return api.apply_overrides(c, overrides)


# ---- scoring -----------------------------------------------------------------------------------


def mrr(zq: np.ndarray, zg: np.ndarray, kq: np.ndarray, kg: np.ndarray) -> float:
  """Mean over queries (with a relevant gallery row) of 1 / rank of the first relevant row; cosine.

  zq [n_q, d], zg [n_g, d]; relevant: equal keys. Ties count in the query's favour."""
  zq = zq / np.maximum(np.linalg.norm(zq, axis=1, keepdims=True), 1e-12)
  zg = zg / np.maximum(np.linalg.norm(zg, axis=1, keepdims=True), 1e-12)
  scores = zq @ zg.T
  relevant = kq[:, None] == kg[None, :]
  keep = relevant.any(1)
  best = np.where(relevant, scores, -np.inf).max(1)
  rank = 1 + (scores > best[:, None]).sum(1)
  return float(np.mean(1.0 / rank[keep]))


def score(aligner, dataset, split: str = "test", querybank_k: int = 0, seed: int = 0) -> list[dict]:
  """One row per (query, gallery, level) for the aligner's default route of every ordered pair:
  R@1, mAP, MRR, hops (paired-data graph). querybank_k > 0: ranked with the query-bank hubness
  correction, as the report ranks them (evaluate.querybank_scores)."""
  hops_graph = encoding_lib.pairs_graph(dataset)
  cache = encoding_lib.EncodingCache(aligner, dataset, split)
  rows = []
  for spec in encoding_lib.planned_routes(aligner, dataset):
    enc = cache.get(spec)
    if enc is None:
      continue
    zq, zg = enc.zq, enc.zg
    if querybank_k > 0:
      zq, zg = hubness_lib.querybank_scores(aligner, dataset, enc, zq, querybank_k, seed)
    for level in encoding_lib.levels_available(dataset, spec.query, spec.gallery):
      attr = "ids" if level == "instance" else "labels"
      kq = getattr(dataset.modalities[spec.query], attr)[enc.query_rows]
      kg = getattr(dataset.modalities[spec.gallery], attr)[enc.gallery_rows]
      if not np.isin(kq, kg).any():
        continue
      m = metrics_lib.retrieval_metrics(zq, zg, kq, kg, ks=(1,))
      rows.append(
        {
          "method": aligner.name,
          "query": spec.query,
          "gallery": spec.gallery,
          "route": spec.route,
          "hops": hops_graph.hop_distance(spec.query, spec.gallery),
          "level": level,
          "R@1": m["R@1"],
          "mAP": m["mAP"],
          "MRR": mrr(zq, zg, kq, kg),
        }
      )
  return rows


def by_hops(rows: list[dict], method: str, level: str, metric: str) -> dict:
  """{hops: mean over ordered pairs at that distance, 'never': mean over hops >= 2}."""
  mine = [
    r for r in rows if r["method"] == method and r["level"] == level and r["hops"] is not None
  ]
  out = {}
  for h in sorted({r["hops"] for r in mine}):
    out[h] = float(np.mean([r[metric] for r in mine if r["hops"] == h]))
  never = [r[metric] for r in mine if r["hops"] >= 2]
  if never:
    out["never"] = float(np.mean(never))
  return out


def average_seeds(rows: list[dict]) -> list[dict]:
  groups: dict = {}
  for r in rows:
    groups.setdefault((r["method"], r["query"], r["gallery"], r["level"]), []).append(r)
  out = []
  for rs in groups.values():
    out.append(
      {
        **rs[0],
        **{k: float(np.mean([r[k] for r in rs])) for k in ("R@1", "mAP", "MRR")},
        "seeds": len(rs),
      }
    )
  return out


def table(rows: list[dict], methods: list[str], level: str, metric: str) -> str:
  hops = sorted({r["hops"] for r in rows if r["level"] == level and r["hops"] is not None})
  cols = [f"{h} hop" + ("s" if h > 1 else "") for h in hops] + (
    ["never"] if any(h >= 2 for h in hops) else []
  )
  keys = list(hops) + ["never"]
  width = max([len(m) for m in methods] + [16])
  lines = [
    f"  {level} {metric} (mean over ordered modality pairs; never = all never-paired pairs)",
    f"  {'method':{width}s} | " + " | ".join(f"{c:>6s}" for c in cols),
  ]
  for method in methods:
    vals = by_hops(rows, method, level, metric)
    if not vals:
      continue
    cells = [vals.get(k) for k in keys[: len(cols)]]
    lines.append(
      f"  {method:{width}s} | " + " | ".join("     -" if v is None else f"{v:6.3f}" for v in cells)
    )
  return "\n".join(lines)


def summary_line(name: str, rows: list[dict], trained: list[str]) -> str:
  """Never-paired means: instance MRR (and 3-hop instance R@1) of each trained method against the
  ridge chain and the oracle; class mAP against the best linear baseline."""
  level = "instance" if any(r["level"] == "instance" for r in rows) else "class"
  metric = "MRR" if level == "instance" else "mAP"
  ref = {m: by_hops(rows, m, level, metric).get("never") for m in LINEAR}
  parts = []
  for method in trained:
    v = by_hops(rows, method, level, metric).get("never")
    if v is None:
      continue
    ratio = (
      f" ({v / ref['ridge-chain']:.2f}x ridge, {v / ref['oracle-ridge']:.2f}x oracle"
      if ref.get("ridge-chain") and ref.get("oracle-ridge")
      else ""
    )
    qb = by_hops(rows, "ridge-chain+qb", level, metric).get("never")
    if ratio:
      ratio += f", {v / qb:.2f}x ridge+qb)" if qb else ")"
    parts.append(f"{method} {v:.3f}{ratio}")
  parts += [f"{m} {ref[m]:.3f}" for m in LINEAR if ref.get(m) is not None]
  parts += [
    f"{m} {v:.3f}"
    for m in LINEAR_QB
    if (v := by_hops(rows, m, level, metric).get("never")) is not None
  ]
  line = f"SUMMARY {name}: never-paired {level} {metric}: " + ", ".join(parts)
  if level == "instance":
    r3 = {m: by_hops(rows, m, "instance", "R@1").get(3) for m in trained + list(LINEAR + LINEAR_QB)}
    if any(v is not None for v in r3.values()):
      line += "; 3-hop R@1: " + ", ".join(f"{m} {v:.3f}" for m, v in r3.items() if v is not None)
  cls = {
    m: by_hops(rows, m, "class", "mAP").get("never") for m in trained + list(LINEAR + LINEAR_QB)
  }
  if level == "instance" and any(v is not None for v in cls.values()):
    line += "; class mAP: " + ", ".join(f"{m} {v:.3f}" for m, v in cls.items() if v is not None)
  return line


# ---- running ----------------------------------------------------------------------------------


def resolved_key(cfg, dataset) -> str:
  """The config as this data set resolves it: loss.infonce_positives ("auto", "label", "pair")
  replaced by the choice data.choose_positives makes for each pair set, so methods that differ only
  in naming what "auto" picks anyway (e.g. `pair` on instance-level pairs) are recognised as one
  run."""
  resolved = cfg.copy_and_resolve_references()
  if "loss" in resolved:
    with resolved.unlocked():
      resolved.loss.infonce_positives = ",".join(
        f"{a}-{b}:{positives_lib.choose_positives(dataset, a, b, cfg.loss.infonce_positives)[0]}"
        for a, b in dataset.pairs
      )
  return resolved.to_json(sort_keys=True)


def run_dataset(name: str, methods: dict, global_overrides: dict, seeds: int, log=print) -> dict:
  dataset = readers_lib.load_named(name)
  rows, skipped, seconds = [], {}, {}
  trained_as: dict[str, str] = {}  # resolved config -> the method that trained it
  for label, options in methods.items():
    overrides = {**options, **global_overrides}
    try:
      key = resolved_key(make_config(name, overrides), dataset)
    except (GraphError, ValueError):
      key = None  # reported as n/a below
    if key in trained_as and trained_as[key] not in skipped:
      same = trained_as[key]
      rows += [{**r, "method": label} for r in rows if r["method"] == same]
      seconds[label] = 0.0
      log(
        f"  {label}: the same run as {same} on this data set (loss.infonce_positives resolves to "
        "the same choice for every pair set): its rows are reused"
      )
      continue
    if key is not None:
      trained_as[key] = label
    per_seed = []
    t0 = time.perf_counter()
    try:
      for s in range(seeds):
        cfg = make_config(name, {**overrides, "seed": int(overrides.get("seed", 0)) + s})
        run = strategies.get(cfg.strategy).train(
          cfg,
          dataset,
          None,
          log=lambda m, label=label: (
            log(f"  {label}: {m}") if m.startswith("pseudo-pairs") else None
          ),
        )
        aligner = report_lib.with_route_options(
          run.aligner, report_lib.EvalOptions.from_config(cfg)
        )
        aligner.name = label
        bank_k = hubness_lib.resolve_querybank(cfg.eval.querybank_k, dataset, cfg.eval.csls_k)[0]
        per_seed += score(aligner, dataset, querybank_k=bank_k, seed=int(cfg.seed))
    except (GraphError, ValueError) as exc:
      skipped[label] = str(exc).splitlines()[0]
      log(f"  {label}: n/a ({skipped[label]})")
      continue
    seconds[label] = time.perf_counter() - t0
    rows += average_seeds(per_seed)
    log(f"  {label}: trained and scored in {seconds[label]:.0f}s")
  t0 = time.perf_counter()
  linear = (
    baselines_lib.ChainAligner(dataset, "ridge"),
    baselines_lib.ChainAligner(dataset, "procrustes"),
    baselines_lib.OracleAligner(dataset),
  )
  for aligner in linear:
    rows += score(aligner, dataset)
  default = make_config(name, global_overrides)
  bank_k = hubness_lib.resolve_querybank(default.eval.querybank_k, dataset, default.eval.csls_k)[0]
  if bank_k > 0:
    for aligner, label in ((linear[0], LINEAR_QB[0]), (linear[2], LINEAR_QB[1])):
      rows += [
        {**r, "method": label}
        for r in score(aligner, dataset, querybank_k=bank_k, seed=int(default.seed))
      ]
  seconds["linear"] = time.perf_counter() - t0
  return {
    "dataset": name,
    "rows": rows,
    "skipped": skipped,
    "seconds": seconds,
    "trained": [m for m in methods if m not in skipped],
    "pair_sets": [f"{a}-{b}" for a, b in dataset.pairs],
    "modalities": list(dataset.names),
  }


def dataset_job(name: str, methods: dict, overrides: dict, seeds: int) -> dict:
  """run_dataset with absl quiet and the overrides recorded (a top-level function: runs in
  workers)."""
  print(
    f"[{name}] training {', '.join(methods)}" + (f" with {overrides}" if overrides else ""),
    flush=True,
  )
  with api.quiet_absl():
    result = run_dataset(
      name, methods, overrides, seeds, log=lambda m: print(f"[{name}] {m.strip()}", flush=True)
    )
  result["overrides"] = {k: str(v) for k, v in overrides.items()}
  return result


def report(result: dict) -> str:
  name, rows, trained = result["dataset"], result["rows"], result["trained"]
  methods = trained + list(LINEAR) + [m for m in LINEAR_QB if any(r["method"] == m for r in rows)]
  out = [
    f"== {name}: {len(result['modalities'])} modalities, pair sets "
    f"{', '.join(result['pair_sets'])} (test split) =="
  ]
  for level, metric in METRICS:
    if any(r["level"] == level for r in rows):
      out.append(table(rows, methods, level, metric))
  for label, why in result["skipped"].items():
    out.append(f"  {label}: n/a ({why})")
  out.append(summary_line(name, rows, trained))
  return "\n".join(out)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  ap.add_argument(
    "--datasets", default=",".join(DATASETS), help=f"comma list from {', '.join(DATASETS)}"
  )
  ap.add_argument(
    "--methods",
    default=None,
    help=f"comma list of method names (default: "
    f"{','.join(DEFAULT_METHODS)}; --quick: {','.join(QUICK_METHODS)})",
  )
  ap.add_argument(
    "--method",
    action="append",
    default=[],
    metavar="NAME:key=value,...",
    help="define (and run) one more named method, e.g. cyc1:loss.cycle_weights=(1.0,)",
  )
  ap.add_argument(
    "--set",
    action="append",
    default=[],
    metavar="key=value",
    help="config override for every trained method (repeatable)",
  )
  ap.add_argument("--quick", action="store_true", help="train.steps / 4 and methods default,pair")
  ap.add_argument(
    "--seeds", type=int, default=1, help="seeds per trained method (metrics averaged)"
  )
  ap.add_argument(
    "--jobs", type=int, default=1, help="data sets run in parallel processes (2 on 2 cores)"
  )
  ap.add_argument("--json", default="", help="write every row and timing here")
  args = ap.parse_args(argv)

  methods = dict(METHODS)
  extra = []
  for spec in args.method:
    label, _, assignments = spec.partition(":")
    if not label or not assignments:
      raise SystemExit(f"bridges.py: --method {spec!r} must be NAME:key=value,...")
    methods[label] = parse_assignments(assignments)
    extra.append(label)
  chosen = (
    args.methods.split(",")
    if args.methods
    else list(QUICK_METHODS if args.quick else DEFAULT_METHODS)
  )
  chosen = list(dict.fromkeys([m.strip() for m in chosen if m.strip()] + extra))
  unknown = [m for m in chosen if m not in methods]
  if unknown:
    raise SystemExit(
      f"bridges.py: unknown method(s) {', '.join(unknown)} (known: {', '.join(methods)}; "
      "define more with --method NAME:key=value,...)"
    )
  global_overrides = {}
  for s in args.set:
    global_overrides.update(parse_assignments(s))
  datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
  for d in datasets:
    if d not in readers_lib.NAMED_DATASETS:
      raise SystemExit(
        f"bridges.py: unknown data set {d!r} (choices: {', '.join(readers_lib.NAMED_DATASETS)})"
      )

  t_all = time.perf_counter()
  jobs = []
  for name in datasets:
    overrides = dict(global_overrides)
    if args.quick and "train.steps" not in overrides:
      overrides["train.steps"] = max(1, int(make_config(name, {}).train.steps) // 4)
    for m in chosen:  # a typo in --set / --method fails here, before any training
      try:
        make_config(name, {**methods[m], **overrides})
      except (ValueError, TypeError) as exc:
        raise SystemExit(f"bridges.py: method {m!r} on {name}: {exc}") from None
    jobs.append((name, {m: methods[m] for m in chosen}, overrides, args.seeds))
  if args.jobs > 1 and len(jobs) > 1:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(
      min(args.jobs, len(jobs)), mp_context=multiprocessing.get_context("spawn")
    ) as pool:
      futures = [pool.submit(dataset_job, *job) for job in jobs]
      results = []
      for future in futures:
        results.append(future.result())
        print(report(results[-1]) + "\n", flush=True)
  else:
    results = []
    for job in jobs:
      results.append(dataset_job(*job))
      print(report(results[-1]) + "\n", flush=True)
  total = time.perf_counter() - t_all
  import resource

  children = resource.getrusage(resource.RUSAGE_CHILDREN)
  cpu = time.process_time() + children.ru_utime + children.ru_stime
  for r in results:
    print(summary_line(r["dataset"], r["rows"], r["trained"]))
  print(
    f"total {total:.0f}s wall, {cpu:.0f}s CPU (all processes) on {os.cpu_count()} CPU(s), "
    f"--jobs={args.jobs}; load average {os.getloadavg()[0]:.1f} at the end"
  )
  if args.json:
    with open(args.json, "w") as f:
      json.dump(
        {
          "results": results,
          "seconds": total,
          "cpu_seconds": cpu,
          "methods": {m: methods[m] for m in chosen},
          "argv": sys.argv[1:],
        },
        f,
        indent=1,
        default=str,
      )
    print(f"wrote {args.json}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
