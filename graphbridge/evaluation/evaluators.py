"""The report's tables as plug-ins: one evaluator per table, owning its rows, columns and caption.

An evaluator computes entries of report.json from a `Context` (the aligner, the data, the options
and shared encodings), and renders its own section of report.md and its lines of the console
summary. `REGISTRY` holds them in report order; `config.eval.tables` selects ("" = all). A new
table is one `Evaluator` subclass and `register(...)` (docs/extending.md).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, Sequence
import numpy as np
from graphbridge.core.registry import Registry
from graphbridge.evaluation import encoding as encoding_lib
from graphbridge.evaluation import tables as tables_lib
from graphbridge.evaluation import retrieval as retrieval_lib


@dataclasses.dataclass
class Context:
  """What every evaluator may read. `before`: the same strategy at initialisation (or None)."""

  aligner: Any
  dataset: Any
  before: Any
  options: Any  # report.EvalOptions

  @functools.cached_property
  def cache(self) -> encoding_lib.EncodingCache:
    return encoding_lib.EncodingCache(self.aligner, self.dataset, self.options.split)

  @functools.cached_property
  def cache_before(self) -> encoding_lib.EncodingCache | None:
    if self.before is None:
      return None
    return encoding_lib.EncodingCache(self.before, self.dataset, self.options.split)

  @functools.cached_property
  def default_routes(self) -> list:
    """One default route per ordered pair of modalities."""
    return encoding_lib.planned_routes(self.aligner, self.dataset)

  @functools.cached_property
  def retrieval_rows(self) -> list[dict]:
    o = self.options
    return retrieval_lib.retrieval_rows(
      self.aligner,
      self.dataset,
      split=o.split,
      extra_routes=o.extra_routes,
      ks=o.ks,
      cache=self.cache,
      max_queries=getattr(o, "max_queries", 0) or None,
      seed=o.seed,
      querybank_k=o.querybank_k,
    )  # resolved by report.build_report


def caption(text: str) -> str:
  return f"_{text}_\n\n"


class Evaluator:
  """One report table. Subclasses set `name` (eval.tables selects by it) and override compute(),
  and markdown()/console() to show it. `key`: the report.json entry whose presence means the table
  was computed (default: `name`)."""

  name: str = ""
  key: str = ""

  @property
  def summary_key(self) -> str:
    return self.key or self.name

  def compute(self, ctx: Context) -> dict[str, Any]:
    """{report.json key: JSON-able value} (usually a list of row dicts)."""
    raise NotImplementedError

  def markdown(self, summary: Mapping) -> str:
    """This table's section of report.md ("" to show nothing)."""
    return ""

  def console(self, summary: Mapping) -> list[str]:
    """Lines of the console summary."""
    return []


class Retrieval(Evaluator):
  name = "retrieval"
  key = "rows"
  caption = (
    "Each query row is put in the gallery's space along `route` (default: the direct "
    "edge, else the shortest path; an ensemble averages the similarities of several routes, "
    "spelled out below the table) and the gallery is ranked by cosine. `hops` = distance "
    "in the paired-data graph: 1 = paired in training, 2+ = never paired (zero-shot); `edges` "
    "= what the route's translators learned from: the data's pairs (paired), pairs accepted by "
    "self-training (pseudo-paired) or cycles alone (cycle-only). "
    "Instance level: relevant = same id; class level: relevant = same label. chance_* = "
    "expected value of a random ranking."
  )

  def compute(self, ctx):
    return {"rows": ctx.retrieval_rows}

  def markdown(self, summary):
    note = f"> **Note:** {summary['query_sampling']}.\n\n" if summary.get("query_sampling") else ""
    return (
      "## Retrieval\n\n"
      + caption(self.caption)
      + note
      + tables_lib.format_table(summary["rows"], self.columns(summary))
      + "\n\n"
      + _legend(summary["rows"])
    )

  @staticmethod
  def columns(summary) -> tuple[str, ...]:
    """The retrieval columns; `edges` only where some route has an origin (translator graphs)."""
    has_edges = any(r.get("edges") for r in summary["rows"])
    return tuple(c for c in tables_lib.RETRIEVAL_COLUMNS if c != "edges" or has_edges)

  def console(self, summary):
    title = (
      f"retrieval on the {summary['split']} split (route a->b: query translated into b's "
      "space; a->p<-b: both translated into p)"
    )
    lines = [title, tables_lib.format_table(summary["rows"], self.columns(summary))]
    if tables_lib.ensemble_legend(summary["rows"]):
      lines.append(
        "ensemble of N via ...: cosine similarities averaged over the N fewest-hop routes through "
        "those nodes (each spelled out in report.md)"
      )
    return lines + [""]


def _legend(rows) -> str:
  legend = tables_lib.ensemble_legend(rows)
  if not legend:
    return ""
  return (
    "Route ensembles (similarities averaged over the routes):\n\n"
    + "".join(f"- {line}\n" for line in legend)
    + "\n"
  )


class ByHops(Evaluator):
  name = "by_hops"
  columns = ("level", "hops", "pairs", "mAP", "R@1", "R@10", "chance_mAP")

  def compute(self, ctx):
    default = [r for r in ctx.retrieval_rows if not r.get("named_route")]
    return {"by_hops": tables_lib.summarize_by_hops(default)}

  def markdown(self, summary):
    return (
      "### By hop distance\n\n"
      + caption("Mean over the query/gallery pairs at each distance (default routes only).")
      + tables_lib.format_table(summary["by_hops"], self.columns)
      + "\n\n"
    )

  def console(self, summary):
    return [
      "by hop distance in the paired-data graph (1 = paired in training, 2+ = zero-shot)",
      tables_lib.format_table(summary["by_hops"], self.columns),
    ]


class Gap(Evaluator):
  name = "gap"
  columns = ("query", "gallery", "route", "hops", "gap_raw", "gap_before", "gap_after")

  def compute(self, ctx):
    return {
      "gap": tables_lib.gap_rows(
        ctx.aligner,
        ctx.dataset,
        ctx.options.split,
        ctx.before,
        ctx.default_routes,
        ctx.cache,
        ctx.cache_before,
      )
    }

  def markdown(self, summary):
    if not summary.get("gap"):
      return ""
    has_raw = any(g["gap_raw"] is not None for g in summary["gap"])
    columns = [c for c in self.columns if c != "gap_raw" or has_raw]
    return (
      "## Modality gap\n\n"
      + caption(
        "Distance between the centroids of the L2-normalised query translations and gallery rows, "
        "in the space where they are compared (0 = centroids coincide, at most 2). before = "
        "translators at initialisation, after = trained; raw = untranslated rows (only where the "
        "dimensions match)."
      )
      + tables_lib.format_table(summary["gap"], columns)
      + "\n\n"
    )

  def console(self, summary):
    gaps = [g for g in summary.get("gap", []) if g["gap_after"] is not None]
    if not gaps:
      return []
    before = [g["gap_before"] for g in gaps if g["gap_before"] is not None]
    text = f"{np.mean(before):.3f} at init -> " if before else ""
    after = np.mean([g["gap_after"] for g in gaps])
    return [f"\nmodality gap (mean over {len(gaps)} routes): {text}{after:.3f}"]


class Silhouette(Evaluator):
  name = "silhouette"
  columns = (
    "query",
    "gallery",
    "route",
    "query_raw",
    "query_translated",
    "gallery_raw",
    "mixed_before",
    "mixed",
  )

  def compute(self, ctx):
    o = ctx.options
    rows = tables_lib.silhouette_rows(
      ctx.aligner,
      ctx.dataset,
      o.split,
      ctx.before,
      ctx.default_routes,
      ctx.cache,
      ctx.cache_before,
      sample=o.silhouette_sample,
      seed=o.seed,
    )
    return {"silhouette": rows, "silhouette_sample": int(o.silhouette_sample)}

  def markdown(self, summary):
    if not summary.get("silhouette"):
      return ""
    return (
      "## Cluster separability by class\n\n"
      + caption(
        "Cosine silhouette by class label (-1..1, higher = tighter, better separated classes). "
        "query_raw / gallery_raw: each modality's own embeddings; query_translated: the query rows "
        "in the gallery's space; mixed: translated queries + gallery rows scored together, high "
        "when classes rather than modalities form the clusters (mixed_before: at initialisation). "
        "An estimate: each set is a seeded sample of at most "
        f"{summary.get('silhouette_sample', 500)} rows (half from each side for mixed)."
      )
      + tables_lib.format_table(summary["silhouette"], self.columns)
      + "\n\n"
    )

  def console(self, summary):
    sil = [s for s in summary.get("silhouette", []) if s["mixed"] is not None]
    if not sil:
      return []
    mixed = np.mean([s["mixed"] for s in sil])
    return [f"class silhouette of translated queries + gallery (mean): {mixed:.3f}"]


class Reconstruction(Evaluator):
  name = "reconstruction"
  columns = ("kind", "route", "hops", "target", "n", "cosine", "baseline")
  by_hops_columns = ("kind", "hops", "routes", "cosine", "baseline")

  def compute(self, ctx):
    o = ctx.options
    rows = tables_lib.reconstruction_rows(
      ctx.aligner,
      ctx.dataset,
      o.split,
      o.cycle_length,
      o.path_hops,
      max_rows=o.reconstruction_rows,
      seed=o.seed,
    )
    return {
      "reconstruction": rows,
      "reconstruction_by_hops": tables_lib.summarize_reconstruction(rows),
    }

  def markdown(self, summary):
    if not summary.get("reconstruction"):
      return ""
    return (
      "## Reconstruction along paths and cycles\n\n"
      + caption(
        "Mean cosine between translations and their targets; `hops` = translators applied. Cycles "
        "(a->b->a) reconstruct their own start rows. Paths a->..->b are scored against b's row "
        "with the same instance id; without ids, single hops are scored against the rows the data "
        "pairs them with (`target`; with class-level pairs that is another row of the same class, "
        "so expect less than for a cycle). baseline = the mean-predictor cosine (the mean train "
        "row of the target modality as a constant prediction)."
      )
      + tables_lib.format_table(summary["reconstruction_by_hops"], self.by_hops_columns)
      + "\n\n"
      + tables_lib.format_table(summary["reconstruction"], self.columns)
      + "\n\n"
    )

  def console(self, summary):
    return [
      f"reconstruction {r['kind']} {r['hops']} hops ({r['routes']} routes): "
      f"cosine {r['cosine']:.3f} (mean-predictor {r['baseline']:.3f})"
      for r in summary.get("reconstruction_by_hops", [])
    ]


def _check(item) -> None:
  if not isinstance(item, Evaluator) or not item.name:
    raise TypeError(
      f"a report table must be an evaluators.Evaluator with a name (eval.tables selects tables "
      f"by name), got {type(item).__name__}"
    )


REGISTRY = Registry("report table", ValueError, check=_check)  # report order = registration order
register, unregister = REGISTRY.register, REGISTRY.unregister

for _evaluator in (Retrieval(), ByHops(), Gap(), Silhouette(), Reconstruction()):
  register(_evaluator)


def present(summary: Mapping) -> list[Evaluator]:
  """The registered evaluators whose entries `summary` holds (shown in report.md, console)."""
  return [e for e in map(REGISTRY.get, REGISTRY.names()) if e.summary_key in summary]


def selected(tables: Sequence[str] = ()) -> list[Evaluator]:
  """The evaluators named in `tables` (in report order); () = all. Unknown names: ValueError."""
  if not tables:
    return [REGISTRY.get(name) for name in REGISTRY.names()]
  unknown = [t for t in tables if t not in REGISTRY]
  if unknown:
    raise ValueError(
      f"eval.tables names {', '.join(map(repr, unknown))}; "
      f"choose from: {', '.join(REGISTRY.names())}"
    )
  return [REGISTRY.get(name) for name in REGISTRY.names() if name in tables]
