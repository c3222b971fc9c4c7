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

Colours follow the Okabe-Ito colour-blind-safe palette. ``modality_colours(names)`` gives each
modality a colour chosen by its NAME (common names fixed, others hashed), so a modality looks
the same in every figure and every run, whatever its position in the data file. Titles are
wrapped at spaces only (``wrap``): never inside a name such as "audio-text" or "image->text".
"""

from __future__ import annotations

import contextlib
import contextvars
import re
import textwrap
import zlib
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


# Colours for named things (modalities, strategies): Okabe-Ito without yellow (faint on white) and
# black (the colour of outlines and chance lines) first, then six of Paul Tol's darker colours.
NAME_PALETTE = OKABE_ITO[:6] + ("#882255", "#999933", "#332288", "#8C564B", "#7F7F7F", "#000000")
HASHED_SLOTS = 6  # a name outside the fixed table hashes into the Okabe-Ito part of NAME_PALETTE

MODALITY_COLOURS = {
  "image": "#0072B2",
  "audio": "#E69F00",
  "text": "#009E73",
  "video": "#D55E00",
  "depth": "#CC79A7",
  "imu": "#56B4E9",
}
STRATEGY_COLOURS = {
  "graph": "#0072B2",
  "pivot": "#E69F00",
  "pairwise": "#009E73",
  "cmcr": "#D55E00",
  "dmvae": "#CC79A7",
  "dmvae-translate": "#56B4E9",
  "linear-ridge": "#7F7F7F",
  "linear-cca": "#332288",
}


def name_colours(names: Sequence[str], fixed: Mapping[str, str] | None = None) -> dict[str, str]:
  """{name: colour} for a set of names; the same set gives the same colours in any order.

  A name in `fixed` (lower-cased) takes its colour. Any other name starts at the palette slot its
  CRC-32 picks (stable across runs and processes, unlike hash()) and, when a name of the set
  already holds that colour, takes the next free one; names are served in sorted order, so the
  result depends on the set, never on the order. Past len(NAME_PALETTE) names, colours repeat."""
  fixed = fixed or {}
  unique = sorted({str(n) for n in names})
  out = {n: fixed[n.lower()] for n in unique if n.lower() in fixed}
  taken = set(out.values())
  size = len(NAME_PALETTE)
  for n in unique:
    if n in out:
      continue
    start = zlib.crc32(n.encode("utf-8")) % HASHED_SLOTS
    ring = [NAME_PALETTE[(start + k) % size] for k in range(size)]
    out[n] = next((c for c in ring if c not in taken), ring[len(taken) % size])
    taken.add(out[n])
  return {str(n): out[str(n)] for n in names}


def modality_colours(names: Sequence[str]) -> dict[str, str]:
  """{modality: colour} by name (MODALITY_COLOURS, else hashed; see name_colours): text is green
  in every figure of every run. Pass the data set's names once and reuse the dict per figure."""
  return name_colours(names, MODALITY_COLOURS)


def strategy_colours(names: Sequence[str]) -> dict[str, str]:
  """{strategy family: colour} by name (STRATEGY_COLOURS, else hashed; see name_colours)."""
  return name_colours(names, STRATEGY_COLOURS)


def wrap(text: str, width: int) -> str:
  """`text` in lines of at most `width` characters (longer single words stay whole), broken at
  spaces only: never after the hyphen of "audio-text" nor inside a route "image->text<-audio";
  line breaks already in `text` are kept."""
  return "\n".join(
    textwrap.fill(line, width, break_on_hyphens=False, break_long_words=False) or line
    for line in str(text).split("\n")
  )


def title_width(width_inches: float, fontsize: float) -> int:
  """Characters of a `fontsize` title that fit `width_inches` (DejaVu Sans: ~0.55 em a glyph)."""
  return max(16, int(width_inches * 72 / (0.56 * fontsize)))


def natural_key(value: Any) -> tuple:
  """Sort key: numbers by value, strings with their digit runs as numbers ("c2" before "c10")."""
  if isinstance(value, (int, float)) or hasattr(value, "dtype"):
    try:
      return (0, float(value), "")
    except (TypeError, ValueError):
      pass
  parts = re.split(r"(\d+)", str(value))
  return (1, 0.0, tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts if p))


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
