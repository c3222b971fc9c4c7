"""Does Run.search reproduce a workdir's report? For every ordered modality pair and level of
report.json, search the report's split with the loaded run (its default route, query bank and
ensembles) and score the ranking; prints the largest difference over R@1, R@5, R@10 and mAP.

  PYTHONPATH=$PWD python benchmarks/search_matches_report.py /tmp/gb [more workdirs]
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import graphbridge
from graphbridge.evaluation import search as search_lib

KEYS = ("R@1", "R@5", "R@10", "mAP")


def check(workdir: str) -> float:
  run = graphbridge.load(workdir)
  with open(os.path.join(workdir, "report.json")) as f:
    report = json.load(f)
  data = run.dataset()
  worst, n, orders, t0 = 0.0, 0, {}, time.perf_counter()
  for row in report["rows"]:
    if row.get("named_route"):
      continue
    q, g = row["query"], row["gallery"]
    if (q, g) not in orders:
      _, q_index = run.gallery(q)
      _, g_index = run.gallery(g)
      orders[(q, g)] = (q_index, g_index, run.search(None, q, g, k=len(g_index))[1])
    q_index, g_index, order = orders[(q, g)]
    attr = "labels" if row["level"] == "class" else "ids"
    keys_q = getattr(data.modalities[q], attr)[q_index]
    keys_g = getattr(data.modalities[g], attr)[g_index]
    got = search_lib.retrieval_from_ranks(search_lib.ranks_of(order, keys_q, keys_g))
    for key in KEYS:
      worst = max(worst, abs(row[key] - got[key]))
      n += 1
  print(
    f"{workdir}: {n} numbers over {len(orders)} ordered pairs, max |search - report| = "
    f"{worst:.2e} ({time.perf_counter() - t0:.1f}s)"
  )
  return worst


if __name__ == "__main__":
  if len(sys.argv) < 2:
    sys.exit(__doc__)
  sys.exit(1 if max(check(w) for w in sys.argv[1:]) > 1e-6 else 0)
