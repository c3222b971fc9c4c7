"""The common-space picture: every modality projected to 2-D, before and after training."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence
import numpy as np
from graphbridge.evaluation.geometry import modality_gap
from graphbridge.evaluation.metrics import _as_embeddings
from graphbridge.evaluation.ranks import _l2_normalise
from graphbridge.evaluation.plots import labels as labels_lib
from graphbridge.evaluation.plots import style

STAR_SIZE = 520  # area (points^2) of a centroid star with its white halo


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
  class_names: Sequence[str] | None = None,
) -> tuple[list, list, dict[tuple[str, str], float], list, list]:
  """Scatter the 2-D PCA of the unit-normalised rows on ``ax``.

  Returns (modality legend handles, class legend handles, gaps by pair, the centroid and gap
  labels to place, the stars' pixel boxes); labels_lib.place_labels draws the labels once the
  figure is complete.
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
  classes = class_order(np.concatenate(all_classes), class_names) if all_classes else []
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

  # Centroids on top, joined by dashed lines labelled with the full-dimensional gap; every label
  # (names at the stars, gaps at the lines' middles) is placed later where it overlaps nothing.
  gaps: dict[tuple[str, str], float] = {}
  to_place = []
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
      mid = (ca + cb) / 2
      to_place.append(
        labels_lib.Label(ax, f"{gap:.2f}", (float(mid[0]), float(mid[1])), centred=True)
      )
  names_at_stars = []
  for i, modality in enumerate(modalities):
    c = centroids_2d[modality]
    names_at_stars.append(
      labels_lib.Label(
        ax,
        str(modality),
        (float(c[0]), float(c[1])),
        clearance=np.sqrt(STAR_SIZE) / 2 * ax.figure.dpi / 72,
        style=dict(
          fontsize=8.5,
          color="black",
          bbox=dict(
            boxstyle="round,pad=0.25",
            facecolor="white",
            edgecolor=colours[modality],
            linewidth=1.4,
            alpha=0.92,
          ),
        ),
      )
    )
    ax.scatter([c[0]], [c[1]], s=STAR_SIZE, marker="*", color="white", linewidths=0, zorder=5)
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
  stars = [(ax, tuple(centroids_2d[m])) for m in modalities]
  return modality_handles, class_handles, gaps, names_at_stars + to_place, stars


def class_order(values: np.ndarray, class_names: Sequence[str] | None = None) -> list:
  """The distinct labels in label order: by their index in `class_names` (the data's names, whose
  position is the numeric label: "zero", "one", ..., never alphabetical), then any others in
  natural order (numbers by value, "c2" before "c10")."""
  distinct = list(dict.fromkeys(np.asarray(values).tolist()))
  rank = {str(c): i for i, c in enumerate(class_names or ())}
  return sorted(
    distinct,
    key=lambda c: (0, rank[str(c)], ()) if str(c) in rank else (1, 0, style.natural_key(c)),
  )


def _place(fig, to_place: list, stars: list) -> None:
  """Every centroid and gap label of the figure, overlapping no other label and no star."""
  labels_lib.place_labels(fig, to_place, [(ax, point, STAR_SIZE) for ax, point in stars])


def _gap_summary(gaps: dict[tuple[str, str], float], width: int = 70) -> str:
  """Every pairwise gap (or their mean and range when there are many), wrapped to ``width`` at
  spaces only (a pair "audio-text" stays on one line)."""
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
  return style.wrap(text, width)


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
  class_names: Sequence[str] | None = None,
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
    colours: modality -> colour (default: style.modality_colours, by name).
    class_names: the data's class names in label order (the class legend follows it).
  """
  if method != "pca":
    raise ValueError(f"method={method!r} is not supported; only 'pca' is available")
  embeddings, labels = _prepare_modalities(
    "embeddings_by_modality", embeddings_by_modality, labels_by_modality
  )
  fig = style.new_figure((8.6, 6.2))
  ax = fig.add_subplot()
  modality_handles, class_handles, gaps, to_place, stars = _draw_projection(
    ax, embeddings, labels, max_points_per_modality, seed, colours, class_names
  )
  fig.suptitle(style.wrap(title, style.title_width(8.6, 13)), fontsize=13)
  ax.set_title(_gap_summary(gaps, width=style.title_width(6.0, 9.5)), fontsize=9.5)
  _projection_legends(fig, modality_handles, class_handles)
  _place(fig, to_place, stars)
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
  class_names: Sequence[str] | None = None,
) -> Path:
  """Two side-by-side projections ("before training" / "after training").

  Each panel has its own PCA (the spaces differ); the panel title gives the
  mean pairwise modality gap so the gap closing is readable at a glance.

  Args:
    before: modality -> [n_m, d_before] float embeddings before training.
    after: modality -> [n_m, d_after] float embeddings after training.
    labels: modality -> [n_m] class labels (shared by both panels), or None.
    path: output PNG path; title: figure title.
    colours: modality -> colour (default: style.modality_colours, by name).
    class_names: the data's class names in label order (the class legend follows it).
  """
  emb_before, lab_before = _prepare_modalities("before", before, labels)
  emb_after, lab_after = _prepare_modalities("after", after, labels)
  fig = style.new_figure((14.0, 6.4))
  axes = fig.subplots(1, 2)
  handles = None
  to_place, stars = [], []
  for ax, emb, lab, name in (
    (axes[0], emb_before, lab_before, "before training"),
    (axes[1], emb_after, lab_after, "after training"),
  ):
    modality_handles, class_handles, gaps, panel_labels, panel_stars = _draw_projection(
      ax, emb, lab, max_points_per_modality, seed, colours, class_names
    )
    to_place += panel_labels
    stars += panel_stars
    ax.set_title(f"{name}\n{_gap_summary(gaps, width=style.title_width(5.2, 11))}", fontsize=11)
    handles = (modality_handles, class_handles)  # legend from the "after" panel
  fig.suptitle(style.wrap(title, style.title_width(14.0, 14)), fontsize=14)
  _projection_legends(fig, *handles)
  _place(fig, to_place, stars)
  return style.save_figure(fig, path)
