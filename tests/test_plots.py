"""Tests for graphbridge.evaluation.plots: every function writes a readable PNG of the expected
size."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from graphbridge.evaluation.plots import style as style_lib
from graphbridge.evaluation.plots import projection as projection_lib
from graphbridge.evaluation.plots import charts as charts_lib

DPI = style_lib.DPI


def _read_png(path: Path) -> np.ndarray:
  import matplotlib.image as mpimg

  assert path.is_file() and path.stat().st_size > 1000
  return mpimg.imread(path)


def _assert_png(path, returned, figsize):
  assert Path(returned) == Path(path)
  image = _read_png(Path(path))
  height, width = image.shape[:2]
  assert (width, height) == (round(figsize[0] * DPI), round(figsize[1] * DPI))
  assert image[..., :3].std() > 0.05  # not a blank canvas
  return image


@pytest.fixture
def clustered():
  rng = np.random.default_rng(0)
  d, n_classes, n_per = 32, 5, 40
  centres = rng.normal(size=(n_classes, d))
  labels = np.repeat(np.arange(n_classes), n_per)

  def modality(offset_scale):
    offset = offset_scale * rng.normal(size=d)
    return centres[labels] + 0.7 * rng.normal(size=(labels.size, d)) + offset

  before = {"image": modality(3.0), "audio": modality(3.0), "text": modality(3.0)}
  after = {"image": modality(0.2), "audio": modality(0.2), "text": modality(0.2)}
  return before, after, {m: labels for m in before}


def test_import_without_matplotlib():
  code = (
    "import sys; sys.modules['matplotlib'] = None\n"
    "import graphbridge.evaluation.plots.charts as p\n"
    "try:\n"
    "    p.plot_retrieval_heatmap([[1.0]], ['a'], ['b'], '/nonexistent/x.png', 't')\n"
    "except ImportError:\n"
    "    print('import-error-at-call')\n"
  )
  root = Path(__file__).resolve().parents[1]
  result = subprocess.run(
    [sys.executable, "-c", code],
    capture_output=True,
    text=True,
    cwd=root,
    env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
  )
  assert result.returncode == 0, result.stderr
  assert "import-error-at-call" in result.stdout


def test_plot_projection(tmp_path, clustered):
  _, after, labels = clustered
  path = tmp_path / "sub" / "proj.png"
  out = projection_lib.plot_projection(after, labels, path, "projection")
  _assert_png(path, out, (8.6, 6.2))
  # without labels, and a single modality
  out = projection_lib.plot_projection({"image": after["image"]}, None, tmp_path / "one.png", "one")
  _assert_png(tmp_path / "one.png", out, (8.6, 6.2))
  with pytest.raises(ValueError, match="only 'pca'"):
    projection_lib.plot_projection(after, labels, tmp_path / "x.png", "t", method="tsne")
  with pytest.raises(ValueError, match="share one embedding dimension"):
    projection_lib.plot_projection(
      {"a": np.ones((3, 4)), "b": np.ones((3, 5))}, None, tmp_path / "x.png", "t"
    )
  with pytest.raises(ValueError, match="labels for modality 'image'"):
    projection_lib.plot_projection(after, {"image": labels["image"][:5]}, tmp_path / "x.png", "t")


def test_plot_projection_subsamples_large_sets(tmp_path):
  rng = np.random.default_rng(1)
  big = {"a": rng.normal(size=(5000, 16)), "b": rng.normal(size=(5000, 16)) + 1}
  out = projection_lib.plot_projection(
    big, None, tmp_path / "big.png", "big", max_points_per_modality=300
  )
  _assert_png(tmp_path / "big.png", out, (8.6, 6.2))


def test_plot_projection_before_after(tmp_path, clustered):
  before, after, labels = clustered
  path = tmp_path / "before_after.png"
  out = projection_lib.plot_projection_before_after(before, after, labels, path, "gap closing")
  _assert_png(path, out, (14.0, 6.4))


def test_plot_retrieval_heatmap(tmp_path):
  names = ["image", "audio", "text"]
  matrix = np.array([[np.nan, 0.61, 0.72], [0.58, np.nan, 0.44], [0.70, 0.41, np.nan]])
  chance = np.full((3, 3), 0.11)
  path = tmp_path / "heat.png"
  out = charts_lib.plot_retrieval_heatmap(matrix, names, names, path, "mAP", chance=chance)
  n = 3
  _assert_png(path, out, (max(4.8, 1.15 * n + 0.09 * 5 + 2.6), max(3.6, 0.85 * n + 1.9)))
  # non-[0, 1] metric, rectangular, no chance
  ranks = np.array([[1.0, 40.0, 300.0]])
  out = charts_lib.plot_retrieval_heatmap(
    ranks, ["q"], names, tmp_path / "r.png", "rank", metric_name="median rank"
  )
  assert _read_png(out).size > 0
  with pytest.raises(ValueError, match="query_names"):
    charts_lib.plot_retrieval_heatmap(matrix, names[:2], names, tmp_path / "x.png", "t")
  with pytest.raises(ValueError, match="chance has shape"):
    charts_lib.plot_retrieval_heatmap(
      matrix, names, names, tmp_path / "x.png", "t", chance=chance[:2]
    )


def test_plot_reconstruction_by_hops(tmp_path):
  rng = np.random.default_rng(2)
  rows = []
  for hops in range(1, 5):
    for _ in range(6):
      rows.append(
        {"hops": hops, "cosine": 0.9**hops + 0.02 * rng.normal(), "baseline": 0.3, "kind": "path"}
      )
    if hops > 1:
      rows.append({"hops": hops, "cosine": 0.92**hops, "baseline": 0.28, "kind": "cycle"})
  path = tmp_path / "hops.png"
  _assert_png(
    path, charts_lib.plot_reconstruction_by_hops(rows, path, "hops"), (10.5, 5.0)
  )  # legend beside the axes
  with pytest.raises(ValueError, match="missing key"):
    charts_lib.plot_reconstruction_by_hops([{"hops": 1, "cosine": 0.5}], tmp_path / "x.png", "t")
  with pytest.raises(ValueError, match="empty"):
    charts_lib.plot_reconstruction_by_hops([], tmp_path / "x.png", "t")


def test_plot_training_curves(tmp_path):
  rng = np.random.default_rng(3)
  rows = []
  for step in range(0, 500, 10):
    row = {
      "step": step,
      "loss/edge_cos/image->text": np.exp(-step / 200) + 0.01,
      "loss/cycle/2": 0.5 * np.exp(-step / 100) + 0.02 * rng.uniform(),
    }
    row["loss/total"] = row["loss/edge_cos/image->text"] + row["loss/cycle/2"]
    if step % 50 == 0:
      row["loss/contrastive"] = -0.1 + 0.01 * rng.normal()  # negative: linear axis, sparse logging
    row["lr"] = 1e-3
    rows.append(row)
  path = tmp_path / "train.png"
  _assert_png(path, charts_lib.plot_training_curves(rows, path, "training"), (12.0, 8.4))
  many = [
    {"step": s, **{f"loss/edge/{i}": 1.0 / (s + 1 + i) for i in range(10)}} for s in range(30)
  ]
  _assert_png(
    tmp_path / "many.png",
    charts_lib.plot_training_curves(many, tmp_path / "many.png", "many"),
    (13.0, 8.4),
  )
  with pytest.raises(ValueError, match="no key starting with 'loss/'"):
    charts_lib.plot_training_curves([{"step": 1, "acc": 0.5}], tmp_path / "x.png", "t")


def test_plot_strategy_comparison(tmp_path):
  rows = [
    {"strategy": s, "pair": p, "mean": m, "std": 0.03, "chance": 0.1}
    for s, base in (("direct", 0.4), ("hub", 0.5), ("graph", 0.6))
    for p, m in (("image->audio", base), ("audio->text", base + 0.1))
  ]
  rows.append({"strategy": "graph", "pair": "text->image", "mean": 0.7})  # no std / chance
  path = tmp_path / "strategy.png"
  # width grows with pairs x strategies: 3 pairs x 3 strategies -> 0.55 * 9 + 3 inches
  _assert_png(
    path, charts_lib.plot_strategy_comparison(rows, path, "strategies"), (0.55 * 9 + 3.0, 5.0)
  )
  with pytest.raises(ValueError, match="repeats strategy"):
    charts_lib.plot_strategy_comparison(rows + [rows[0]], tmp_path / "x.png", "t")


def test_strategy_comparison_variants_share_a_colour(tmp_path, monkeypatch):
  """ "+center" / "+procrustes" bars take their method's colour with a hatch; a bar without a
  spread (one seed, a deterministic baseline) has no error bar."""
  from matplotlib.colors import to_hex

  rows = []
  for strategy, std in (
    ("graph", 0.01),
    ("graph+center", 0.02),
    ("graph+procrustes", 0.02),
    ("pivot", 0.01),
    ("pivot+center", 0.01),
    ("linear-ridge", None),
  ):
    for pair in ("image->audio", "audio->image"):
      rows.append({"strategy": strategy, "pair": pair, "mean": 0.8, "std": std, "chance": 0.1})
  seen = {}

  def capture(fig, path):
    (ax,) = fig.axes
    seen["bars"] = {
      c.get_label(): (to_hex(c.patches[0].get_facecolor()), c.patches[0].get_hatch() or "")
      for c in ax.containers
      if hasattr(c, "patches")
    }
    seen["errors"] = sorted(
      c.get_gid()[len("std:") :] for c in ax.collections if (c.get_gid() or "").startswith("std:")
    )
    return path

  monkeypatch.setattr(style_lib, "save_figure", capture)
  charts_lib.plot_strategy_comparison(rows, tmp_path / "c.png", "variants")
  bars = seen["bars"]
  assert bars["graph"][0] == bars["graph+center"][0] == bars["graph+procrustes"][0]
  assert bars["pivot"][0] == bars["pivot+center"][0] != bars["graph"][0]
  assert bars["graph"][1] == "" and bars["graph+center"][1] == bars["pivot+center"][1] != ""
  assert len({bars[s][1] for s in ("graph", "graph+center", "graph+procrustes")}) == 3
  assert bars["graph"][0] == style_lib.strategy_colours(["graph"])["graph"].lower()
  assert "linear-ridge" not in seen["errors"] and "graph+center" in seen["errors"]
