"""Text labels that never overlap each other nor the markers they annotate.

Each label is measured on the drawn figure, then takes the first free spot on rings of growing
radius around its anchor (its anchor itself first when it asks for it), greedily in the order
given; a label moved off its anchor gets a thin leader line back to it. The figure's layout is
frozen after measuring, so the spots found in pixels stay valid when the figure is saved (at any
dpi: offsets are in points).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

LABEL_GID = "placed-label"  # gid of every label placed here (tests find them by it)


@dataclasses.dataclass
class Label:
  """text at data point `anchor` of `ax`; centred: try the anchor itself before the rings;
  clearance: pixels kept free around `anchor` (e.g. a marker's radius) for the first ring."""

  ax: Any
  text: str
  anchor: tuple[float, float]
  centred: bool = False
  clearance: float = 0.0
  style: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def marker_box(ax, point: tuple[float, float], size: float) -> tuple[float, float, float, float]:
  """Pixel box (x0, y0, x1, y1) of a scatter marker of area `size` (points^2) at data `point`."""
  x, y = ax.transData.transform(point)
  r = math.sqrt(size) / 2 * ax.figure.dpi / 72
  return (x - r, y - r, x + r, y + r)


def _overlaps(a, b, margin: float = 2.0) -> bool:
  return not (
    a[2] + margin <= b[0] or b[2] + margin <= a[0] or a[3] + margin <= b[1] or b[3] + margin <= a[1]
  )


def _crosses(p1, p2, q1, q2) -> bool:
  """Whether segments p1-p2 and q1-q2 cross (proper intersection; shared ends do not count)."""

  def side(a, b, c):
    return (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])

  d1, d2 = side(q1, q2, p1), side(q1, q2, p2)
  d3, d4 = side(p1, p2, q1), side(p1, p2, q2)
  return d1 * d2 < 0 and d3 * d4 < 0


def _confusable(p1, p2, q1, q2, near: float = 12.0) -> bool:
  """Leaders that cross, or that start close together along one line (two such leaders read as
  one line joining both labels)."""
  if _crosses(p1, p2, q1, q2):
    return True
  if math.dist(p1, q1) > near:
    return False
  u, v = (p2[0] - p1[0], p2[1] - p1[1]), (q2[0] - q1[0], q2[1] - q1[1])
  norm = math.hypot(*u) * math.hypot(*v)
  return norm > 0 and abs(u[0] * v[0] + u[1] * v[1]) / norm > 0.9


def _inside(box, frame) -> bool:
  return box[0] >= frame[0] and box[1] >= frame[1] and box[2] <= frame[2] and box[3] <= frame[3]


def place_labels(fig, labels: Sequence[Label], markers: Sequence[tuple] = (), rings: int = 14):
  """Draw every label where it overlaps no other label and no marker ((ax, data point, area in
  points^2) each, e.g. the centroid stars); returns the annotations. Call it after everything else
  of the figure (titles, legends) is added: it draws the figure once and freezes its layout."""
  from matplotlib.text import Text

  fig.canvas.draw()
  fig.set_layout_engine("none")  # the axes stay where the measurement found them
  renderer = fig.canvas.get_renderer()
  scale = 72.0 / fig.dpi  # pixels -> points
  placed: list[tuple] = []
  leaders: list[tuple] = []  # (anchor, label centre) in pixels
  blocked = [marker_box(ax, point, size) for ax, point, size in markers]  # after the layout
  annotations = []
  for label in labels:
    ax = label.ax
    style = {"fontsize": 9, "zorder": 7, **label.style}
    bbox = style.pop(
      "bbox", dict(boxstyle="round,pad=0.25", facecolor="white", edgecolor="0.4", alpha=0.92)
    )
    annotation = ax.annotate(
      label.text,
      xy=label.anchor,
      xytext=(0, 0),
      textcoords="offset points",
      ha="center",
      va="center",
      bbox=bbox,
      annotation_clip=False,
      gid=LABEL_GID,
      arrowprops=dict(
        arrowstyle="-", color="0.35", linewidth=0.8, shrinkA=0, shrinkB=label.clearance * scale
      ),
      **style,
    )
    annotation.set_in_layout(False)
    extent = Text.get_window_extent(annotation, renderer)  # the text; its round box adds a pad
    pad = 0.25 * style["fontsize"] / scale + 1.0
    half_w, half_h = extent.width / 2 + pad, extent.height / 2 + pad
    x, y = ax.transData.transform(label.anchor)
    frame = tuple(ax.get_window_extent(renderer).extents)
    whole = (0.0, 0.0, fig.bbox.width, fig.bbox.height)
    candidates = [(0.0, 0.0)] if label.centred else []
    step = 0.9 * 2 * half_h
    for ring in range(rings):
      for k in range(16):
        angle = math.radians(45 + 22.5 * k)
        reach = label.clearance + 3.0 + ring * step
        candidates.append((math.cos(angle) * (half_w + reach), math.sin(angle) * (half_h + reach)))
    best, best_cost = None, math.inf
    for dx, dy in candidates:
      box = (x + dx - half_w, y + dy - half_h, x + dx + half_w, y + dy + half_h)
      hits = sum(_overlaps(box, other) for other in placed + blocked)
      crossings = sum(_confusable((x, y), (x + dx, y + dy), *other) for other in leaders)
      # free and inside the axes, else free and inside the figure, else the least crowded spot;
      # a leader crossing another costs more than leaving the axes
      cost = (
        hits * 10 + 2 * crossings + (0 if _inside(box, frame) else 1 if _inside(box, whole) else 5)
      )
      if cost < best_cost:
        best, best_cost = (dx, dy, box), cost
      if cost == 0:
        break
    dx, dy, box = best
    annotation.xyann = (dx * scale, dy * scale)
    if math.hypot(dx, dy) < 1.0 and annotation.arrow_patch is not None:
      annotation.arrow_patch.set_visible(False)
    placed.append(box)
    leaders.append(((x, y), (x + dx, y + dy)))
    annotations.append(annotation)
  return annotations
