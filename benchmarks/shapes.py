"""The default config on synthetic data of shapes the bridge data sets do not cover, against a ridge
chain.

Each shape is built here from a seeded latent model (no files): N instances with a 16-d latent of 10
classes; every modality is tanh(latent @ W_m) + noise at its own dimension, so all views are related
(nonlinearly) and any two can be bridged. Pairs are instance-level on disjoint slices of the train
rows, except `star_class` (class-level pairs: random rows of one class, rows not aligned, no ids).

  two_5_5000   2 modalities of dims 5 and 5000, 40 pairs
  chain_few    3 modalities in a chain, 10 pairs per pair set, no labels
  star_class   4 modalities, star around `text`, class-level pairs, different row counts
  tree6        6 modalities of dims 12..700 on a tree, 80 pairs per pair set
  cycle10      10 modalities of dims 8..300 on a cycle, 50 pairs per pair set

Every shape is trained with the default config (`graph`, no overrides; the .npz config's defaults),
and scored on its test split by its default routes: mean mAP over ordered modality pairs, by hop
distance in the paired-data graph (1 = paired, 2+ = never paired), next to a ridge map per paired
hop composed along the same routes (graphbridge/baselines.py).

  PYTHONPATH=$PWD python benchmarks/shapes.py         # all shapes (about 8 min on 2 cores)
  PYTHONPATH=$PWD python benchmarks/shapes.py --shapes=two_5_5000 --set=train.steps=50

Sweep mode (`--sweep`): pairs per edge x dims on a chain of 2 and of 4 modalities (every modality
of a cell at that dim; disjoint train slices per edge, 200 more unpaired train rows and 500 test
rows per modality), plus the five shapes above, over `--seeds` data seeds (the run seed follows).
One JSON line per (cell, seed) is appended to `--out` (a rerun skips the lines already there), and
`--summarise` prints the table of means over seeds with each cell's worst margin against the ridge
chain (graph minus ridge, over instance/class x paired/never-paired mAP):

  PYTHONPATH=$PWD python benchmarks/shapes.py --sweep --jobs=2 \
    --out=benchmarks/results/shapes_sweep.jsonl
  PYTHONPATH=$PWD python benchmarks/shapes.py --sweep --cells=chain2_d5000_p40 --seeds=1 \
    --out=/tmp/x.jsonl
  PYTHONPATH=$PWD python benchmarks/shapes.py --summarise benchmarks/results/shapes_sweep.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
from graphbridge import api
from graphbridge.linear import baselines as baselines_lib
from graphbridge.data import readers as readers_lib
from graphbridge.evaluation import report as report_lib
from graphbridge.strategies import registry as strategies

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

SHAPES = ("two_5_5000", "chain_few", "star_class", "tree6", "cycle10")
SWEEP_PAIRS = (10, 40, 160, 640, 2560)
SWEEP_DIMS = (5, 64, 768, 5000)
SWEEP_CHAINS = (2, 4)
SWEEP_UNPAIRED, SWEEP_TEST = 200, 500  # rows per modality beyond the paired ones
SWEEP_CELLS = tuple(
  f"chain{m}_d{d}_p{p}" for m in SWEEP_CHAINS for d in SWEEP_DIMS for p in SWEEP_PAIRS
)


def _views(rng, n, dims, classes=10, noise=0.3):
  labels = rng.integers(0, classes, n)
  centres = rng.standard_normal((classes, 16))
  latent = centres[labels] + 0.7 * rng.standard_normal((n, 16))
  out = {}
  for m, d in dims.items():
    w = rng.standard_normal((16, d)) / 4
    out[m] = (np.tanh(latent @ w) + noise * rng.standard_normal((n, d))).astype(np.float32)
  return out, labels


def _instance_set(rng, dims, edges, n, per_edge, labels=True, n_test=None) -> dict:
  emb, lab = _views(rng, n, dims)
  test = np.zeros(n, bool)
  test[rng.permutation(n)[: n // 5 if n_test is None else n_test]] = True
  train_rows = np.nonzero(~test)[0]
  rng.shuffle(train_rows)
  arrays = {}
  for m in dims:
    arrays.update(
      {f"{m}_emb": emb[m], f"{m}_id": np.arange(n), f"{m}_test": test, f"{m}_train": ~test}
    )
    if labels:
      arrays[f"{m}_label"] = lab
  for i, (a, b) in enumerate(edges):
    rows = train_rows[i * per_edge : (i + 1) * per_edge]
    arrays[f"pairs_{a}__{b}"] = np.stack([rows, rows], 1)
  return arrays


def build_cell(cell: str, seed: int = 0) -> dict:
  """The arrays of one sweep cell "chain{M}_d{dim}_p{pairs}": M modalities of dim `dim` in a chain,
  `pairs` instance pairs per edge on disjoint train rows."""
  try:
    m, d, p = (int(part[len(tag) :]) for part, tag in zip(cell.split("_"), ("chain", "d", "p")))
  except ValueError:
    raise SystemExit(f"shapes.py: sweep cell {cell!r} is not chain<M>_d<dim>_p<pairs>") from None
  rng = np.random.default_rng([seed, 1000 + m, d, p])
  names = [f"m{i}" for i in range(m)]
  edges = [(names[i], names[i + 1]) for i in range(m - 1)]
  n = (m - 1) * p + SWEEP_UNPAIRED + SWEEP_TEST
  return _instance_set(rng, {x: d for x in names}, edges, n, p, n_test=SWEEP_TEST)


def build(shape: str, seed: int = 0) -> dict:
  """The arrays of one shape (the .npz format of docs/data.md), or of a sweep cell."""
  if shape.startswith("chain") and shape != "chain_few":
    return build_cell(shape, seed)
  rng = np.random.default_rng([seed, SHAPES.index(shape)])
  if shape == "two_5_5000":
    return _instance_set(rng, {"small": 5, "big": 5000}, [("small", "big")], n=600, per_edge=40)
  if shape == "chain_few":
    return _instance_set(
      rng, {"a": 32, "b": 48, "c": 24}, [("a", "b"), ("b", "c")], n=400, per_edge=10, labels=False
    )
  if shape == "tree6":
    return _instance_set(
      rng,
      {"r": 100, "s": 20, "t": 700, "u": 12, "v": 64, "w": 300},
      [("r", "s"), ("r", "t"), ("t", "u"), ("t", "v"), ("s", "w")],
      n=1000,
      per_edge=80,
    )
  if shape == "cycle10":
    names = [f"m{i}" for i in range(10)]
    dims = {m: int(d) for m, d in zip(names, rng.integers(8, 300, 10))}
    return _instance_set(
      rng, dims, [(names[i], names[(i + 1) % 10]) for i in range(10)], n=900, per_edge=50
    )
  if shape == "star_class":
    pivot, pivot_labels = _views(rng, 500, {"text": 64})
    arrays = {"text_emb": pivot["text"], "text_label": pivot_labels}
    for m, d, n in (("img", 128, 700), ("aud", 40, 400), ("vid", 256, 300)):
      emb, lab = _views(rng, n, {m: d})
      arrays.update({f"{m}_emb": emb[m], f"{m}_label": lab})
      pairs = [
        (r, rng.choice(np.nonzero(pivot_labels == lab[r])[0]))
        for r in range(n)
        if (pivot_labels == lab[r]).any() and rng.random() < 0.5
      ]
      arrays[f"pairs_{m}__text"] = np.asarray(pairs)
    return arrays
  raise SystemExit(f"shapes.py: unknown shape {shape!r} (choose from {', '.join(SHAPES)})")


def by_hops(rows, level: str) -> dict:
  out: dict = {}
  for r in rows:
    if r["level"] == level and r["hops"]:
      out.setdefault(min(r["hops"], 2), []).append(r["mAP"])
  return {h: float(np.mean(v)) for h, v in sorted(out.items())}


LEVELS = (("instance", 1), ("instance", 2), ("class", 1), ("class", 2))


def run_one(shape: str, seed: int, overrides: dict, routes: tuple = ()) -> dict:
  """Train the default on one shape or sweep cell (data seed = run seed = `seed`) and score it and
  the ridge chain: {"graph": {"instance/1": mAP, ...}, "ridge": {...}, "seconds", "bridge"};
  routes: more eval.routes modes to score the same trained graph with ("graph:<mode>")."""
  import bridges

  dataset = readers_lib.from_arrays(build(shape, seed), source=f"{shape}:{seed}")
  cfg = bridges.make_config("npz", {"seed": seed, **overrides, "data.path": f"<{shape}>"})
  t0 = time.perf_counter()
  with api.quiet_absl():
    run = strategies.get(cfg.strategy).train(cfg, dataset, None, log=lambda m: None)
  aligner = report_lib.with_route_options(run.aligner, report_lib.EvalOptions.from_config(cfg))
  ours = bridges.score(aligner, dataset)
  seconds = time.perf_counter() - t0
  ridge = bridges.score(baselines_lib.ChainAligner(dataset, "ridge"), dataset)
  out = {"shape": shape, "seed": seed, "overrides": overrides, "seconds": round(seconds, 1)}
  scored = [("graph", ours), ("ridge", ridge)]
  for mode in routes:
    options = report_lib.EvalOptions.from_config(cfg, routes=mode)
    scored.append(
      (f"graph:{mode}", bridges.score(report_lib.with_route_options(run.aligner, options), dataset))
    )
  for name, rows in scored:
    out[name] = {}
    for level in ("instance", "class"):
      for hops, value in by_hops(rows, level).items():
        out[name][f"{level}/{hops}"] = round(value, 4)
  meta = getattr(run.model, "meta", {})
  out["pseudo"] = meta.get("pseudo_rounds", [])
  bridge = meta.get("bridge", {})
  out["bridge"] = {
    e: v.get("kept", "") + (f" @{v['step']}" if v.get("step") else "")
    for e, v in bridge.get("edges", {}).items()
  }
  return out


def _done(path: str) -> set:
  done = set()
  if path and os.path.exists(path):
    with open(path) as f:
      for line in f:
        if line.strip():
          r = json.loads(line)
          done.add((r["shape"], r["seed"], json.dumps(r.get("overrides", {}), sort_keys=True)))
  return done


def summarise(path: str) -> str:
  """Means over seeds per (shape, overrides), graph against ridge; the worst margin per cell."""
  groups: dict = {}
  with open(path) as f:
    for line in f:
      if line.strip():
        r = json.loads(line)
        key = (r["shape"], json.dumps(r.get("overrides", {}), sort_keys=True))
        groups.setdefault(key, []).append(r)
  head = " | ".join(f"{lv[:4]} {'paired' if h == 1 else 'never'} g / r" for lv, h in LEVELS)
  lines = [f"| cell | seeds | {head} | worst g-r | time |", "|---" * 8 + "|"]
  worst_all = []
  order = {s: i for i, s in enumerate(SWEEP_CELLS + SHAPES)}
  for (shape, over), rs in sorted(groups.items(), key=lambda kv: (order.get(kv[0][0], 999), kv[0])):
    cells, margins = [], []
    for level, hops in LEVELS:
      k = f"{level}/{hops}"
      g = [r["graph"][k] for r in rs if k in r["graph"]]
      rr = [r["ridge"][k] for r in rs if k in r["ridge"]]
      if not g or not rr:
        cells.append("-")
        continue

      mg, mr = float(np.mean(g)), float(np.mean(rr))
      margins.append((mg - mr, k))
      cells.append(f"{mg:.3f} / {mr:.3f}")
    worst = min(margins) if margins else (0.0, "")
    worst_all.append((worst[0], shape, worst[1], over))
    label = shape + ("" if over == "{}" else f" {over}")
    flag = " **below**" if worst[0] < -0.005 else ""
    lines.append(
      f"| {label} | {len(rs)} | " + " | ".join(cells) + f" | {worst[0]:+.3f} {worst[1]}{flag} | "
      f"{np.mean([r['seconds'] for r in rs]):.0f}s |"
    )
  worst_all.sort()
  lines.append("")
  lines.append(
    "worst cells (graph - ridge): " + ", ".join(f"{s} {k} {w:+.3f}" for w, s, k, _ in worst_all[:8])
  )
  below = [x for x in worst_all if x[0] < -0.005]
  lines.append(f"{len(below)} of {len(worst_all)} cells below the ridge chain by more than 0.005")
  return "\n".join(lines)


def _job(args):
  return run_one(*args)


def sweep(args, overrides: dict) -> int:
  cells = [c.strip() for c in (args.cells or ",".join(SWEEP_CELLS + SHAPES)).split(",") if c]
  routes = tuple(r for r in args.routes.split(",") if r)
  todo = [
    (c, s, overrides, routes)
    for s in range(args.seeds)
    for c in cells
    if (c, s, json.dumps(overrides, sort_keys=True)) not in _done(args.out)
  ]
  print(f"sweep: {len(todo)} runs ({len(cells)} cells x {args.seeds} seeds, done ones skipped)")
  t0 = time.perf_counter()

  def write(r):
    print(
      f"{r['shape']:18s} seed {r['seed']} {r['seconds']:5.0f}s  "
      + "  ".join(
        f"{k} {r['graph'].get(k, float('nan')):.3f}/{r['ridge'].get(k, float('nan')):.3f}"
        for k in ("instance/1", "instance/2", "class/1", "class/2")
        if k in r["graph"]
      ),
      flush=True,
    )
    if args.out:
      with open(args.out, "a") as f:
        f.write(json.dumps(r) + "\n")

  if args.jobs > 1:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.jobs, mp_context=ctx, max_tasks_per_child=1) as pool:
      for future in as_completed([pool.submit(_job, t) for t in todo]):
        write(future.result())
  else:
    for t in todo:
      write(_job(t))
  print(f"sweep: {time.perf_counter() - t0:.0f}s")
  if args.out:
    print(summarise(args.out))
  return 0


def main(argv=None) -> int:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--shapes", default=",".join(SHAPES))
  p.add_argument(
    "--set", action="append", default=[], metavar="key=value", help="config override (repeatable)"
  )
  p.add_argument("--seed", type=int, default=0, help="data seed")
  p.add_argument("--sweep", action="store_true", help="the sweep (see above)")
  p.add_argument("--cells", default="", help="sweep: comma list of cells / shapes (default: all)")
  p.add_argument("--seeds", type=int, default=3, help="sweep: seeds 0 .. N-1")
  p.add_argument("--jobs", type=int, default=1, help="sweep: runs in parallel processes")
  p.add_argument("--out", default="", help="sweep: JSON lines file (appended; done runs skipped)")
  p.add_argument("--summarise", default="", metavar="FILE", help="print the table of a sweep file")
  p.add_argument("--routes", default="", help="sweep: more eval.routes modes to score (diagnostic)")
  args = p.parse_args(argv)
  import bridges

  if args.summarise:
    print(summarise(args.summarise))
    return 0
  overrides = {}
  for text in args.set:
    overrides.update(bridges.parse_assignments(text))
  if args.sweep:
    return sweep(args, overrides)
  t_all = time.perf_counter()
  print(
    f"shapes: default config{' with ' + str(overrides) if overrides else ''}; mean mAP over "
    "ordered pairs, 1 = paired hop, 2+ = never paired; ridge = ridge chain on the same routes",
    flush=True,
  )
  print(
    f"{'shape':12s} {'level':8s} | {'graph 1':>7s} {'ridge 1':>7s} | {'graph 2+':>8s} "
    f"{'ridge 2+':>8s} | time",
    flush=True,
  )
  for shape in args.shapes.split(","):
    with tempfile.TemporaryDirectory() as tmp:
      path = os.path.join(tmp, f"{shape}.npz")
      np.savez(path, **build(shape, args.seed))
      dataset = readers_lib.load(path)
      cfg = bridges.make_config("npz", {**overrides, "data.path": path})
      t0 = time.perf_counter()
      with api.quiet_absl():
        run = strategies.get(cfg.strategy).train(cfg, dataset, None, log=lambda m: None)
      aligner = report_lib.with_route_options(run.aligner, report_lib.EvalOptions.from_config(cfg))
      ours = bridges.score(aligner, dataset)
      seconds = time.perf_counter() - t0
      ridge = bridges.score(baselines_lib.ChainAligner(dataset, "ridge"), dataset)
    for level in ("instance", "class"):
      g, r = by_hops(ours, level), by_hops(ridge, level)
      if not g:
        continue
      cell = lambda d, h: f"{d[h]:.3f}" if h in d else "-"
      print(
        f"{shape:12s} {level:8s} | {cell(g, 1):>7s} {cell(r, 1):>7s} | {cell(g, 2):>8s} "
        f"{cell(r, 2):>8s} | {seconds:.0f}s",
        flush=True,
      )
  print(f"total {time.perf_counter() - t_all:.0f}s", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
