"""How far a bridge can go: direct maps fitted on EVERY train instance, by hop distance (issue #18).

For each instance-level bridge set (mv6, fsdd_chain, mv8) and each ordered modality pair at a given
distance in the paired-data graph, this fits maps *directly* from the query to the gallery modality
on all train rows that show the same instance (matched by id: pairs the protocol withholds, about
10x the pairs any edge of these sets has) and scores test instance R@1 / MRR by cosine, as
`benchmarks/bridges.py` does:

  ridge-chain     the linear reference of bridges.py (baselines.ChainAligner): a ridge map per
                  paired hop, composed along the default route ("3x the linear chain" is 3x this)
  full ridge      ridge on all train instances, penalty by leave-one-out error
                  (baselines.fit_ridge_cv)
  full KRR (cv)   RBF kernel ridge on all train instances, (alpha, gamma) by 3-fold cross-validated
                  R@1 on the train rows
  full KRR (test) the same, (alpha, gamma) chosen on the TEST rows: optimistic, an upper bound

None of these is a zero-shot bridge: they see pairs no bridge method may use. They show what a
target asks for: if 3x the ridge chain is above what every direct map fitted on all train instances
reaches, no bridge built from the withheld data's paired edges will reach it either.

  PYTHONPATH=$PWD python benchmarks/bridge_bounds.py              # mv6, fsdd_chain; 3 hops
  PYTHONPATH=$PWD python benchmarks/bridge_bounds.py --datasets=mv8 --hops=2,3,4
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
from graphbridge.linear import baselines as baselines_lib
from graphbridge.data import readers as readers_lib
from graphbridge.evaluation import encoding as encoding_lib

GAMMAS = (0.25, 0.5, 1.0, 2.0, 4.0)
ALPHAS = (1e-3, 1e-2, 1e-1, 1.0)


def instance_scores(
  q: np.ndarray, g: np.ndarray, q_ids: np.ndarray, g_ids: np.ndarray
) -> tuple[float, float]:
  """(R@1, MRR) of cosine retrieval: each query's relevant gallery row has its id."""
  q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
  g = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
  s = q @ g.T
  where = {int(i): j for j, i in enumerate(g_ids)}
  target = np.asarray([where[int(i)] for i in q_ids])
  own = s[np.arange(len(q)), target]
  rank = 1 + np.sum(s > own[:, None], axis=1)
  return float(np.mean(rank == 1)), float(np.mean(1.0 / rank))


def matched_rows(dataset, a: str, b: str, split: str):
  """Rows of a and b of the same instances in `split` (both sorted by id)."""
  ma, mb = dataset.modalities[a], dataset.modalities[b]
  ra = np.nonzero(getattr(ma, split))[0]
  rb = np.nonzero(getattr(mb, split))[0]
  common = np.intersect1d(ma.ids[ra], mb.ids[rb])
  pos_a = {int(i): int(r) for r, i in zip(ra, ma.ids[ra])}
  pos_b = {int(i): int(r) for r, i in zip(rb, mb.ids[rb])}
  rows_a = np.asarray([pos_a[int(i)] for i in common])
  rows_b = np.asarray([pos_b[int(i)] for i in common])
  return (np.asarray(ma.emb[rows_a], np.float64), np.asarray(mb.emb[rows_b], np.float64), common)


def krr_predict(xtr, ytr, xte, alpha: float, gamma: float) -> np.ndarray:
  from sklearn.kernel_ridge import KernelRidge

  mu = ytr.mean(0)
  model = KernelRidge(alpha=alpha, kernel="rbf", gamma=gamma).fit(xtr, ytr - mu)
  return model.predict(xte) + mu


def krr_cv(xtr, ytr, ids, folds: int = 3, seed: int = 0) -> tuple[float, float]:
  """(alpha, gamma) with the best mean held-out R@1 over `folds` folds of the train instances."""
  order = np.random.default_rng(seed).permutation(len(xtr))
  parts = np.array_split(order, folds)
  best, best_score = None, -1.0
  for gamma in GAMMAS:
    for alpha in ALPHAS:
      scores = []
      for k in range(folds):
        held = parts[k]
        fit = np.concatenate([parts[j] for j in range(folds) if j != k])
        pred = krr_predict(xtr[fit], ytr[fit], xtr[held], alpha, gamma)
        scores.append(instance_scores(pred, ytr[held], ids[held], ids[held])[0])
      if statistics.mean(scores) > best_score:
        best, best_score = (alpha, gamma), statistics.mean(scores)
  return best


def run(name: str, hops: list[int]) -> list[dict]:
  dataset = readers_lib.load_named(name)
  graph = encoding_lib.pairs_graph(dataset)
  chain = baselines_lib.ChainAligner(dataset, "ridge")
  names = dataset.names
  rows = []
  for q in names:
    for g in names:
      if q == g:
        continue
      h = graph.hop_distance(q, g)
      if h not in hops:
        continue
      t = time.perf_counter()
      xq_tr, xg_tr, ids_tr = matched_rows(dataset, q, g, "train")
      xq_te, xg_te, ids_te = matched_rows(dataset, q, g, "test")
      route = chain.default_route(q, g)
      cq, cg = chain.encode(q, g, route, xq_te, xg_te)
      r = {"dataset": name, "query": q, "gallery": g, "hops": h, "train_instances": len(ids_tr)}
      r["ridge-chain"] = instance_scores(cq, cg, ids_te, ids_te)
      ridge = baselines_lib.fit_ridge_cv(xq_tr, xg_tr)
      r["full ridge"] = instance_scores(ridge.apply(xq_te), xg_te, ids_te, ids_te)
      alpha, gamma = krr_cv(xq_tr, xg_tr, ids_tr)
      r["full KRR (cv)"] = instance_scores(
        krr_predict(xq_tr, xg_tr, xq_te, alpha, gamma), xg_te, ids_te, ids_te
      )
      r["full KRR (test)"] = max(
        (
          instance_scores(krr_predict(xq_tr, xg_tr, xq_te, a, gm), xg_te, ids_te, ids_te)
          for gm in GAMMAS
          for a in ALPHAS
        ),
        key=lambda s: s[0],
      )
      print(
        f"[{name}] {q}->{g} ({h} hops, {len(ids_tr)} train instances, "
        f"{time.perf_counter() - t:.1f}s): " + ", ".join(f"{k} R@1 {r[k][0]:.3f}" for k in COLUMNS),
        flush=True,
      )
      rows.append(r)
  return rows


COLUMNS = ("ridge-chain", "full ridge", "full KRR (cv)", "full KRR (test)")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--datasets", default="mv6,fsdd_chain")
  p.add_argument(
    "--hops", default="3", help="hop distances in the paired-data graph, comma separated"
  )
  args = p.parse_args(argv)
  hops = [int(h) for h in args.hops.split(",")]
  t0 = time.perf_counter()
  for name in args.datasets.split(","):
    rows = run(name, hops)
    for h in hops:
      mine = [r for r in rows if r["hops"] == h]
      if not mine:
        continue
      for i, metric in enumerate(("R@1", "MRR")):
        means = {k: statistics.mean(r[k][i] for r in mine) for k in COLUMNS}
        print(
          f"SUMMARY {name} {h} hops ({len(mine)} ordered pairs) instance {metric}: "
          + ", ".join(f"{k} {v:.3f}" for k, v in means.items())
          + (f"; 3x ridge-chain {3 * means['ridge-chain']:.3f}" if metric == "R@1" else ""),
          flush=True,
        )
  print(f"bridge_bounds: {time.perf_counter() - t0:.0f} s", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
