"""The evaluation report: numbers (report.json), tables (report.md) and pictures (PNG).

`build_report` scores one aligner on one data set (retrieval, modality gap before/after training,
silhouette, reconstruction); `write_report` writes the files; `run_report` does both and prints the
compact console table. `evaluate_workdir` restores a trained run and reports on it (the
`launch/evaluate.py` CLI). Plots need matplotlib (`pip install graphbridge[plots]`); without it the
report is written without pictures and says so.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable, Mapping, Sequence
import jax
import numpy as np
from graphbridge.evaluation import aligners as aligners_lib
from graphbridge.evaluation import encoding as encoding_lib
from graphbridge.evaluation import tables as tables_lib
from graphbridge.evaluation import hubness as hubness_lib
from graphbridge.data import dataset as dataset_lib
from graphbridge.evaluation import evaluators as evaluators_lib
from graphbridge.evaluation.figures import _is_summary_loss, write_plots
from graphbridge import defaults
from graphbridge.core import fields
from graphbridge.model import translators as translators_lib
from graphbridge.data.tools import split_warning


REPORT_FILES = ("report.json", "report.md")


# columns of each table: owned by its evaluator (evaluators.py)
GAP_COLUMNS = evaluators_lib.Gap.columns


SILHOUETTE_COLUMNS = evaluators_lib.Silhouette.columns


RECONSTRUCTION_COLUMNS = evaluators_lib.Reconstruction.columns


BY_HOPS_COLUMNS = evaluators_lib.ByHops.columns


@dataclasses.dataclass
class EvalOptions:
  """What to evaluate. Sample sizes bound the O(n^2) silhouette and the plotted points."""

  split: str = "test"
  ks: tuple[int, ...] = (1, 5, 10)
  extra_routes: tuple[str, ...] = ()
  cycle_length: int = 3
  path_hops: int = 3
  silhouette_sample: int = 500
  projection_points: int = 400
  reconstruction_rows: int = 2000
  max_queries: int = 0  # retrieval: at most this many query rows per route (0: all)
  seed: int = 0
  plot_dpi: int = 120  # raster figures; PDF/SVG are vector
  plot_formats: tuple[str, ...] = ("png",)  # also ("png", "pdf") or ("png", "svg") for papers
  routes: str = "auto"  # translator aligners: default route for never-paired pairs
  csls_k: int = 0  # > 0: CSLS hubness correction (transductive)
  querybank_k: int = -1  # > 0: query-bank hubness correction; -1: auto (resolve_querybank)
  tables: tuple[str, ...] = ()  # evaluators_lib.EVALUATORS names to compute; () = all

  @classmethod
  def from_config(cls, config, **overrides) -> "EvalOptions":
    """From a run config's `eval` block (split, ks, paths, optional cycle_length / path_hops)."""
    config = defaults.complete(config)
    ev = config.eval
    paths = ev.paths
    paths = (
      tuple(p.strip() for p in paths.split(",") if p.strip())
      if isinstance(paths, str)
      else tuple(paths)
    )
    options = cls(
      split=ev.split,
      ks=tuple(int(k) for k in ev.ks),
      extra_routes=paths,
      cycle_length=int(ev.cycle_length),
      path_hops=int(ev.path_hops),
      seed=int(config.seed),
      plot_dpi=int(ev.plot_dpi),
      plot_formats=_formats(ev.plot_formats),
      routes=str(ev.routes),
      csls_k=int(ev.csls_k),
      querybank_k=int(ev.querybank_k),
      tables=_names(ev.tables),
      max_queries=int(ev.max_queries),
    )
    return dataclasses.replace(options, **{k: v for k, v in overrides.items() if v is not None})


def _names(value) -> tuple[str, ...]:
  return fields.names(value)


def _formats(value) -> tuple[str, ...]:
  """'png,pdf' or ('png', 'pdf') -> ('png', 'pdf'); 'png' always first (the report embeds it)."""
  items = [
    v.strip().lower() for v in (value.split(",") if isinstance(value, str) else value) if v.strip()
  ]
  return ("png", *[v for v in items if v != "png"])


@dataclasses.dataclass
class Report:
  """summary: the JSON-able report; projection: arrays for the common-space picture (or None)."""

  summary: dict
  projection: dict | None = None


def initial_params(layout, params: Mapping, seed: int, keep: Sequence[str] = ()) -> dict:
  """Stacked params of `layout` at initialisation (translators_lib.init_params), except edges in
  `keep` (e.g. frozen edges of a grafted run), which keep their values from `params`."""
  start = translators_lib.unstack(layout, translators_lib.init_params(layout, int(seed)))
  if keep:
    trained = translators_lib.unstack(layout, params)
    start.update({e: trained[e] for e in keep})
  return translators_lib.stack(layout, start)


def _bank_neighbours(summary: Mapping) -> str:
  """How many bank rows the query-bank correction averaged: "10", or where a bank held fewer rows
  than eval.querybank_k, the numbers used ("45 (image), 48 (audio)")."""
  used = summary.get("querybank_k_used")
  if not used:
    return str(summary["querybank_k"])
  return ", ".join(f"{k} ({m})" for m, k in used.items())


def build_report(
  aligner: encoding_lib.Aligner,
  dataset,
  before: encoding_lib.Aligner | None = None,
  options: EvalOptions | None = None,
) -> Report:
  """Every table of the report for `aligner` (and `before`: the same strategy at initialisation)."""
  options = options or EvalOptions()
  split = options.split
  aligner, before = (with_route_options(a, options) for a in (aligner, before))
  summary = {
    "strategy": aligner.name,
    "data": dataset.source,
    "split": split,
    "routes": options.routes,
    "route_mode": "%s (%s)" % encoding_lib.resolve_route_mode(options.routes, dataset),
    "csls_k": int(options.csls_k),
    "transductive": bool(options.csls_k > 0),
  }
  bank_k, bank_why = hubness_lib.resolve_querybank(
    options.querybank_k, dataset, options.csls_k, split
  )
  summary["querybank_k"] = bank_k
  summary["querybank"] = f"{'on, k=%d' % bank_k if bank_k else 'off'} ({bank_why})"
  used = hubness_lib.querybank_k_used(bank_k, dataset) if bank_k > 0 else {}
  if any(k < bank_k for k in used.values()):  # a bank smaller than k: what was used, not asked
    summary["querybank_k_used"] = used
    summary["querybank"] = (
      f"on, k={bank_k} "
      + ("asked for" if bank_why == "asked for" else f"({bank_why})")
      + "; used "
      + ", ".join(f"k={k} for {m} queries" for m, k in used.items())
      + " (all of the query modality's bank: its train rows)"
    )
  options = dataclasses.replace(options, querybank_k=bank_k)
  ctx = evaluators_lib.Context(aligner, dataset, before, options)
  for evaluator in evaluators_lib.selected(options.tables):
    summary.update(evaluator.compute(ctx))
  warning = split_warning(dataset, split)
  if warning:
    summary["split_warning"] = warning
  rows = summary.get("rows", [])
  sampled = [r for r in rows if r.get("queries_sampled")]
  if sampled:
    summary["query_sampling"] = (
      f"retrieval scored a seeded sample of at most {options.max_queries} query rows per route "
      f"(eval.max_queries) against the whole gallery, in {len(sampled)} of {len(rows)} rows "
      f"(up to {max(r['query_rows'] for r in sampled)} query rows available); "
      "set eval.max_queries=0 to score every query"
    )
  empty = [m for m in dataset.names if len(dataset_lib.split_rows(dataset, m, split)) == 0]
  if empty:
    summary["notes"] = [
      f"{m} has no {split} rows ({m}_{split} is all False): its rows are skipped in every table"
      for m in empty
    ]
  projection = None
  if len(dataset.names) > 1:
    space = tables_lib.hub_modality(dataset)
    after_rows, space_routes = tables_lib.common_space_rows(aligner, dataset, space, ctx.cache)
    projection = {
      "space": space,
      "routes": space_routes,
      "after": after_rows,
      "before": None,
      "labels": _projection_labels(dataset, split),
      "class_names": dataset.class_names,  # the class legend's order (label order)
    }
    if before is not None:
      projection["before"], _ = tables_lib.common_space_rows(
        before, dataset, space, ctx.cache_before
      )
    left_out = _one_dimension(projection, space)
    summary["projection"] = {"space": space, "routes": space_routes}
    if left_out:
      summary["projection"]["left_out"] = left_out
  return Report(summary, projection)


def with_route_options(aligner, options: EvalOptions):
  """A translator aligner with the options' route mode and CSLS setting (others as they are)."""
  if isinstance(aligner, aligners_lib.GraphAligner) and (aligner.routes, aligner.csls_k) != (
    options.routes,
    options.csls_k,
  ):
    return dataclasses.replace(aligner, routes=options.routes, csls_k=int(options.csls_k))
  return aligner


def _one_dimension(projection: dict, space: str) -> list[str]:
  """Keep the modalities whose rows share the common space's dimension (one picture needs one
  space); returns the names left out, e.g. modalities that meet `space` only in a third space."""
  dim = projection["after"][space].shape[1]
  left_out = [m for m, z in projection["after"].items() if z.shape[1] != dim]
  if projection["before"] is not None:
    left_out += [
      m
      for m, z in projection["before"].items()
      if z.shape[1] != projection["before"][space].shape[1] and m not in left_out
    ]
  for key in ("after", "before"):
    if projection[key] is not None:
      projection[key] = {m: z for m, z in projection[key].items() if m not in left_out}
  return left_out


def _projection_labels(dataset, split: str) -> dict | None:
  """Labels of the split's rows per modality; class names (the data's class_names) where given."""
  labels = {
    m: mod.labels[dataset_lib.split_rows(dataset, m, split)]
    for m, mod in dataset.modalities.items()
    if mod.labels is not None
  }
  names = dataset.class_names
  if names and all(len(v) == 0 or (v.min() >= 0 and v.max() < len(names)) for v in labels.values()):
    labels = {m: np.asarray(names, dtype=object)[v] for m, v in labels.items()}
  return labels or None


_caption = evaluators_lib.caption


def markdown(summary: Mapping, images: Mapping[str, str], title: str) -> str:
  """report.md: every table with a one-line caption, then the pictures."""
  split = summary["split"]
  parts = [f"# {title}\n\n"]
  if summary.get("graph"):
    g = summary["graph"]
    parts.append(
      f"Graph: nodes {', '.join(f'{n}[{d}]' for n, d in g['nodes'])}; "
      f"edges {', '.join(g['edges'])}.  \n"
    )
  parts.append(f"Data: `{summary['data']}`; evaluated on the {split} split.")
  if summary.get("split_warning"):
    parts.append(f"\n\n> **Warning:** {summary['split_warning']}.\n\n")
  for note in summary.get("notes", []):
    parts.append(f"\n\n> **Note:** {note}.\n\n")
  for skipped in summary.get("skipped_steps", []):  # a fallback to an older checkpoint step
    parts.append(
      f"\n\n> **Note:** checkpoint step {skipped['step']} was skipped ({skipped['problem']}); "
      "this report is of an older step.\n\n"
    )
  if summary.get("step") is not None:
    parts.append(f" Checkpoint step {summary['step']}.")
  if summary.get("transductive"):
    parts.append(
      f"\n\n> **Transductive:** CSLS hubness correction (k={summary['csls_k']}) ranks each gallery "
      "with statistics of the whole query set.\n\n"
    )
  if summary.get("querybank_k"):
    parts.append(
      "\n\nRetrieval ranks each gallery row by its cosine minus its hubness, its mean cosine to "
      f"its {_bank_neighbours(summary)} nearest train rows of the query modality (query-bank "
      f"correction, `eval.querybank_k`; {summary.get('querybank', '')}); test queries are never "
      "used."
    )
  parts.append("\n\n")
  for evaluator in evaluators_lib.present(summary):
    parts.append(evaluator.markdown(summary))
  if images:
    parts.append("## Pictures\n\n")
    captions = {
      "projection": "2-D PCA of every modality in one common space, where each meets {space} "
      "(routes: {routes}); stars = centroids, dashed lines = modality gap.",
      "heatmap_instance": "Instance-level retrieval mAP for every query/gallery pair, chance "
      "underneath.",
      "heatmap_class": "Class-level retrieval mAP for every query/gallery pair, chance underneath.",
      "reconstruction": "Reconstruction cosine against the number of translators applied, one line "
      "per target modality (cycles and paths that end in it); dashed = its mean-predictor "
      "baseline.",
      "curves": "Training losses from metrics.jsonl.",
    }
    proj = summary.get("projection") or {}
    routes = ", ".join(f"{m}: {r}" for m, r in proj.get("routes", {}).items())
    for key, name in images.items():
      text = captions[key].format(space=proj.get("space", ""), routes=routes or "-")
      parts.append(f"![{key}]({name})\n\n" + _caption(text))
  elif summary.get("plots_skipped"):
    parts.append(f"_No pictures: {summary['plots_skipped']}._\n\n")
  for note in summary.get("plots_not_drawn", []):
    parts.append(f"_Figure not drawn: {note}._\n\n")
  if summary.get("timing") or summary.get("final_losses"):
    parts.append("## Run\n\n")
    losses = {k: v for k, v in summary.get("final_losses", {}).items() if _is_summary_loss(k)}
    for key, value in {**summary.get("timing", {}), **losses}.items():
      parts.append(f"- {key}: {value:.4g}\n" if isinstance(value, float) else f"- {key}: {value}\n")
  return "".join(parts)


def console_summary(summary: Mapping) -> str:
  """The compact table printed by the main job: retrieval rows, by-hop summary, one line per
  extra."""
  lines = []
  for evaluator in evaluators_lib.present(summary):
    lines += evaluator.console(summary)
  return "\n".join(lines)


def write_report(
  report: Report,
  out_dir: str,
  title: str,
  names: Sequence[str],
  metrics_rows: Sequence[Mapping] = (),
  plots: bool = True,
  seed: int = 0,
  points: int = 400,
  dpi: int = 120,
  formats: Sequence[str] = ("png",),
) -> list[str]:
  """report.json, report.md and the PNGs into out_dir; returns the paths written (process 0 writes;
  other processes of a multi-host run compute the same report and write nothing)."""
  if jax.process_index() != 0:
    return []
  os.makedirs(out_dir, exist_ok=True)
  images = {}
  report.summary["plots"] = images
  _write_numbers(report, out_dir, title, images)  # the numbers first: no figure can cost them
  if plots:
    try:
      images = write_plots(
        report,
        out_dir,
        title,
        names,
        metrics_rows,
        seed=seed,
        points=points,
        dpi=dpi,
        formats=formats,
      )
    except ImportError as exc:
      report.summary["plots_skipped"] = (
        f"matplotlib is not installed ({exc}); pip install matplotlib"
      )
    except Exception as exc:  # noqa: BLE001  (a figure must never cost the numbers)
      if os.environ.get("GRAPHBRIDGE_DEBUG"):
        raise
      report.summary["plots_skipped"] = (
        f"plotting failed ({type(exc).__name__}: {str(exc)[:200]}); the "
        "numbers in report.json/md are complete (GRAPHBRIDGE_DEBUG=1 for the "
        "traceback)"
      )
  report.summary["plots"] = images
  _write_numbers(report, out_dir, title, images)  # again, now with the figures and any notes
  return [os.path.join(out_dir, n) for n in (*REPORT_FILES, *images.values())]


def _write_numbers(report: Report, out_dir: str, title: str, images: Mapping[str, str]) -> None:
  tables_lib.write_json(os.path.join(out_dir, "report.json"), report.summary)
  with open(os.path.join(out_dir, "report.md"), "w") as f:
    f.write(markdown(report.summary, images, title))


RETRIEVAL_METRICS = ("mAP", "R@1", "R@5", "R@10", "median_rank")


def final_scalars(summary: Mapping) -> tuple[dict[str, float], dict[str, float]]:
  """The report's numbers as scalars named like the training's validation ("val/mAP/image->audio"):
  returns (every scalar, the headline ones for TensorBoard's HParams tab).

  Retrieval on the split: "<split>/mAP" (mean over default routes at the report's main level,
  instance where there is one), "<split>/<metric>/<query>-><gallery>", "<split>/mAP/hops<h>", the
  other level as "<split>/<level>/...", named routes as "<split>/route/<metric>/<route>"; the
  modality gap "<split>/gap/<query>-><gallery>" and its mean "<split>/gap" (and "gap_before"),
  "<split>/silhouette", "reconstruction/cosine/<route>", and "time/<what>" in seconds."""
  split = summary.get("split", "test")
  rows = summary.get("rows", [])
  main = "instance" if any(r.get("level") == "instance" for r in rows) else "class"
  out: dict[str, float] = {}

  def put(key: str, value) -> None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value):
      out[key] = float(value)

  for level in ("instance", "class"):
    prefix = split if level == main else f"{split}/{level}"
    mine = [r for r in rows if r.get("level") == level]
    for r in mine:
      name = r["route"] if r.get("named_route") else f"{r['query']}->{r['gallery']}"
      where = f"{prefix}/route" if r.get("named_route") else prefix
      for metric in RETRIEVAL_METRICS:
        put(f"{where}/{metric}/{name}", r.get(metric))
    default = [r["mAP"] for r in mine if not r.get("named_route") and r.get("mAP") is not None]
    if default:
      put(f"{prefix}/mAP", float(np.mean(default)))
    for h in summary.get("by_hops", []):
      if h.get("level") == level:
        put(f"{prefix}/mAP/hops{h['hops']}", h.get("mAP"))
  gaps = summary.get("gap", [])
  for g in gaps:
    put(f"{split}/gap/{g['query']}->{g['gallery']}", g.get("gap_after"))
  for key, name in (("gap_after", "gap"), ("gap_before", "gap_before")):
    values = [g[key] for g in gaps if g.get(key) is not None]
    if values:
      put(f"{split}/{name}", float(np.mean(values)))
  mixed = [r["mixed"] for r in summary.get("silhouette", []) if r.get("mixed") is not None]
  if mixed:
    put(f"{split}/silhouette", float(np.mean(mixed)))
  for r in summary.get("reconstruction", []):
    put(f"reconstruction/cosine/{r['route']}", r.get("cosine"))
  for key, value in (summary.get("timing") or {}).items():
    put(f"time/{key}", value)
  headline = {k: v for k, v in out.items() if k.startswith(f"{split}/mAP") and "->" not in k}
  headline.update({k: out[k] for k in (f"{split}/gap", f"{split}/silhouette") if k in out})
  return out, headline


def run_report(
  aligner: encoding_lib.Aligner,
  dataset,
  out_dir: str | None,
  before: encoding_lib.Aligner | None = None,
  options: EvalOptions | None = None,
  header: Mapping | None = None,
  metrics_rows: Sequence[Mapping] = (),
  plots: bool = True,
  log: Callable[[str], None] = print,
) -> dict:
  """Evaluate, print the compact table, write the report into out_dir (None: print only).

  header: extra top-level entries of report.json (graph, step, timing, final_losses, ...)."""
  t0 = time.perf_counter()
  options = options or EvalOptions()
  report = build_report(aligner, dataset, before, options)
  report.summary.update(header or {})
  report.summary.setdefault("timing", {})["eval_seconds"] = time.perf_counter() - t0
  log("\n" + console_summary(report.summary))
  if report.summary.get("split_warning"):
    log(f"WARNING: {report.summary['split_warning']}")
  if report.summary.get("query_sampling"):
    log(f"note: {report.summary['query_sampling']}")
  for note in report.summary.get("notes", []):
    log(f"note: {note}")
  if out_dir:
    title = f"{os.path.basename(os.path.normpath(dataset.source))}, {aligner.name}"
    written = write_report(
      report,
      out_dir,
      title,
      dataset.names,
      metrics_rows,
      plots,
      options.seed,
      options.projection_points,
      options.plot_dpi,
      options.plot_formats,
    )
    note = f" ({report.summary['plots_skipped']})" if report.summary.get("plots_skipped") else ""
    log(f"\nwrote {', '.join(os.path.basename(p) for p in written)} to {out_dir}{note}")
    for skipped in report.summary.get("plots_not_drawn", []):
      log(f"figure not drawn: {skipped}")
  log(f"report took {time.perf_counter() - t0:.1f}s")
  return report.summary
