"""The report's figures, drawn from report.json's numbers (matplotlib, optional)."""

from __future__ import annotations

import os
from typing import Callable, Mapping, Sequence
import numpy as np
from graphbridge.evaluation.plots import charts as charts_lib
from graphbridge.evaluation.plots import curves as curves_lib
from graphbridge.evaluation.plots import projection as projection_lib
from graphbridge.evaluation.plots import style as style_lib


PLOT_FILES = {
  "projection": "projection.png",
  "heatmap": "retrieval_{level}.png",
  "reconstruction": "reconstruction.png",
  "curves": "training_curves.png",
}


def retrieval_matrix(
  rows: Sequence[Mapping], names: Sequence[str], level: str, metric: str = "mAP"
) -> tuple[np.ndarray, np.ndarray]:
  """[n, n] metric and chance for default routes at `level` (NaN where not evaluated)."""
  index = {m: i for i, m in enumerate(names)}
  values = np.full((len(names), len(names)), np.nan)
  chance = np.full_like(values, np.nan)
  for r in rows:
    if r["level"] == level and not r.get("named_route"):
      values[index[r["query"]], index[r["gallery"]]] = r[metric]
      chance[index[r["query"]], index[r["gallery"]]] = r.get(f"chance_{metric}", np.nan)
  return values, chance


def zero_shot_matrix(rows: Sequence[Mapping], names: Sequence[str]) -> np.ndarray:
  """[n, n] bool: default routes between modalities never paired in training (hops > 1)."""
  index = {m: i for i, m in enumerate(names)}
  mask = np.zeros((len(names), len(names)), bool)
  for r in rows:
    if not r.get("named_route") and r.get("hops") is not None and r["hops"] > 1:
      mask[index[r["query"]], index[r["gallery"]]] = True
  return mask


def write_plots(
  report,
  out_dir: str,
  title: str,
  names: Sequence[str],
  metrics_rows: Sequence[Mapping] = (),
  seed: int = 0,
  points: int = 400,
  dpi: int = 120,
  formats: Sequence[str] = ("png",),
) -> dict[str, str]:
  """The PNGs of the report (and, with formats=("png", "pdf"), a PDF beside each); returns
  {caption key: file name}. One colour per modality in every figure. Raises ImportError without
  matplotlib."""
  with style_lib.save_options(dpi=dpi, formats=formats):
    return _write_plots(report, out_dir, title, names, metrics_rows, seed, points)


class _Skips:
  """Runs each figure; one that cannot be drawn is skipped with a one-line note (the numbers are
  already in report.json / report.md), so one odd graph never costs the other figures."""

  def __init__(self, summary: dict):
    self.summary = summary

  def __call__(self, key: str, draw: Callable[[], None]) -> bool:
    try:
      draw()
      return True
    except ImportError:
      raise
    except Exception as exc:  # noqa: BLE001  (any figure failure: note it, keep going)
      note = f"{key}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
      self.summary.setdefault("plots_not_drawn", []).append(note)
      return False


def _write_plots(
  report,
  out_dir: str,
  title: str,
  names: Sequence[str],
  metrics_rows: Sequence[Mapping],
  seed: int,
  points: int,
) -> dict[str, str]:
  colours = style_lib.modality_colours(names)
  s = report.summary
  written = {}
  attempt = _Skips(s)
  proj = report.projection
  if proj is not None and len(proj["after"]) <= 1 and s.get("projection", {}).get("left_out"):
    s.setdefault("plots_not_drawn", []).append(
      f"projection: no two modalities share {proj['space']}'s space"
    )
  if proj is not None and len(proj["after"]) > 1:
    space = proj["space"]
    name = PLOT_FILES["projection"]
    # Centroids and gaps use every row; `points` rows per modality are drawn (the same in both
    # panels).
    if proj["routes"].get(space) == "raw":
      what = f"all modalities in {space}'s space ({s['split']} split; others translated into it)"
    else:
      what = f"all modalities where they meet {space} ({s['split']} split)"
    if s.get("projection", {}).get("left_out"):
      what += f"; left out: {', '.join(s['projection']['left_out'])} (no route into that space)"
    before = () if proj["before"] is None else (proj["before"],)
    plot = (
      projection_lib.plot_projection
      if proj["before"] is None
      else projection_lib.plot_projection_before_after
    )
    draw = lambda: plot(
      *before,
      proj["after"],
      proj["labels"],
      os.path.join(out_dir, name),
      f"{title}: {what}",
      max_points_per_modality=points,
      seed=seed,
      colours=colours,
      class_names=proj.get("class_names"),
    )
    if attempt("projection", draw):
      written["projection"] = name
  for level in ("instance", "class"):
    values, chance = retrieval_matrix(s.get("rows", []), names, level)
    if np.isfinite(values).any():
      name = PLOT_FILES["heatmap"].format(level=level)
      draw = lambda: charts_lib.plot_retrieval_heatmap(
        values,
        names,
        names,
        os.path.join(out_dir, name),
        f"{title}: {level}-level retrieval mAP ({s['split']} split)",
        metric_name=f"mAP ({level}-level)",
        chance=chance,
        zero_shot=zero_shot_matrix([r for r in s.get("rows", []) if r["level"] == level], names)
        & np.isfinite(values),
        colours=colours,
      )
      if attempt(f"heatmap_{level}", draw):
        written[f"heatmap_{level}"] = name
  if s.get("reconstruction"):
    name = PLOT_FILES["reconstruction"]
    # One line per target modality: its baseline is the same whatever the path, so the line and
    # its dashed baseline compare like with like across hops (cycles a->..->a target a).
    by_target = [{**r, "kind": f"into {r['end']}"} for r in s["reconstruction"]]
    draw = lambda: charts_lib.plot_reconstruction_by_hops(
      by_target,
      os.path.join(out_dir, name),
      f"{title}: reconstruction of each modality's rows by path length",
      seed=seed,
      colours={f"into {m}": c for m, c in colours.items()},
    )
    if attempt("reconstruction", draw):
      written["reconstruction"] = name
  curves = [{k: v for k, v in r.items() if _is_curve(k)} for r in metrics_rows]
  if any(k.startswith("loss/") for r in curves for k in r):
    name = PLOT_FILES["curves"]
    n_rounds = len({r.get(curves_lib.ROUND_KEY, 0) for r in curves})
    what = f"training, {n_rounds} rounds of self-training" if n_rounds > 1 else "training"
    # with train.keep_best (report.json's kept_step) each round ends with its best validated step
    kept = curves_lib.kept_steps(curves) if s.get("kept_step") is not None else None
    draw = lambda: curves_lib.plot_training_curves(
      curves,
      os.path.join(out_dir, name),
      f"{title}: {what} (per-edge terms in metrics.jsonl)",
      kept=kept,
      colours=colours,
    )
    if attempt("curves", draw):
      written["curves"] = name
  return written


def _is_curve(key: str) -> bool:
  """What the training curves draw: step, round, lr, validation and the summary losses."""
  return (
    key in ("step", "lr", curves_lib.ROUND_KEY) or key.startswith("val/") or _is_summary_loss(key)
  )


def _is_summary_loss(key: str) -> bool:
  """loss/total, loss/<kind> and loss/cycle/<length>; not the per-edge terms loss/<kind>/<edge>."""
  return key.startswith("loss/") and (key.count("/") == 1 or key.startswith("loss/cycle/"))
