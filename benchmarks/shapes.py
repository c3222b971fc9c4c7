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
"""

from __future__ import annotations

import argparse
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


def _views(rng, n, dims, classes=10, noise=0.3):
  labels = rng.integers(0, classes, n)
  centres = rng.standard_normal((classes, 16))
  latent = centres[labels] + 0.7 * rng.standard_normal((n, 16))
  out = {}
  for m, d in dims.items():
    w = rng.standard_normal((16, d)) / 4
    out[m] = (np.tanh(latent @ w) + noise * rng.standard_normal((n, d))).astype(np.float32)
  return out, labels


def _instance_set(rng, dims, edges, n, per_edge, labels=True) -> dict:
  emb, lab = _views(rng, n, dims)
  test = np.zeros(n, bool)
  test[rng.permutation(n)[: n // 5]] = True
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


def build(shape: str, seed: int = 0) -> dict:
  """The arrays of one shape (the .npz format of docs/data.md)."""
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


def main(argv=None) -> int:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--shapes", default=",".join(SHAPES))
  p.add_argument(
    "--set", action="append", default=[], metavar="key=value", help="config override (repeatable)"
  )
  p.add_argument("--seed", type=int, default=0, help="data seed")
  args = p.parse_args(argv)
  import bridges

  overrides = {}
  for text in args.set:
    overrides.update(bridges.parse_assignments(text))
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
