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


DPI = 120


# Okabe & Ito (2008), ordered so the most distinguishable colours come first.
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#F0E442")


CLASS_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "p")


LINE_STYLES = ("-", "--", ":", "-.")


def new_figure(figsize: tuple[float, float]):
  """A pyplot-free figure on an Agg canvas with constrained layout."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=figsize, dpi=DPI, layout="constrained")
  FigureCanvasAgg(fig)
  return fig


FORMATS = ("png", "pdf", "svg")


# (dpi, extra formats) for the figures saved inside a save_options() block
_SAVE_OPTIONS: contextvars.ContextVar[tuple[int, tuple[str, ...]]] = contextvars.ContextVar(
  "graphbridge_plot_save_options", default=(DPI, ())
)


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


def save_figure(fig, path: str | Path) -> Path:
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


def one_blas_thread():
  """One BLAS thread for a small decomposition where threadpoolctl is installed: on a loaded
  machine a multi-threaded SVD of a few hundred rows waited seconds for its threads (measured
  0.04 s with one thread, 1-5 s with two at load average 5 on 2 cores)."""
  try:
    from threadpoolctl import threadpool_limits
  except ImportError:
    return contextlib.nullcontext()
  return threadpool_limits(1, user_api="blas")


def palette_colour(i: int) -> str:
  return OKABE_ITO[i % len(OKABE_ITO)]


def modality_colours(names: Sequence[str]) -> dict[str, str]:
  """{modality: colour}, by position in `names` (pass the data set's modality order everywhere)."""
  return {str(n): palette_colour(i) for i, n in enumerate(names)}


def check_rows(name: str, rows: Any, required: Sequence[str]) -> list[Mapping[str, Any]]:
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


def format_value(value: float, magnitude: float | None = None) -> str:
  """Format ``value`` with precision chosen by ``magnitude`` (default: |value|)."""
  magnitude = abs(value) if magnitude is None else magnitude
  if magnitude < 10:
    return f"{value:.2f}"
  if magnitude < 1000:
    return f"{value:.1f}"
  return f"{value:.0f}"
