"""Figures for papers: one colour per modality in every figure, zero-shot cells marked, class
names in the legend, 300 dpi and PDF/SVG output."""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from matplotlib.colors import to_hex  # noqa: E402

from graphbridge.evaluation.plots import style as style_lib
from graphbridge.evaluation import report as report_lib
from graphbridge.evaluation import figures as figures_lib

NAMES = ("image", "audio", "text")


def _fake_report() -> report_lib.Report:
  """A report summary with the fields write_plots reads: text paired with both, image<->audio
  not."""
  rng = np.random.default_rng(0)
  rows = []
  for q in NAMES:
    for g in NAMES:
      if q != g:
        hops = 2 if {q, g} == {"image", "audio"} else 1
        rows.append(
          {
            "query": q,
            "gallery": g,
            "level": "class",
            "mAP": float(rng.uniform(0.2, 0.9)),
            "chance_mAP": 0.1,
            "hops": hops,
            "named_route": False,
          }
        )
  recon = [
    {
      "kind": "path",
      "route": f"{a}->text",
      "end": "text",
      "hops": 1,
      "cosine": 0.5,
      "baseline": 0.3,
    }
    for a in ("image", "audio")
  ]
  recon += [
    {
      "kind": "cycle",
      "route": "text->audio->text",
      "end": "text",
      "hops": 2,
      "cosine": 0.4,
      "baseline": 0.3,
    },
    {
      "kind": "path",
      "route": "text->audio",
      "end": "audio",
      "hops": 1,
      "cosine": 0.6,
      "baseline": 0.2,
    },
  ]
  # the projection's modalities in another order than NAMES: colours must still follow NAMES
  after = {m: rng.normal(size=(12, 5)) for m in ("text", "audio", "image")}
  labels = {m: np.asarray(["zero", "one", "two"], dtype=object)[np.arange(12) % 3] for m in after}
  summary = {"split": "test", "rows": rows, "reconstruction": recon}
  projection = {
    "space": "text",
    "routes": {"text": "raw"},
    "after": after,
    "before": None,
    "labels": labels,
  }
  return report_lib.Report(summary, projection)


@pytest.fixture(scope="module")
def figures(tmp_path_factory):
  """write_plots with 300 dpi and PDF, every figure captured before it is cleared."""
  out = str(tmp_path_factory.mktemp("figures"))
  captured = {}
  real_save = style_lib.save_figure

  def capture(fig, path):
    captured[os.path.basename(str(path))] = _inspect(fig)
    return real_save(fig, path)

  style_lib.save_figure = capture
  try:
    written = figures_lib.write_plots(
      _fake_report(), out, "fake", NAMES, dpi=300, formats=("png", "pdf")
    )
  finally:
    style_lib.save_figure = real_save
  return out, written, captured


def _inspect(fig) -> dict:
  """Colours of scatter collections and lines, legend texts, dashed rectangles, texts."""
  from matplotlib.collections import PathCollection
  from matplotlib.patches import Rectangle

  info = {"scatter": [], "lines": [], "legend": [], "dashed": [], "texts": []}
  for ax in fig.axes:
    for c in ax.collections:
      if isinstance(c, PathCollection) and len(c.get_facecolors()):
        info["scatter"].append(to_hex(c.get_facecolors()[0], keep_alpha=False))
    for line in ax.get_lines():
      info["lines"].append((to_hex(line.get_color()), line.get_linestyle()))
    for p in ax.patches:
      if isinstance(p, Rectangle) and p.get_linestyle() == "--":
        info["dashed"].append(
          (round(p.get_x() + p.get_width() / 2), round(p.get_y() + p.get_height() / 2))
        )
    info["texts"] += [t.get_text() for t in ax.texts]
  for legend in fig.legends:
    info["legend"] += [
      (t.get_text(), to_hex(h.get_color()) if hasattr(h, "get_color") else None)
      for t, h in zip(legend.get_texts(), legend.legend_handles)
    ]
  return info


def test_one_colour_per_modality_across_figures(figures):
  _, _, captured = figures
  colours = style_lib.modality_colours(NAMES)
  legend = {t.split(" (n=")[0]: c for t, c in captured["projection.png"]["legend"]}
  for m in NAMES:
    assert legend[m] == colours[m].lower()
  recon_colours = {c for c, style in captured["reconstruction.png"]["lines"] if style == "-"}
  assert recon_colours == {colours["text"].lower(), colours["audio"].lower()}
  recon_legend = dict(captured["reconstruction.png"]["legend"])
  assert recon_legend["into audio: mean cosine"] == colours["audio"].lower()


def test_zero_shot_cells_marked_on_heatmap(figures):
  _, written, captured = figures
  heatmap = captured[written["heatmap_class"]]
  index = {m: i for i, m in enumerate(NAMES)}
  expected = {
    (index["audio"], index["image"]),
    (index["image"], index["audio"]),
  }  # (x=gallery, y=query)
  assert set(heatmap["dashed"]) == expected
  assert heatmap["texts"].count("zero-shot") == 2


def test_class_names_in_projection_legend(figures, tri_modal_dataset):
  _, _, captured = figures
  texts = [t for t, _ in captured["projection.png"]["legend"]]
  assert {"zero", "one", "two"} <= set(texts)
  labels = report_lib._projection_labels(tri_modal_dataset, "test")  # the data's class_names
  assert set(np.unique(np.concatenate(list(labels.values())))) <= {"c0", "c1", "c2", "c3"}


def test_pdf_copies_and_300_dpi(figures):
  out, written, _ = figures
  from PIL import Image

  for name in written.values():
    assert os.path.isfile(os.path.join(out, name))
    assert os.path.isfile(os.path.join(out, os.path.splitext(name)[0] + ".pdf"))
    with open(os.path.join(out, os.path.splitext(name)[0] + ".pdf"), "rb") as f:
      assert f.read(5) == b"%PDF-"
  with Image.open(os.path.join(out, written["heatmap_class"])) as image:
    assert round(image.info["dpi"][0]) == 300


def test_save_options_reject_unknown_formats():
  with pytest.raises(ValueError, match="choose from png, pdf, svg"):
    with style_lib.save_options(formats=("png", "jpg")):
      pass
  assert report_lib._formats("pdf, svg") == ("png", "pdf", "svg")
