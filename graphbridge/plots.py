"""Diagnostic plots for graphbridge experiments.

Every function writes one figure and returns its path as a ``pathlib.Path``;
parent folders are created.  The format follows the path's suffix (.png, .pdf,
.svg); PNGs are 120 dpi unless ``save_options(dpi=300, formats=("png", "pdf"))``
is active, which also writes the extra formats beside each figure.  matplotlib is an optional
dependency: it is imported inside the functions, so ``import graphbridge.plots``
works without it.  Figures are built as standalone
``matplotlib.figure.Figure`` objects on an Agg canvas -- pyplot is never used,
so no GUI backend is touched, nothing is shown, and no figure stays registered
in pyplot's global state after saving.

Colours follow the Okabe-Ito colour-blind-safe palette; ``modality_colours(names)``
gives each modality one colour, passed as ``colours=`` so a modality looks the same
in every figure.
"""

from __future__ import annotations

import contextlib
import contextvars
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from .metrics import _as_embeddings, _l2_normalise, modality_gap

__all__ = [
    "plot_projection",
    "plot_projection_before_after",
    "plot_retrieval_heatmap",
    "plot_reconstruction_by_hops",
    "plot_training_curves",
    "plot_strategy_comparison",
    "modality_colours",
    "save_options",
]

DPI = 120
# Okabe & Ito (2008), ordered so the most distinguishable colours come first.
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#F0E442")
CLASS_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "p")
LINE_STYLES = ("-", "--", ":", "-.")


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def _new_figure(figsize: tuple[float, float]):
    """A pyplot-free figure on an Agg canvas with constrained layout."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


FORMATS = ("png", "pdf", "svg")
# (dpi, extra formats) for the figures saved inside a save_options() block
_SAVE_OPTIONS: contextvars.ContextVar[tuple[int, tuple[str, ...]]] = contextvars.ContextVar(
    "graphbridge_plot_save_options", default=(DPI, ()))


@contextlib.contextmanager
def save_options(dpi: int = DPI, formats: Sequence[str] = ("png",)) -> Iterator[None]:
    """Figures saved inside the block use `dpi` for raster output and are also written in every
    other format of `formats` (e.g. ("png", "pdf"): figure.png and figure.pdf)."""
    formats = tuple(str(f).strip().lower().lstrip(".") for f in formats if str(f).strip())
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ValueError(f"figure formats {list(formats)}: choose from {', '.join(FORMATS)}")
    if int(dpi) <= 0:
        raise ValueError(f"figure dpi must be > 0, got {dpi}")
    token = _SAVE_OPTIONS.set((int(dpi), formats))
    try:
        yield
    finally:
        _SAVE_OPTIONS.reset(token)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dpi, extra = _SAVE_OPTIONS.get()
    fmt = path.suffix[1:].lower() if path.suffix[1:].lower() in FORMATS else "png"
    fig.savefig(path, dpi=dpi, format=fmt, facecolor="white")
    for other in extra:
        if other != fmt:
            fig.savefig(path.with_suffix("." + other), dpi=dpi, format=other, facecolor="white")
    fig.clear()  # release artists; the figure was never registered with pyplot
    return path


def _one_blas_thread():
    """One BLAS thread for a small decomposition where threadpoolctl is installed: on a loaded
    machine a multi-threaded SVD of a few hundred rows waited seconds for its threads (measured
    0.04 s with one thread, 1-5 s with two at load average 5 on 2 cores)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def _colour(i: int) -> str:
    return OKABE_ITO[i % len(OKABE_ITO)]


def modality_colours(names: Sequence[str]) -> dict[str, str]:
    """{modality: colour}, by position in `names` (pass the data set's modality order everywhere)."""
    return {str(n): _colour(i) for i, n in enumerate(names)}


def _check_rows(name: str, rows: Any, required: Sequence[str]) -> list[Mapping[str, Any]]:
    rows = list(rows)
    if not rows:
        raise ValueError(f"{name} is empty; nothing to plot")
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ValueError(f"{name}[{i}] must be a dict; got {type(row).__name__}")
        missing = [key for key in required if key not in row]
        if missing:
            raise ValueError(f"{name}[{i}] is missing key(s) {missing}; every row needs {list(required)}")
    return rows


# ---------------------------------------------------------------------------
# projection
# ---------------------------------------------------------------------------


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
    with _one_blas_thread():
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
    class_marker = {c: CLASS_MARKERS[i % len(CLASS_MARKERS)] for i, c in enumerate(classes)}

    centroids_2d = {}
    modality_handles = []
    colours = {**modality_colours(list(embeddings)), **dict(colours or {})}
    for i, (modality, emb) in enumerate(embeddings.items()):
        colour = colours[modality]
        idx = shown_index[modality]
        points = (emb[idx] - mean) @ basis
        lab = labels[modality]
        if lab is None:
            ax.scatter(points[:, 0], points[:, 1], s=10, color=colour, alpha=0.45, linewidths=0, marker="o")
        else:
            # one scatter per marker (classes beyond len(CLASS_MARKERS) share markers): with many
            # classes, one per class made hundreds of artists, slow to draw and save
            marker_index = np.array([class_index[c] % len(CLASS_MARKERS) for c in lab[idx]], dtype=int)
            for k in np.unique(marker_index):
                sel = marker_index == k
                ax.scatter(
                    points[sel, 0], points[sel, 1], s=14, color=colour, alpha=0.5,
                    linewidths=0, marker=CLASS_MARKERS[k],
                )
        centroid = (emb.mean(axis=0) - mean) @ basis  # all rows, not just the shown ones
        centroids_2d[modality] = centroid
        modality_handles.append(
            Line2D([], [], color=colour, marker="o", linestyle="none", markersize=8,
                   label=f"{modality} (n={emb.shape[0]})")
        )

    # Centroids on top, joined by dashed lines; the full-dimensional gap is
    # written on a line only when the line is long enough to hold the label.
    shown_points = np.concatenate([(embeddings[m][shown_index[m]] - mean) @ basis for m in embeddings])
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
                    f"{gap:.2f}", xy=(mid[0], mid[1]), ha="center", va="center", fontsize=9, zorder=6,
                    bbox=dict(boxstyle="round,pad=0.2", facecolor="white", edgecolor="0.4", alpha=0.9),
                )
    for i, modality in enumerate(modalities):
        c = centroids_2d[modality]
        ax.scatter([c[0]], [c[1]], s=520, marker="*", color="white", linewidths=0, zorder=5)
        ax.scatter([c[0]], [c[1]], s=280, marker="*", color=colours[modality], edgecolors="black",
                   linewidths=1.2, zorder=5)
    modality_handles.append(
        Line2D([], [], color="0.5", marker="*", markeredgecolor="black", linestyle="none",
               markersize=14, label="centroid")
    )
    if len(modalities) <= 4:
        modality_handles.append(Line2D([], [], color="0.25", linestyle="--",
                                       label="centroid distance\n(modality gap)"))

    class_handles = []
    if len(classes):
        for c in classes[: len(CLASS_MARKERS)]:
            class_handles.append(
                Line2D([], [], color="0.35", marker=class_marker[c], linestyle="none", markersize=6, label=str(c))
            )
        if len(classes) > len(CLASS_MARKERS):
            class_handles.append(Line2D([], [], linestyle="none", label=f"(markers repeat;\n{len(classes)} classes)"))

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
        text = (f"modality gap: mean {values.mean():.2f} "
                f"(range {values.min():.2f}-{values.max():.2f}, {values.size} pairs)")
    return textwrap.fill(text, width=width, break_long_words=False)


def _projection_legends(fig, modality_handles, class_handles) -> None:
    legend = fig.legend(handles=modality_handles, title="modality", loc="outside right upper", frameon=False)
    legend.get_title().set_fontweight("bold")
    if class_handles:
        legend = fig.legend(
            handles=class_handles, title="class (marker)", loc="outside right lower", frameon=False,
            ncols=2 if len(class_handles) > 6 else 1, columnspacing=0.8, handletextpad=0.3,
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
      colours: modality -> colour (default: modality_colours of the dict's order).
    """
    if method != "pca":
        raise ValueError(f"method={method!r} is not supported; only 'pca' is available")
    embeddings, labels = _prepare_modalities("embeddings_by_modality", embeddings_by_modality, labels_by_modality)
    fig = _new_figure((8.6, 6.2))
    ax = fig.add_subplot()
    modality_handles, class_handles, gaps = _draw_projection(ax, embeddings, labels, max_points_per_modality, seed,
                                                             colours)
    fig.suptitle(title, fontsize=13)
    ax.set_title(_gap_summary(gaps, width=75), fontsize=9.5)
    _projection_legends(fig, modality_handles, class_handles)
    return _save(fig, path)


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
    fig = _new_figure((14.0, 6.4))
    axes = fig.subplots(1, 2)
    handles = None
    for ax, emb, lab, name in ((axes[0], emb_before, lab_before, "before training"),
                               (axes[1], emb_after, lab_after, "after training")):
        modality_handles, class_handles, gaps = _draw_projection(ax, emb, lab, max_points_per_modality, seed,
                                                                 colours)
        ax.set_title(f"{name}\n{_gap_summary(gaps, width=60)}", fontsize=11)
        handles = (modality_handles, class_handles)  # legend from the "after" panel
    fig.suptitle(title, fontsize=14)
    _projection_legends(fig, *handles)
    return _save(fig, path)


# ---------------------------------------------------------------------------
# retrieval heatmap
# ---------------------------------------------------------------------------


def _format_value(value: float, magnitude: float | None = None) -> str:
    """Format ``value`` with precision chosen by ``magnitude`` (default: |value|)."""
    magnitude = abs(value) if magnitude is None else magnitude
    if magnitude < 10:
        return f"{value:.2f}"
    if magnitude < 1000:
        return f"{value:.1f}"
    return f"{value:.0f}"


def plot_retrieval_heatmap(
    matrix: Any,
    query_names: Sequence[str],
    gallery_names: Sequence[str],
    path: str | Path,
    title: str,
    metric_name: str = "mAP",
    chance: Any | None = None,
    zero_shot: Any | None = None,
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
    """
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    values = np.asarray(matrix, dtype=np.float64)
    if values.ndim != 2 or values.size == 0:
        raise ValueError(f"matrix must be a non-empty 2-D array [n_query, n_gallery]; got shape {values.shape}")
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
            raise ValueError(f"chance has shape {chance_values.shape}, matrix has {values.shape}; they must match")
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
    fig = _new_figure((max(4.8, 1.15 * n_gallery + 0.09 * longest + 2.6), max(3.6, 0.85 * n_query + 1.9)))
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
            ax.text(j, i - (0.1 if has_chance else 0.0), _format_value(v, largest), ha="center", va="center",
                    fontsize=value_size, fontweight="bold", color=text_colour)
            if has_chance:
                ax.text(j, i + 0.22, f"chance {_format_value(chance_values[i, j], largest)}", ha="center",
                        va="center", fontsize=value_size - 4, color=text_colour)
    ax.set_xticks(range(n_gallery), [str(n) for n in gallery_names],
                  rotation=30 if max(len(str(n)) for n in gallery_names) > 6 else 0, ha="right"
                  if max(len(str(n)) for n in gallery_names) > 6 else "center")
    ax.set_yticks(range(n_query), [str(n) for n in query_names])
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
            raise ValueError(f"zero_shot has shape {zero_shot.shape}, matrix has {values.shape}; they must match")
        for i, j in zip(*np.nonzero(zero_shot)):
            ax.add_patch(Rectangle((j - 0.46, i - 0.46), 0.92, 0.92, fill=False, edgecolor="#D55E00",
                                   linestyle="--", linewidth=2.2, zorder=4))
            ax.text(j, i - 0.36, "zero-shot", ha="center", va="center", fontsize=value_size - 4,
                    color="#D55E00", fontweight="bold", zorder=5,
                    bbox=dict(boxstyle="round,pad=0.1", facecolor="white", edgecolor="none", alpha=0.8))
    colourbar = fig.colorbar(image, ax=ax, shrink=0.9)
    colourbar.set_label(metric_name)
    ax.set_title(title, fontsize=13)
    return _save(fig, path)


# ---------------------------------------------------------------------------
# reconstruction by hops
# ---------------------------------------------------------------------------


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
      colours: kind -> colour (e.g. {"into audio": modality_colours(names)["audio"]}); default by order.
    """
    from matplotlib.lines import Line2D

    rows = _check_rows("rows", rows, ("hops", "cosine", "baseline", "kind"))
    kinds = []
    for row in rows:
        if row["kind"] not in kinds:
            kinds.append(row["kind"])
    kinds.sort(key=lambda k: ({"path": 0, "cycle": 1}.get(k, 2), str(k)))
    rng = np.random.default_rng(seed)
    fig = _new_figure((10.5, 5.0))  # room for the legend beside the axes
    ax = fig.add_subplot()
    handles = []
    all_hops = set()
    offsets = np.linspace(-0.12, 0.12, len(kinds)) if len(kinds) > 1 else [0.0]
    for i, kind in enumerate(kinds):
        colour = (colours or {}).get(kind) or _colour(i)
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
            mean_base = np.array([
                np.nanmean(baseline[hops == h]) if np.isfinite(baseline[hops == h]).any() else np.nan
                for h in unique_hops
            ])
        ax.plot(unique_hops, mean_cos, color=colour, linewidth=2.2, marker="o", markersize=6, zorder=3)
        ax.plot(unique_hops, mean_base, color=colour, linewidth=1.6, linestyle="--", zorder=3)
        handles.append(Line2D([], [], color=colour, linewidth=2.2, marker="o", label=f"{kind}: mean cosine"))
        handles.append(Line2D([], [], color=colour, linewidth=1.6, linestyle="--",
                              label=f"{kind}: mean-predictor baseline"))
    handles.append(Line2D([], [], color="0.4", marker="o", linestyle="none", alpha=0.5, markersize=5,
                          label="individual paths (jittered)"))
    ax.set_xticks(sorted(all_hops))
    ax.set_xlabel("number of hops (translators applied)")
    ax.set_ylabel("reconstruction cosine similarity")
    ax.grid(True, color="0.9", linewidth=0.8)
    ax.set_axisbelow(True)
    fig.legend(handles=handles, loc="outside right center", fontsize=9, frameon=False)  # never over the data
    fig.suptitle(title, fontsize=13)
    return _save(fig, path)


# ---------------------------------------------------------------------------
# training curves
# ---------------------------------------------------------------------------


def plot_training_curves(metrics_rows: Sequence[Mapping[str, Any]], path: str | Path, title: str) -> Path:
    """Loss curves: ``loss/total`` in the left panel, every other ``loss/...`` term on the right.

    A panel uses a log y-axis (plain-number tick labels) when all its finite
    values are positive.  Rows missing a key (or holding NaN/inf for it) are
    skipped for that curve, so terms logged less often still draw as lines.  With more than 6 terms the
    legend moves outside the axes.

    Args:
      metrics_rows: dicts such as ``{"step": 10, "loss/total": 0.5,
        "loss/edge_cos/image->text": 0.3, ...}``; ``step`` defaults to the row
        index when absent.
      path: output PNG path; title: figure title.
    """
    rows = _check_rows("metrics_rows", metrics_rows, ())
    loss_keys: list[str] = []
    for row in rows:
        for key in row:
            if isinstance(key, str) and key.startswith("loss/") and key not in loss_keys:
                loss_keys.append(key)
    if not loss_keys:
        raise ValueError("metrics_rows has no key starting with 'loss/'; nothing to plot")
    steps = np.array([float(row.get("step", i)) for i, row in enumerate(rows)])
    order = np.argsort(steps, kind="stable")
    steps = steps[order]

    def series(key: str) -> np.ndarray:
        out = np.array([float(rows[i].get(key, np.nan)) if rows[i].get(key) is not None else np.nan
                        for i in order])
        out[~np.isfinite(out)] = np.nan
        return out

    def set_scale(ax, curves: list[np.ndarray]) -> None:
        finite = np.concatenate([c[np.isfinite(c)] for c in curves]) if curves else np.array([])
        # log only where curves span a real range: under a factor 5 a log axis has no labelled ticks
        if finite.size and finite.min() > 0 and finite.max() / finite.min() > 5:
            from matplotlib.ticker import FuncFormatter, NullFormatter

            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            if np.log10(finite.max() / finite.min()) < 1.5:  # few decades: label 2x and 5x too
                ax.yaxis.set_minor_formatter(FuncFormatter(
                    lambda v, _: f"{v:g}" if round(v / 10 ** np.floor(np.log10(v)), 6) in (2.0, 5.0) else ""
                ))
            else:
                ax.yaxis.set_minor_formatter(NullFormatter())

    term_keys = [k for k in loss_keys if k != "loss/total"]
    many = len(term_keys) > 6
    fig = _new_figure((13.0 if many else 12.0, 4.8))
    ax_total, ax_terms = fig.subplots(1, 2)

    if "loss/total" in loss_keys:
        total = series("loss/total")
        logged = np.isfinite(total)
        ax_total.plot(steps[logged], total[logged], color=_colour(0), linewidth=1.8,
                      marker="." if logged.sum() < 40 else None)
        set_scale(ax_total, [total])
    else:
        ax_total.text(0.5, 0.5, "loss/total not logged", ha="center", va="center",
                      transform=ax_total.transAxes, color="0.4")
    ax_total.set_title("total loss")
    ax_total.set_xlabel("step")
    ax_total.set_ylabel("loss")

    curves = []
    for i, key in enumerate(term_keys):
        curve = series(key)
        curves.append(curve)
        logged = np.isfinite(curve)  # terms logged less often than others still draw as lines
        ax_terms.plot(steps[logged], curve[logged], color=_colour(i % len(OKABE_ITO)),
                      linestyle=LINE_STYLES[(i // len(OKABE_ITO)) % len(LINE_STYLES)],
                      linewidth=1.5, label=key[len("loss/"):],
                      marker="." if logged.sum() < 40 else None)
    if term_keys:
        set_scale(ax_terms, curves)
        if many:
            fig.legend(handles=ax_terms.get_lines(), loc="outside right upper", fontsize=8,
                       title="term", frameon=False, ncols=1 if len(term_keys) <= 24 else 2)
        else:
            ax_terms.legend(fontsize=8, title="term", framealpha=0.9)
    else:
        ax_terms.text(0.5, 0.5, "no per-term losses logged", ha="center", va="center",
                      transform=ax_terms.transAxes, color="0.4")
    ax_terms.set_title("loss terms")
    ax_terms.set_xlabel("step")
    ax_terms.set_ylabel("loss")
    for ax in (ax_total, ax_terms):
        ax.grid(True, which="major", color="0.9", linewidth=0.8)
        ax.set_axisbelow(True)
    fig.suptitle(title, fontsize=13)
    return _save(fig, path)


# ---------------------------------------------------------------------------
# strategy comparison
# ---------------------------------------------------------------------------


def plot_strategy_comparison(
    rows: Sequence[Mapping[str, Any]],
    path: str | Path,
    title: str,
    metric: str = "mAP",
) -> Path:
    """Grouped bar chart: one group per modality pair, one bar per strategy.

    Error bars show ``std``; if any row of a pair has ``chance``, a dashed
    black line marks it across that pair's group.

    Args:
      rows: dicts with ``strategy`` (str), ``pair`` (e.g. "image->audio"),
        ``mean`` (float), ``std`` (float, optional: no error bar if absent) and
        optionally ``chance`` (float).
      path: output PNG path; title: figure title; metric: y-axis label.
    """
    from matplotlib.lines import Line2D

    rows = _check_rows("rows", rows, ("strategy", "pair", "mean"))
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
    fig = _new_figure((max(6.5, 0.55 * n_pairs * max(n_strategies, 2) + 3.0), 5.0))
    ax = fig.add_subplot()
    centres = np.arange(n_pairs)
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
        # past the palette's length colours repeat: a hatch keeps the bars apart
        hatch = ("", "///", "...", "xxx")[(s // len(OKABE_ITO)) % 4]
        ax.bar(xs, means, width=bar_width * 0.92, yerr=stds, capsize=3, color=_colour(s), hatch=hatch,
               edgecolor="white", linewidth=0.5, label=strategy, error_kw=dict(elinewidth=1.1, ecolor="0.2"))
    has_chance = False
    for p, pair in enumerate(pairs):
        chances = [float(table[(s, pair)]["chance"]) for s in strategies
                   if (s, pair) in table and table[(s, pair)].get("chance") is not None]
        chances = [c for c in chances if np.isfinite(c)]
        if chances:
            has_chance = True
            ax.hlines(np.mean(chances), centres[p] - group_width / 2 - 0.04, centres[p] + group_width / 2 + 0.04,
                      colors="black", linestyles="--", linewidth=1.4, zorder=5)
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
    ax.set_title(title, fontsize=13)
    return _save(fig, path)
