"""Figures for papers: one colour per modality name in every figure and run, zero-shot cells
marked, class names in label order, titles broken at spaces only, centroid and gap labels that
never overlap, training curves with lr, validation, the kept step and every round, 300 dpi and
PDF/SVG output."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from matplotlib.colors import to_hex  # noqa: E402

from graphbridge.evaluation.plots import labels as labels_lib
from graphbridge.evaluation.plots import projection as projection_lib
from graphbridge.evaluation.plots import style as style_lib
from graphbridge.evaluation import report as report_lib
from graphbridge.evaluation import figures as figures_lib

NAMES = ("image", "audio", "text")
CLASS_NAMES = ("zero", "one", "two", "three", "four", "five")  # alphabetical: five, four, one, ...


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
  # the projection's modalities in another order than NAMES: colours follow the names
  after = {m: rng.normal(size=(12, 5)) for m in ("text", "audio", "image")}
  after["audio"] += 0.02 * after["image"].mean(0)  # two centroids close: their labels collide
  labels = {m: np.asarray(CLASS_NAMES, dtype=object)[np.arange(12) % 6] for m in after}
  summary = {"split": "test", "rows": rows, "reconstruction": recon, "kept_step": 30}
  projection = {
    "space": "text",
    "routes": {"text": "raw"},
    "after": after,
    "before": None,
    "labels": labels,
    "class_names": CLASS_NAMES,
  }
  return report_lib.Report(summary, projection)


def _metrics_rows() -> list[dict]:
  """Three rounds of self-training (as reporting.training_rows tags them), each with lr and
  validation every 10 steps; the best validated step of the final round is 30."""
  rows = []
  for r in range(3):
    best = (20, 40, 30)[r]
    for step in range(5, 55, 5):
      row = {
        "round": r,
        "step": step,
        "loss/total": 2.0 / step + r,
        "loss/edge_cos": 1.0 / step,
        "loss/edge_cos/image->text": 1.0 / step,  # per edge: not drawn
        "lr": 1e-3 * min(1.0, step / 20),
      }
      if step % 10 == 0:
        row["val/mAP"] = 0.5 + 0.01 * step
        row["val/mAP/image->audio"] = 0.4 + 0.01 * step
        row["val/mAP/audio->text"] = 0.6
        row["val/best_step"] = float(min(step, best))
      rows.append(row)
  return rows


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
      _fake_report(),
      out,
      "fake",
      NAMES,
      metrics_rows=_metrics_rows(),
      dpi=300,
      formats=("png", "pdf"),
    )
  finally:
    style_lib.save_figure = real_save
  return out, written, captured


def _inspect(fig) -> dict:
  """Colours of scatter collections and lines, legend texts, dashed rectangles, texts, tick label
  colours, titles, per-axes line labels and kept-step lines; after drawing: the pixel boxes of
  the placed labels and of the centroid stars."""
  from matplotlib.collections import PathCollection
  from matplotlib.patches import Rectangle

  fig.canvas.draw()
  renderer = fig.canvas.get_renderer()
  info = {"scatter": [], "lines": [], "legend": [], "dashed": [], "texts": [], "ticks": {}}
  info.update(titles=[], axes=[], label_boxes=[], star_boxes=[])
  info["suptitle"] = fig._suptitle.get_text() if fig._suptitle else ""
  for ax in fig.axes:
    info["titles"].append(ax.get_title())
    info["axes"].append(
      {
        "title": ax.get_title(),
        "lines": {ln.get_label(): to_hex(ln.get_color()) for ln in ax.get_lines()},
        "kept": sorted(ln.get_xdata()[0] for ln in ax.get_lines() if ln.get_gid() == "kept-step"),
      }
    )
    for tick in (*ax.get_xticklabels(), *ax.get_yticklabels()):
      info["ticks"][tick.get_text()] = to_hex(tick.get_color())
    for c in ax.collections:
      if isinstance(c, PathCollection) and len(c.get_facecolors()):
        info["scatter"].append(to_hex(c.get_facecolors()[0], keep_alpha=False))
      if isinstance(c, PathCollection) and list(c.get_sizes()) == [projection_lib.STAR_SIZE]:
        (point,) = c.get_offsets()
        info["star_boxes"].append(labels_lib.marker_box(ax, tuple(point), projection_lib.STAR_SIZE))
    for t in ax.texts:
      if t.get_gid() == labels_lib.LABEL_GID:
        info["label_boxes"].append((t.get_text(), t.get_bbox_patch().get_window_extent(renderer)))
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
  colours = {m: c.lower() for m, c in style_lib.modality_colours(NAMES).items()}
  assert colours == {"image": "#0072b2", "audio": "#e69f00", "text": "#009e73"}  # by name
  legend = {t.split(" (n=")[0]: c for t, c in captured["projection.png"]["legend"]}
  for m in NAMES:
    assert legend[m] == colours[m]
  recon_colours = {c for c, style in captured["reconstruction.png"]["lines"] if style == "-"}
  assert recon_colours == {colours["text"], colours["audio"]}
  recon_legend = dict(captured["reconstruction.png"]["legend"])
  assert recon_legend["into audio: mean cosine"] == colours["audio"]
  heatmap = captured["retrieval_class.png"]["ticks"]
  assert {m: heatmap[m] for m in NAMES} == colours
  validation = captured["training_curves.png"]["axes"][2]["lines"]  # a pair: its query's colour
  assert validation["image->audio"] == colours["image"]
  assert validation["audio->text"] == colours["audio"]


def test_colour_follows_the_name_not_the_position(tmp_path):
  """The same modalities in another order in the file (another run) keep their colours; any name
  gets a colour stable across processes (not Python's salted hash), one per name in a set."""
  first = style_lib.modality_colours(["image", "audio", "text", "lidar", "m0", "m1"])
  second = style_lib.modality_colours(["m1", "text", "lidar", "m0", "audio", "image"])
  assert first == second
  assert len(set(first.values())) == 6  # collisions resolved inside the set
  assert style_lib.modality_colours(["text", "m7"])["text"] == first["text"]
  many = [f"view{i}" for i in range(len(style_lib.NAME_PALETTE))]
  assert len(set(style_lib.modality_colours(many).values())) == len(many)
  code = (
    "from graphbridge.evaluation.plots import style; "
    "print(style.modality_colours(['lidar', 'thermal', 'm0', 'm1', 'm2']))"
  )
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  seen = {
    subprocess.run(
      [sys.executable, "-c", code],
      capture_output=True,
      text=True,
      cwd=root,
      env={**os.environ, "PYTHONPATH": root, "PYTHONHASHSEED": seed},
      check=True,
    ).stdout
    for seed in ("1", "2")
  }
  assert len(seen) == 1
  # a whole report drawn with the data's modalities in another order: the same colours
  out = tmp_path / "reordered"
  captured = {}
  real_save = style_lib.save_figure

  def capture(fig, path):
    captured[os.path.basename(str(path))] = _inspect(fig)
    return real_save(fig, path)

  style_lib.save_figure = capture
  try:
    figures_lib.write_plots(_fake_report(), str(out), "fake", NAMES[::-1])
  finally:
    style_lib.save_figure = real_save
  legend = {t.split(" (n=")[0]: c for t, c in captured["projection.png"]["legend"]}
  assert {m: legend[m] for m in NAMES} == {
    m: c.lower() for m, c in style_lib.modality_colours(NAMES).items()
  }


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


def test_class_names_in_label_order(figures, tri_modal_dataset):
  _, _, captured = figures
  texts = [t for t, _ in captured["projection.png"]["legend"]]
  assert [t for t in texts if t in CLASS_NAMES] == list(CLASS_NAMES)  # zero, one, ..., not five
  labels = report_lib._projection_labels(tri_modal_dataset, "test")  # the data's class_names
  assert set(np.unique(np.concatenate(list(labels.values())))) <= {"c0", "c1", "c2", "c3"}
  order = projection_lib.class_order
  assert order(np.array(["c10", "c2", "c1", "c2"])) == ["c1", "c2", "c10"]
  assert order(np.array([10, 2, 1])) == [1, 2, 10]
  assert order(np.array(["two", "zero", "six"]), ("zero", "one", "two")) == ["zero", "two", "six"]


def test_titles_break_at_spaces_only(tmp_path):
  """Hyphenated names and routes stay whole in wrapped titles (no "audio-" / "text")."""
  rng = np.random.default_rng(5)
  names = ("speech-audio", "caption-text", "photo-image")
  emb = {m: rng.normal(size=(20, 4)) for m in names}
  captured = {}
  real_save = style_lib.save_figure
  style_lib.save_figure = lambda fig, path: captured.setdefault("fig", _inspect(fig))
  try:
    projection_lib.plot_projection(
      emb, None, tmp_path / "p.png", "a title naming image->text<-audio and audio-text " * 3
    )
  finally:
    style_lib.save_figure = real_save
  gap_title, title = captured["fig"]["titles"][0], captured["fig"]["suptitle"]
  assert "\n" in gap_title and "\n" in title  # long enough to wrap
  for line in gap_title.split("\n") + title.split("\n"):
    assert not line.endswith("-") and not line.endswith("->") and not line.startswith(">")
  for a in range(3):
    for b in range(a + 1, 3):
      assert f"{names[a]}-{names[b]}" in gap_title.replace("\n", " ")
  assert title.replace("\n", " ").count("image->text<-audio") == 3
  wrapped = style_lib.wrap("modality gap: audio-text 0.08, route image->text<-audio here", 12)
  assert wrapped.split("\n") == [
    "modality",
    "gap:",
    "audio-text",
    "0.08, route",
    "image->text<-audio",
    "here",
  ]


def _no_overlaps(boxes):
  for i in range(len(boxes)):
    for j in range(i + 1, len(boxes)):
      (name_a, a), (name_b, b) = boxes[i], boxes[j]
      assert not a.overlaps(b), f"{name_a!r} overlaps {name_b!r}"


def test_centroid_and_gap_labels_never_overlap(figures, tmp_path):
  """Every label (modality names at the stars, gap values at the lines) is clear of every other
  label and of every star, here with 3 modalities and two almost equal centroids, and with 4
  modalities (6 gap labels) before and after, two of them on top of each other after."""
  from matplotlib.transforms import Bbox

  _, _, captured = figures
  info = captured["projection.png"]
  names = [t for t, _ in info["label_boxes"]]
  assert sorted(names[:3]) == sorted(NAMES) and len(names) == 6  # 3 names, 3 gaps
  _no_overlaps(info["label_boxes"])
  for text, box in info["label_boxes"]:
    for star in info["star_boxes"]:
      assert not box.overlaps(Bbox.from_extents(*star)), f"{text!r} covers a star"
  rng = np.random.default_rng(4)
  four = ("image", "audio", "text", "depth")
  before = {m: rng.normal(size=(40, 6)) + 3 * rng.normal(size=6) for m in four}
  after = {m: rng.normal(size=(40, 6)) for m in four}
  after["depth"] = after["image"] + 1e-3  # the same centroid: every label around one point
  captured = {}
  real_save = style_lib.save_figure
  style_lib.save_figure = lambda fig, path: captured.setdefault("fig", _inspect(fig))
  try:
    projection_lib.plot_projection_before_after(before, after, None, tmp_path / "p.png", "four")
  finally:
    style_lib.save_figure = real_save
  info = captured["fig"]
  assert len(info["label_boxes"]) == 2 * (4 + 6)
  _no_overlaps(info["label_boxes"])
  for text, box in info["label_boxes"]:
    for star in info["star_boxes"]:
      assert not box.overlaps(Bbox.from_extents(*star)), f"{text!r} covers a star"


def test_training_curves_lr_validation_kept_step_and_rounds(figures):
  _, written, captured = figures
  assert written["curves"] == "training_curves.png"
  total, terms, validation, lr = captured["training_curves.png"]["axes"]
  assert {"round 0", "round 1", "round 2 (final)"} <= set(total["lines"])
  assert {"round 0", "round 1", "round 2 (final)"} <= set(validation["lines"])
  assert lr["title"] == "learning rate" and len(lr["lines"]) >= 3
  assert "edge_cos" in terms["lines"] and "edge_cos/image->text" not in terms["lines"]
  # report.json's kept_step says keep_best was on: each round's best validated step is marked
  for panel in (total, terms, validation, lr):
    assert panel["kept"] == [20, 30, 40]
  assert "kept step 30, round 2 (final)" in total["lines"]


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


def test_training_rows_tag_every_round(tmp_path):
  """The graph strategy's rounds (workdir/round0, round1, then the workdir) are read as one list
  tagged by round; a workdir holding a copy of an earlier round's outputs adds no round."""
  import json

  from graphbridge.strategies import reporting
  import ml_collections

  def write(folder, steps, best):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "metrics.jsonl"), "w") as f:
      for step in steps:
        f.write(json.dumps({"step": step, "loss/total": 1.0, "val/best_step": best}) + "\n")

  write(tmp_path / "round0", (5, 10), 5)
  write(tmp_path / "round1", (5, 10), 10)
  write(tmp_path, (5, 10), 5)
  rows = reporting.training_rows(str(tmp_path))
  assert [(r["round"], r["step"]) for r in rows] == [
    (0, 5),
    (0, 10),
    (1, 5),
    (1, 10),
    (2, 5),
    (2, 10),
  ]
  config = ml_collections.ConfigDict({"train": {"keep_best": True}})
  assert reporting.kept_step(config, rows) == 5  # the final round's best validated step
  config.train.keep_best = False
  assert reporting.kept_step(config, rows) is None
  (tmp_path / reporting.KEPT_ROUND).write_text('{"round": 1}')  # stopped early: kept round 1
  rows = reporting.training_rows(str(tmp_path))
  assert sorted({r["round"] for r in rows}) == [0, 1]
  assert reporting.training_rows(str(tmp_path / "round0"))[0].get("round") is None  # no rounds
