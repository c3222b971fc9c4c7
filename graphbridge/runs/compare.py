"""Every strategy on one data set, same code, several seeds: the comparison table and plot.

The headline is zero-shot retrieval between modalities that were never paired in training
(hop distance >= 2 in the paired-data graph; on the digits set, image<->audio).
"""

from __future__ import annotations

import os
import time
from typing import Callable
import ml_collections
import numpy as np
from graphbridge import defaults
from graphbridge.core import fields
from graphbridge.runs import validate as validate_lib
from graphbridge.evaluation import tables as tables_lib
from graphbridge.evaluation import hubness as hubness_lib
from graphbridge.evaluation import retrieval as retrieval_lib
from graphbridge.linear import aligners as linear_aligners
from graphbridge.strategies import registry as strategies
from graphbridge.data.dataset import Dataset
from graphbridge.runs import experiment
from graphbridge.evaluation.plots import charts as charts_lib


def _quiet(_msg: str) -> None:
  pass


def _mean_std(values) -> tuple[float, float]:
  values = np.asarray(values, float)
  return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def comparison_title(dataset: Dataset, split: str, level: str, seeds: list[int]) -> str:
  """compare.png's title: the data set, the split and the seeds behind the bars."""
  name = os.path.basename(os.path.normpath(dataset.source)) or str(dataset.source)
  listed = ",".join(map(str, seeds))  # no space: a title wraps at spaces only
  which = (
    f"seed {listed}" if len(seeds) == 1 else f"mean \u00b1 std over {len(seeds)} seeds ({listed})"
  )
  return (
    f"{name}, {split} split: zero-shot {level}-level retrieval between never-paired modalities\n"
    f"{which}; linear baselines: one deterministic fit, no error bar"
  )


def summarize(rows: list[dict], level: str = "class") -> tuple[list[dict], list[str]]:
  """One row per method: mean/std over seeds of mAP and R@1 per zero-shot ordered pair, the mean
  over zero-shot pairs, and the mean mAP over directly paired modalities."""
  rows = [r for r in rows if r["level"] == level]
  zero_shot = sorted({f"{r['query']}->{r['gallery']}" for r in rows if (r["hops"] or 0) >= 2})
  methods = list(dict.fromkeys(r["strategy"] for r in rows))
  table = []
  for method in methods:
    mine = [r for r in rows if r["strategy"] == method]
    seeds = sorted({r["seed"] for r in mine})
    out = {"method": method, "seeds": len(seeds)}
    for pair in zero_shot:
      q, g = pair.split("->")
      per_seed = [r for r in mine if r["query"] == q and r["gallery"] == g]
      if per_seed:
        out[f"{pair} mAP"], out[f"{pair} mAP std"] = _mean_std([r["mAP"] for r in per_seed])
        out[f"{pair} R@1"], _ = _mean_std([r["R@1"] for r in per_seed])
        out[f"{pair} chance mAP"] = per_seed[0].get("chance_mAP")
    zs = [[r["mAP"] for r in mine if r["seed"] == s and (r["hops"] or 0) >= 2] for s in seeds]
    if all(zs):
      out["zero-shot mAP"], out["zero-shot mAP std"] = _mean_std([np.mean(z) for z in zs])
    paired = [[r["mAP"] for r in mine if r["seed"] == s and r["hops"] == 1] for s in seeds]
    if all(paired):
      out["paired mAP"], _ = _mean_std([np.mean(p) for p in paired])
    seconds = [r.get("train_seconds") for r in mine if r.get("train_seconds") is not None]
    out["train s"] = float(np.mean(seconds)) if seconds else None
    table.append(out)
  return table, zero_shot


def compare(
  config: ml_collections.ConfigDict,
  workdir: str | None,
  dataset: Dataset | None = None,
  log: Callable[[str], None] = print,
) -> dict:
  """Train every strategy in config.compare.strategies for config.compare.seeds seeds, evaluate
  each (and each post-hoc variant) plus the linear baselines; write compare.{json,md,png}."""
  validate_lib.validate(config)
  config = defaults.complete(config)
  dataset = dataset if dataset is not None else experiment.load_dataset(config)
  names = fields.names(config.compare.strategies)
  for name in names:
    strategies.get(name)
  posthoc = fields.names(config.compare.posthoc) or ("none",)
  seeds = [int(config.seed) + i for i in range(int(config.compare.seeds))]
  rows: list[dict] = []
  bank_k, bank_why = hubness_lib.resolve_querybank(
    config.eval.querybank_k,
    dataset,
    int(config.eval.csls_k),
    config.eval.split,
  )
  log(
    f"query-bank hubness correction: {'k=%d' % bank_k if bank_k else 'off'} ({bank_why}), "
    "the same for every method and baseline"
  )
  t0 = time.perf_counter()
  for name in names:
    for seed in seeds:
      cfg = ml_collections.ConfigDict(config.to_dict())
      cfg.strategy, cfg.seed = name, seed
      cfg.train.checkpoint_every = int(cfg.train.steps)
      run_dir = os.path.join(workdir, name, f"seed{seed}") if workdir else None
      run = strategies.get(name).train(cfg, dataset, run_dir, log=_quiet)
      train_seconds = sum(r.seconds for r in run.results)
      for base in run.aligners:  # every retrieval view (dmvae: the shared latent and translation)
        for method in posthoc:
          aligner = (
            base if method == "none" else linear_aligners.PosthocAligner(base, method, dataset)
          )
          for r in retrieval_lib.retrieval_rows(
            aligner, dataset, split=config.eval.split, ks=tuple(config.eval.ks), querybank_k=bank_k
          ):
            rows.append({**r, "seed": seed, "train_seconds": train_seconds})
      zs = [
        r
        for r in rows
        if r["strategy"] == name
        and r["seed"] == seed
        and (r["hops"] or 0) >= 2
        and r["level"] == "class"
      ]
      log(
        f"{name:9s} seed {seed}: zero-shot mAP "
        + ", ".join(f"{r['query']}->{r['gallery']} {r['mAP']:.3f}" for r in zs)
        + f"  ({train_seconds:.1f}s)"
      )
  for kind in fields.names(config.compare.baselines):
    aligner = linear_aligners.LinearAligner(dataset, kind)
    for r in retrieval_lib.retrieval_rows(
      aligner, dataset, split=config.eval.split, ks=tuple(config.eval.ks), querybank_k=bank_k
    ):
      rows.append({**r, "seed": seeds[0], "train_seconds": None})
  level = "instance" if any(r["level"] == "instance" for r in rows) else "class"
  table, zero_shot = summarize(rows, level)
  columns = ["method", "seeds"]
  for pair in zero_shot:
    columns += [f"{pair} mAP", f"{pair} mAP std", f"{pair} R@1"]
  columns += ["zero-shot mAP", "paired mAP", "train s"]
  md = tables_lib.format_table(table, columns)
  chance = {
    pair: next((t[f"{pair} chance mAP"] for t in table if f"{pair} chance mAP" in t), None)
    for pair in zero_shot
  }
  caption = (
    f"Zero-shot {level}-level retrieval between modalities never paired in training "
    f"({', '.join(zero_shot)}), {config.eval.split} split, mean (std) over {len(seeds)} seeds; "
    "chance mAP "
    + ", ".join(f"{p} {c:.3f}" for p, c in chance.items() if c is not None)
    + ". 'paired mAP' averages the directly paired modality pairs. Linear baselines are "
    "deterministic (one fit)."
  )
  log("\n" + caption + "\n" + md)
  result = {
    "rows": rows,
    "table": table,
    "zero_shot_pairs": zero_shot,
    "level": level,
    "seconds": time.perf_counter() - t0,
  }
  if workdir:
    os.makedirs(workdir, exist_ok=True)
    tables_lib.write_json(os.path.join(workdir, "compare.json"), result)
    with open(os.path.join(workdir, "compare.md"), "w") as f:
      f.write(f"# Strategy comparison on {os.path.basename(dataset.source)}\n\n{caption}\n\n{md}\n")
    try:
      plot_rows = [
        {
          "strategy": t["method"],
          "pair": pair,
          "mean": t[f"{pair} mAP"],
          # a spread needs 2+ seeds: one seed or a deterministic baseline gets no error bar
          "std": t.get(f"{pair} mAP std") if t["seeds"] > 1 else None,
          "chance": chance[pair],
        }
        for t in table
        for pair in zero_shot
        if f"{pair} mAP" in t
      ]
      charts_lib.plot_strategy_comparison(
        plot_rows,
        os.path.join(workdir, "compare.png"),
        comparison_title(dataset, config.eval.split, level, seeds),
        metric=f"mAP ({level}-level)",
      )
    except ImportError:
      log("matplotlib is not installed: skipped compare.png")
    log(f"wrote {os.path.join(workdir, 'compare.md')}, compare.json, compare.png")
  return result
