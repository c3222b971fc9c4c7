"""The common-space picture: every modality projected to 2-D, before and after training."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping
import numpy as np
from graphbridge.evaluation.geometry import modality_gap
from graphbridge.evaluation.metrics import _as_embeddings
from graphbridge.evaluation.ranks import _l2_normalise
from graphbridge.evaluation.plots import style


def _prepare_modalities(
  name: str,
  embeddings_by_modality: Mapping[str, Any],
  labels_by_modality: Mapping[str, Any] | None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray | None]]:
  if not isinstance(embeddings_by_modality, Mapping) or len(embeddings_by_modality) == 0:
    raise ValueError(f"{name} must be a non-empty dict modality -> [n, d] embeddings")
  embeddings: dict[str, np.ndarray] = {}
  labels: dict[str, np.ndarray | None] = {}
  dims = {}
  for modality, emb in embeddings_by_modality.items():
    arr = _as_embeddings(f"{name}[{modality!r}]", emb)
    embeddings[modality] = _l2_normalise(arr.astype(np.float64))
    dims[modality] = arr.shape[1]
    lab = None if labels_by_modality is None else labels_by_modality.get(modality)
    if lab is not None:
      lab = np.asarray(lab)
      if lab.ndim != 1 or lab.shape[0] != arr.shape[0]:
        raise ValueError(
          f"labels for modality {modality!r} must be 1-D with {arr.shape[0]} entries "
          f"(one per embedding row); got shape {lab.shape}"
        )
    labels[modality] = lab
  if len(set(dims.values())) > 1:
    raise ValueError(
      f"all modalities in {name} must share one embedding dimension to be projected "
      f"together; got {dims}"
    )
  return embeddings, labels


def _draw_projection(
  ax,
  embeddings: dict[str, np.ndarray],
  labels: dict[str, np.ndarray | None],
  max_points_per_modality: int,
  seed: int,
  colours: Mapping[str, str] | None = None,
) -> tuple[list, list, dict[tuple[str, str], float]]:
  """Scatter the 2-D PCA of the unit-normalised rows on ``ax``.

  Returns (modality legend handles, class legend handles, gaps by pair).
  """
  from matplotlib.lines import Line2D

  rng = np.random.default_rng(seed)
  shown_index = {}
  for modality, emb in embeddings.items():
    n = emb.shape[0]
    if n > max_points_per_modality:
      shown_index[modality] = np.sort(rng.choice(n, max_points_per_modality, replace=False))
    else:
      shown_index[modality] = np.arange(n)

  # PCA on the union of the (sub-sampled) unit rows, each modality weighted by its rows.
  union = np.concatenate([embeddings[m][shown_index[m]] for m in embeddings])
  mean = union.mean(axis=0)
  with style.one_blas_thread():
    _, singular_values, vt = np.linalg.svd(union - mean, full_matrices=False)
  n_components = min(2, vt.shape[0])
  basis = np.zeros((union.shape[1], 2))
  basis[:, :n_components] = vt[:n_components].T
  variance = singular_values**2
  explained = np.zeros(2)
  if variance.sum() > 0:
    explained[:n_components] = variance[:n_components] / variance.sum()

  all_classes = [lab for lab in labels.values() if lab is not None]
  classes = np.unique(np.concatenate(all_classes)) if all_classes else np.array([])
  class_index = {c: i for i, c in enumerate(classes)}
  class_marker = {
    c: style.CLASS_MARKERS[i % len(style.CLASS_MARKERS)] for i, c in enumerate(classes)
  }

  centroids_2d = {}
  modality_handles = []
  colours = {**style.modality_colours(list(embeddings)), **dict(colours or {})}
  for i, (modality, emb) in enumerate(embeddings.items()):
    colour = colours[modality]
    idx = shown_index[modality]
    points = (emb[idx] - mean) @ basis
    lab = labels[modality]
    if lab is None:
      ax.scatter(
        points[:, 0], points[:, 1], s=10, color=colour, alpha=0.45, linewidths=0, marker="o"
      )
    else:
      # one scatter per marker (classes beyond len(style.CLASS_MARKERS) share markers): with many
      # classes, one per class made hundreds of artists, slow to draw and save
      marker_index = np.array(
        [class_index[c] % len(style.CLASS_MARKERS) for c in lab[idx]], dtype=int
      )
      for k in np.unique(marker_index):
        sel = marker_index == k
        ax.scatter(
          points[sel, 0],
          points[sel, 1],
          s=14,
          color=colour,
          alpha=0.5,
          linewidths=0,
          marker=style.CLASS_MARKERS[k],
        )
    centroid = (emb.mean(axis=0) - mean) @ basis  # all rows, not just the shown ones
    centroids_2d[modality] = centroid
    modality_handles.append(
      Line2D(
        [],
        [],
        color=colour,
        marker="o",
        linestyle="none",
        markersize=8,
        label=f"{modality} (n={emb.shape[0]})",
      )
    )

  # Centroids on top, joined by dashed lines; the full-dimensional gap is
  # written on a line only when the line is long enough to hold the label.
  shown_points = np.concatenate(
    [(embeddings[m][shown_index[m]] - mean) @ basis for m in embeddings]
  )
  span = float(np.hypot(*np.ptp(shown_points, axis=0))) or 1.0
  gaps: dict[tuple[str, str], float] = {}
  modalities = list(embeddings)
  for a in range(len(modalities)):
    for b in range(a + 1, len(modalities)):
      ma, mb = modalities[a], modalities[b]
      gap = modality_gap(embeddings[ma], embeddings[mb])
      gaps[(ma, mb)] = gap
      ca, cb = centroids_2d[ma], centroids_2d[mb]
      if len(modalities) > 4:  # 10+ lines and labels would hide the points: gaps in the title
        continue
      ax.plot([ca[0], cb[0]], [ca[1], cb[1]], color="0.25", linestyle="--", linewidth=1.2, zorder=4)
      if np.hypot(*(ca - cb)) > 0.12 * span:
        mid = (ca + cb) / 2
        ax.annotate(
          f"{gap:.2f}",
          xy=(mid[0], mid[1]),
          ha="center",
          va="center",
          fontsize=9,
          zorder=6,
          bbox=dict(boxstyle="round,pad=0.2", facecolor="white", edgecolor="0.4", alpha=0.9),
        )
  for i, modality in enumerate(modalities):
    c = centroids_2d[modality]
    ax.scatter([c[0]], [c[1]], s=520, marker="*", color="white", linewidths=0, zorder=5)
    ax.scatter(
      [c[0]],
      [c[1]],
      s=280,
      marker="*",
      color=colours[modality],
      edgecolors="black",
      linewidths=1.2,
      zorder=5,
    )
  modality_handles.append(
    Line2D(
      [],
      [],
      color="0.5",
      marker="*",
      markeredgecolor="black",
      linestyle="none",
      markersize=14,
      label="centroid",
    )
  )
  if len(modalities) <= 4:
    modality_handles.append(
      Line2D([], [], color="0.25", linestyle="--", label="centroid distance\n(modality gap)")
    )

  class_handles = []
  if len(classes):
    for c in classes[: len(style.CLASS_MARKERS)]:
      class_handles.append(
        Line2D(
          [], [], color="0.35", marker=class_marker[c], linestyle="none", markersize=6, label=str(c)
        )
      )
    if len(classes) > len(style.CLASS_MARKERS):
      class_handles.append(
        Line2D([], [], linestyle="none", label=f"(markers repeat;\n{len(classes)} classes)")
      )

  ax.set_xlabel(f"PC1 ({100 * explained[0]:.0f}% of variance)")
  ax.set_ylabel(f"PC2 ({100 * explained[1]:.0f}% of variance)")
  ax.set_aspect("equal", adjustable="datalim")
  ax.grid(True, color="0.9", linewidth=0.8)
  ax.set_axisbelow(True)
  return modality_handles, class_handles, gaps


def _gap_summary(gaps: dict[tuple[str, str], float], width: int = 70) -> str:
  """Every pairwise gap (or their mean and range when there are many), wrapped to ``width``."""
  import textwrap

  if not gaps:
    return "single modality: no gap"
  if len(gaps) <= 3:
    text = "modality gap: " + ",  ".join(f"{a}-{b} {g:.2f}" for (a, b), g in gaps.items())
  else:
    values = np.array(list(gaps.values()))
    text = (
      f"modality gap: mean {values.mean():.2f} "
      f"(range {values.min():.2f}-{values.max():.2f}, {values.size} pairs)"
    )
  return textwrap.fill(text, width=width, break_long_words=False)


def _projection_legends(fig, modality_handles, class_handles) -> None:
  legend = fig.legend(
    handles=modality_handles, title="modality", loc="outside right upper", frameon=False
  )
  legend.get_title().set_fontweight("bold")
  if class_handles:
    legend = fig.legend(
      handles=class_handles,
      title="class (marker)",
      loc="outside right lower",
      frameon=False,
      ncols=2 if len(class_handles) > 6 else 1,
      columnspacing=0.8,
      handletextpad=0.3,
    )
    legend.get_title().set_fontweight("bold")


def plot_projection(
  embeddings_by_modality: Mapping[str, Any],
  labels_by_modality: Mapping[str, Any] | None,
  path: str | Path,
  title: str,
  method: str = "pca",
  max_points_per_modality: int = 2000,
  seed: int = 0,
  colours: Mapping[str, str] | None = None,
) -> Path:
  """2-D PCA scatter of several modalities in one shared space.

  Rows are L2-normalised; the PCA (numpy SVD) is fitted on the union of the
  plotted rows of all modalities.  Colour = modality, marker = class (if
  labels are given).  Each modality's centroid is a large star; centroids
  are joined by dashed lines labelled with the modality gap (distance
  between centroids in the full space, see ``metrics.modality_gap``).

  Args:
    embeddings_by_modality: modality name -> [n_m, d] float (same d for all).
    labels_by_modality: modality name -> [n_m] class labels, or None; a
      modality missing from the dict is drawn without class markers.
    path: output PNG path.
    title: figure title.
    method: only ``"pca"`` is supported.
    max_points_per_modality: rows drawn per modality (random subset beyond
      this; centroids and gaps always use every row).
    seed: seed for that subset.
    colours: modality -> colour (default: style.modality_colours of the dict's order).
  """
  if method != "pca":
    raise ValueError(f"method={method!r} is not supported; only 'pca' is available")
  embeddings, labels = _prepare_modalities(
    "embeddings_by_modality", embeddings_by_modality, labels_by_modality
  )
  fig = style.new_figure((8.6, 6.2))
  ax = fig.add_subplot()
  modality_handles, class_handles, gaps = _draw_projection(
    ax, embeddings, labels, max_points_per_modality, seed, colours
  )
  fig.suptitle(title, fontsize=13)
  ax.set_title(_gap_summary(gaps, width=75), fontsize=9.5)
  _projection_legends(fig, modality_handles, class_handles)
  return style.save_figure(fig, path)


def plot_projection_before_after(
  before: Mapping[str, Any],
  after: Mapping[str, Any],
  labels: Mapping[str, Any] | None,
  path: str | Path,
  title: str,
  max_points_per_modality: int = 2000,
  seed: int = 0,
  colours: Mapping[str, str] | None = None,
) -> Path:
  """Two side-by-side projections ("before training" / "after training").

  Each panel has its own PCA (the spaces differ); the panel title gives the
  mean pairwise modality gap so the gap closing is readable at a glance.

  Args:
    before: modality -> [n_m, d_before] float embeddings before training.
    after: modality -> [n_m, d_after] float embeddings after training.
    labels: modality -> [n_m] class labels (shared by both panels), or None.
    path: output PNG path; title: figure title.
  """
  emb_before, lab_before = _prepare_modalities("before", before, labels)
  emb_after, lab_after = _prepare_modalities("after", after, labels)
  fig = style.new_figure((14.0, 6.4))
  axes = fig.subplots(1, 2)
  handles = None
  for ax, emb, lab, name in (
    (axes[0], emb_before, lab_before, "before training"),
    (axes[1], emb_after, lab_after, "after training"),
  ):
    modality_handles, class_handles, gaps = _draw_projection(
      ax, emb, lab, max_points_per_modality, seed, colours
    )
    ax.set_title(f"{name}\n{_gap_summary(gaps, width=60)}", fontsize=11)
    handles = (modality_handles, class_handles)  # legend from the "after" panel
  fig.suptitle(title, fontsize=14)
  _projection_legends(fig, *handles)
  return style.save_figure(fig, path)
