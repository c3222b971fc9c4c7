"""Heatmaps, reconstruction lines and the strategy comparison (training curves: curves.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence
import numpy as np
from graphbridge.evaluation.plots import style
from graphbridge.evaluation.plots.curves import plot_training_curves  # noqa: F401  (its old home)


def plot_retrieval_heatmap(
  matrix: Any,
  query_names: Sequence[str],
  gallery_names: Sequence[str],
  path: str | Path,
  title: str,
  metric_name: str = "mAP",
  chance: Any | None = None,
  zero_shot: Any | None = None,
  colours: Mapping[str, str] | None = None,
) -> Path:
  """Annotated heatmap of a retrieval metric for every query/gallery modality pair.

  Values are printed in the cells (with the chance value in small type
  underneath if ``chance`` is given); NaN cells (e.g. the diagonal) are grey.
  The colour scale is 0..1 when every value lies in [0, 1], else the data
  range.

  Args:
    matrix: [n_query, n_gallery] float, NaN for pairs not evaluated.
    query_names: [n_query] row labels; gallery_names: [n_gallery] column labels.
    path: output PNG path; title: figure title.
    metric_name: colourbar label.
    chance: [n_query, n_gallery] float chance values, or None.
    zero_shot: [n_query, n_gallery] bool, True for pairs never paired in training (drawn with a
      dashed outline and a "zero-shot" tag), or None.
    colours: modality -> colour of its tick label (the figures' one colour per modality), or None.
  """
  from matplotlib import colormaps
  from matplotlib.colors import Normalize

  values = np.asarray(matrix, dtype=np.float64)
  if values.ndim != 2 or values.size == 0:
    raise ValueError(
      f"matrix must be a non-empty 2-D array [n_query, n_gallery]; got shape {values.shape}"
    )
  query_names, gallery_names = list(query_names), list(gallery_names)
  if len(query_names) != values.shape[0] or len(gallery_names) != values.shape[1]:
    raise ValueError(
      f"matrix has shape {values.shape} but there are {len(query_names)} query_names and "
      f"{len(gallery_names)} gallery_names"
    )
  chance_values = None
  if chance is not None:
    chance_values = np.asarray(chance, dtype=np.float64)
    if chance_values.shape != values.shape:
      raise ValueError(
        f"chance has shape {chance_values.shape}, matrix has {values.shape}; they must match"
      )
  finite = values[np.isfinite(values)]
  if finite.size and finite.min() >= 0 and finite.max() <= 1:
    vmin, vmax = 0.0, 1.0
  elif finite.size:
    vmin, vmax = float(finite.min()), float(finite.max())
    if vmin == vmax:
      vmin, vmax = vmin - 0.5, vmax + 0.5
  else:
    vmin, vmax = 0.0, 1.0

  largest = float(np.abs(finite).max()) if finite.size else 1.0  # one precision for every cell
  n_query, n_gallery = values.shape
  longest = max(len(str(n)) for n in query_names)
  fig = style.new_figure(
    (max(4.8, 1.15 * n_gallery + 0.09 * longest + 2.6), max(3.6, 0.85 * n_query + 1.9))
  )
  ax = fig.add_subplot()
  cmap = colormaps["viridis"].with_extremes(bad="#d9d9d9")
  norm = Normalize(vmin=vmin, vmax=vmax)
  image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, norm=norm, aspect="auto")
  value_size = 11 if max(n_query, n_gallery) <= 8 else 8
  for i in range(n_query):
    for j in range(n_gallery):
      v = values[i, j]
      if not np.isfinite(v):
        ax.text(j, i, "n/a", ha="center", va="center", fontsize=value_size - 2, color="0.45")
        continue
      r, g, b, _ = cmap(norm(v))
      text_colour = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"
      has_chance = chance_values is not None and np.isfinite(chance_values[i, j])
      ax.text(
        j,
        i - (0.1 if has_chance else 0.0),
        style.format_value(v, largest),
        ha="center",
        va="center",
        fontsize=value_size,
        fontweight="bold",
        color=text_colour,
      )
      if has_chance:
        ax.text(
          j,
          i + 0.22,
          f"chance {style.format_value(chance_values[i, j], largest)}",
          ha="center",
          va="center",
          fontsize=value_size - 4,
          color=text_colour,
        )
  ax.set_xticks(
    range(n_gallery),
    [str(n) for n in gallery_names],
    rotation=30 if max(len(str(n)) for n in gallery_names) > 6 else 0,
    ha="right" if max(len(str(n)) for n in gallery_names) > 6 else "center",
  )
  ax.set_yticks(range(n_query), [str(n) for n in query_names])
  for tick in (*ax.get_xticklabels(), *ax.get_yticklabels()):
    if colours and tick.get_text() in colours:
      tick.set_color(colours[tick.get_text()])
      tick.set_fontweight("bold")
  ax.set_xlabel("gallery (retrieved) modality")
  ax.set_ylabel("query modality")
  ax.set_xticks(np.arange(-0.5, n_gallery), minor=True)
  ax.set_yticks(np.arange(-0.5, n_query), minor=True)
  ax.grid(which="minor", color="white", linewidth=2)
  ax.tick_params(which="minor", length=0)
  for spine in ax.spines.values():
    spine.set_visible(False)
  if zero_shot is not None:
    from matplotlib.patches import Rectangle

    zero_shot = np.asarray(zero_shot, bool)
    if zero_shot.shape != values.shape:
      raise ValueError(
        f"zero_shot has shape {zero_shot.shape}, matrix has {values.shape}; they must match"
      )
    for i, j in zip(*np.nonzero(zero_shot)):
      ax.add_patch(
        Rectangle(
          (j - 0.46, i - 0.46),
          0.92,
          0.92,
          fill=False,
          edgecolor="#D55E00",
          linestyle="--",
          linewidth=2.2,
          zorder=4,
        )
      )
      ax.text(
        j,
        i - 0.36,
        "zero-shot",
        ha="center",
        va="center",
        fontsize=value_size - 4,
        color="#D55E00",
        fontweight="bold",
        zorder=5,
        bbox=dict(boxstyle="round,pad=0.1", facecolor="white", edgecolor="none", alpha=0.8),
      )
  colourbar = fig.colorbar(image, ax=ax, shrink=0.9)
  colourbar.set_label(metric_name)
  ax.set_title(style.wrap(title, style.title_width(0.95 * fig.get_figwidth(), 13)), fontsize=13)
  return style.save_figure(fig, path)


def plot_reconstruction_by_hops(
  rows: Sequence[Mapping[str, Any]],
  path: str | Path,
  title: str,
  seed: int = 0,
  colours: Mapping[str, str] | None = None,
) -> Path:
  """Reconstruction cosine against the number of translation hops.

  One solid line per ``kind`` (mean over its paths at each hop count), the
  matching mean-predictor baseline dashed in the same colour, and the
  individual paths as jittered points.

  Args:
    rows: dicts with ``hops`` (int), ``cosine`` (float), ``baseline``
      (float, mean-predictor cosine) and ``kind`` ("path" or "cycle").
    path: output PNG path; title: figure title.
    seed: seed of the horizontal jitter.
    colours: kind -> colour (e.g. {"into audio": style.modality_colours(names)["audio"]}); default
    by order.
  """
  from matplotlib.lines import Line2D

  rows = style.check_rows("rows", rows, ("hops", "cosine", "baseline", "kind"))
  kinds = []
  for row in rows:
    if row["kind"] not in kinds:
      kinds.append(row["kind"])
  kinds.sort(key=lambda k: ({"path": 0, "cycle": 1}.get(k, 2), str(k)))
  rng = np.random.default_rng(seed)
  fig = style.new_figure((10.5, 5.0))  # room for the legend beside the axes
  ax = fig.add_subplot()
  handles = []
  all_hops = set()
  offsets = np.linspace(-0.12, 0.12, len(kinds)) if len(kinds) > 1 else [0.0]
  for i, kind in enumerate(kinds):
    colour = (colours or {}).get(kind) or style.palette_colour(i)
    selected = [r for r in rows if r["kind"] == kind]
    hops = np.array([int(r["hops"]) for r in selected])
    cosine = np.array([float(r["cosine"]) for r in selected])
    baseline = np.array([float(r["baseline"]) for r in selected])
    all_hops.update(hops.tolist())
    jitter = offsets[i] + rng.uniform(-0.06, 0.06, size=hops.size)
    ax.scatter(hops + jitter, cosine, s=16, color=colour, alpha=0.35, linewidths=0, zorder=2)
    unique_hops = np.unique(hops)
    mean_cos = np.array([np.nanmean(cosine[hops == h]) for h in unique_hops])
    with np.errstate(all="ignore"):
      mean_base = np.array(
        [
          np.nanmean(baseline[hops == h]) if np.isfinite(baseline[hops == h]).any() else np.nan
          for h in unique_hops
        ]
      )
    ax.plot(unique_hops, mean_cos, color=colour, linewidth=2.2, marker="o", markersize=6, zorder=3)
    ax.plot(unique_hops, mean_base, color=colour, linewidth=1.6, linestyle="--", zorder=3)
    handles.append(
      Line2D([], [], color=colour, linewidth=2.2, marker="o", label=f"{kind}: mean cosine")
    )
    handles.append(
      Line2D(
        [],
        [],
        color=colour,
        linewidth=1.6,
        linestyle="--",
        label=f"{kind}: mean-predictor baseline",
      )
    )
  handles.append(
    Line2D(
      [],
      [],
      color="0.4",
      marker="o",
      linestyle="none",
      alpha=0.5,
      markersize=5,
      label="individual paths (jittered)",
    )
  )
  ax.set_xticks(sorted(all_hops))
  ax.set_xlabel("number of hops (translators applied)")
  ax.set_ylabel("reconstruction cosine similarity")
  ax.grid(True, color="0.9", linewidth=0.8)
  ax.set_axisbelow(True)
  fig.legend(
    handles=handles, loc="outside right center", fontsize=9, frameon=False
  )  # never over the data
  fig.suptitle(style.wrap(title, style.title_width(10.5, 13)), fontsize=13)
  return style.save_figure(fig, path)


HATCHES = {"": "", "center": "///", "procrustes": "...", "cca": "xxx"}  # post-hoc variant -> hatch


def plot_strategy_comparison(
  rows: Sequence[Mapping[str, Any]],
  path: str | Path,
  title: str,
  metric: str = "mAP",
) -> Path:
  """Grouped bar chart: one group per modality pair, one bar per strategy.

  A strategy and its post-hoc variants ("graph", "graph+center", "graph+procrustes") share the
  family's colour (style.strategy_colours, by name) and differ by hatch. Error bars show ``std``
  where it is given and finite (none for one seed or a deterministic baseline); if any row of a
  pair has ``chance``, a dashed black line marks it across that pair's group.

  Args:
    rows: dicts with ``strategy`` (str), ``pair`` (e.g. "image->audio"),
      ``mean`` (float), ``std`` (float, optional: no error bar if absent, None or NaN) and
      optionally ``chance`` (float).
    path: output PNG path; title: figure title (wrapped at spaces); metric: y-axis label.
  """
  from matplotlib.lines import Line2D

  rows = style.check_rows("rows", rows, ("strategy", "pair", "mean"))
  pairs: list[str] = []
  strategies: list[str] = []
  table: dict[tuple[str, str], Mapping[str, Any]] = {}
  for i, row in enumerate(rows):
    key = (str(row["strategy"]), str(row["pair"]))
    if key in table:
      raise ValueError(f"rows[{i}] repeats strategy {key[0]!r} for pair {key[1]!r}")
    table[key] = row
    if key[1] not in pairs:
      pairs.append(key[1])
    if key[0] not in strategies:
      strategies.append(key[0])

  n_pairs, n_strategies = len(pairs), len(strategies)
  group_width = 0.8
  bar_width = group_width / n_strategies
  fig = style.new_figure((max(6.5, 0.55 * n_pairs * max(n_strategies, 2) + 3.0), 5.0))
  ax = fig.add_subplot()
  centres = np.arange(n_pairs)
  family = {name: name.split("+")[0] for name in strategies}
  colours = style.strategy_colours(list(family.values()))
  variants = list(dict.fromkeys(name.partition("+")[2] for name in strategies))
  hatches = {v: HATCHES.get(v) for v in variants}
  spare = iter(h for h in HATCHES.values() if h and h not in hatches.values())
  hatches = {v: h if h is not None else next(spare, "++") for v, h in hatches.items()}
  for s, strategy in enumerate(strategies):
    means, stds, xs = [], [], []
    for p, pair in enumerate(pairs):
      row = table.get((strategy, pair))
      if row is None:
        continue
      xs.append(centres[p] - group_width / 2 + (s + 0.5) * bar_width)
      means.append(float(row["mean"]))
      std = row.get("std")
      stds.append(np.nan if std is None else float(std))  # NaN: no error bar drawn
    ax.bar(
      xs,
      means,
      width=bar_width * 0.92,
      color=colours[family[strategy]],
      hatch=hatches[strategy.partition("+")[2]],
      edgecolor="white",
      linewidth=0.5,
      label=strategy,
    )
    has_std = np.isfinite(stds)
    if has_std.any():
      ax.errorbar(
        np.asarray(xs)[has_std],
        np.asarray(means)[has_std],
        yerr=np.asarray(stds)[has_std],
        fmt="none",
        capsize=3,
        elinewidth=1.1,
        ecolor="0.2",
        zorder=4,
        gid=f"std:{strategy}",
      )
  has_chance = False
  for p, pair in enumerate(pairs):
    chances = [
      float(table[(s, pair)]["chance"])
      for s in strategies
      if (s, pair) in table and table[(s, pair)].get("chance") is not None
    ]
    chances = [c for c in chances if np.isfinite(c)]
    if chances:
      has_chance = True
      ax.hlines(
        np.mean(chances),
        centres[p] - group_width / 2 - 0.04,
        centres[p] + group_width / 2 + 0.04,
        colors="black",
        linestyles="--",
        linewidth=1.4,
        zorder=5,
      )
  handles, _ = ax.get_legend_handles_labels()
  if has_chance:
    handles.append(Line2D([], [], color="black", linestyle="--", label="chance"))
  rotate = max(len(p) for p in pairs) * n_pairs > 70
  ax.set_xticks(centres, pairs, rotation=30 if rotate else 0, ha="right" if rotate else "center")
  ax.set_xlabel("modality pair (query -> gallery)")
  ax.set_ylabel(metric)
  ax.set_ylim(bottom=min(0.0, ax.get_ylim()[0]))
  ax.grid(True, axis="y", color="0.9", linewidth=0.8)
  ax.set_axisbelow(True)
  if n_strategies + has_chance > 5:
    fig.legend(handles=handles, title="strategy", loc="outside right upper", frameon=False)
  else:
    ax.legend(handles=handles, title="strategy", fontsize=9, framealpha=0.9)
  ax.set_title(style.wrap(title, style.title_width(0.95 * fig.get_figwidth(), 13)), fontsize=13)
  return style.save_figure(fig, path)
