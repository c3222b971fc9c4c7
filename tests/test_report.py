"""Tests for graphbridge.evaluation.report and the evaluate CLI: files, keys, readable PNGs, a
restored run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from graphbridge.evaluation import aligners as aligners_lib
from graphbridge.evaluation import retrieval as retrieval_lib
from graphbridge.evaluation import report as report_lib
from graphbridge.runs import evaluate as evaluate_run
from graphbridge.evaluation import figures as figures_lib
from graphbridge.training import trainer as trainer_lib

from conftest import REPO_ROOT, load_config_module
from graphbridge.training import writers as writers_lib
from graphbridge.core.errors import CheckpointError

REPORT_KEYS = {
  "strategy",
  "data",
  "split",
  "rows",
  "by_hops",
  "gap",
  "silhouette",
  "reconstruction",
  "reconstruction_by_hops",
  "projection",
  "plots",
  "timing",
}


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
  """configs/digits.py:tiny trained with train.train into a workdir (checkpoints +
  metrics.jsonl)."""
  workdir = str(tmp_path_factory.mktemp("digits_tiny"))
  config = load_config_module("configs/digits.py").get_config("tiny")
  config.train.checkpoint_every = 30  # one checkpoint: the final step
  result = trainer_lib.train(config, workdir, log=lambda msg: None)
  return config, result, workdir


@pytest.fixture(scope="module")
def digits_report(digits_run, tmp_path_factory):
  config, result, workdir = digits_run
  setup = result.setup
  aligner = aligners_lib.GraphAligner(setup.layout, result.params, setup.compute_dtype)
  before = aligners_lib.GraphAligner(
    setup.layout, report_lib.initial_params(setup.layout, result.params, 0), setup.compute_dtype
  )
  out = str(tmp_path_factory.mktemp("report"))
  lines = []
  summary = report_lib.run_report(
    aligner,
    result.dataset,
    out,
    before,
    report_lib.EvalOptions.from_config(config),
    header={"step": 30},
    metrics_rows=writers_lib.read_metrics(os.path.join(workdir, "metrics.jsonl")),
    log=lines.append,
  )
  return summary, out, "\n".join(lines)


def _read_png(path: str) -> np.ndarray:
  import matplotlib.image as mpimg

  image = mpimg.imread(path)
  assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 400
  assert image[..., :3].std() > 0.05  # not blank
  return image


def test_report_files_and_keys(digits_report):
  summary, out, printed = digits_report
  on_disk = json.loads(open(os.path.join(out, "report.json")).read())
  assert REPORT_KEYS <= set(on_disk)
  assert on_disk["step"] == 30 and on_disk["split"] == "test"
  rows = {(r["query"], r["gallery"]): r for r in on_disk["rows"]}
  assert len(rows) == 6 and {r["level"] for r in on_disk["rows"]} == {"class"}
  for pair in (("image", "audio"), ("audio", "image")):  # never paired: zero-shot through text
    r = rows[pair]
    assert r["hops"] == 2 and r["route"] == f"{pair[0]}->text<-{pair[1]}"  # meet in the pivot
    assert {
      "mAP",
      "R@1",
      "R@5",
      "R@10",
      "median_rank",
      "chance_mAP",
      "chance_R@1",
      "strategy",
    } <= set(r)
  assert [(b["hops"], b["pairs"]) for b in on_disk["by_hops"]] == [(1, 4), (2, 2)]
  assert len(on_disk["gap"]) == 6 and all(
    0 <= g["gap_before"] <= 2 and 0 <= g["gap_after"] <= 2 for g in on_disk["gap"]
  )
  assert len(on_disk["silhouette"]) == 6 and all(
    -1 <= s["mixed"] <= 1 for s in on_disk["silhouette"]
  )
  assert on_disk["silhouette_sample"] == 500  # an estimate on a stated sample, said in report.md
  assert "seeded sample of at most 500 rows" in open(os.path.join(out, "report.md")).read()
  kinds = {(r["kind"], r["hops"]) for r in on_disk["reconstruction"]}
  assert kinds == {("path", 1), ("cycle", 2)}
  assert on_disk["projection"]["space"] == "text"
  # printed: the compact table with the zero-shot rows and chance
  assert "| image | audio | image->text<-audio | 2 | paired | class |" in printed
  assert "by hop distance" in printed and "chance_mAP" in printed
  assert "modality gap (mean over 6 routes)" in printed


def test_report_markdown_and_pngs(digits_report):
  summary, out, _ = digits_report
  md = open(os.path.join(out, "report.md")).read()
  for heading in (
    "## Retrieval",
    "### By hop distance",
    "## Modality gap",
    "## Cluster separability",
    "## Reconstruction",
    "## Pictures",
  ):
    assert heading in md
  assert summary["plots"] == {
    "projection": "projection.png",
    "heatmap_class": "retrieval_class.png",
    "reconstruction": "reconstruction.png",
    "curves": "training_curves.png",
  }
  for name in summary["plots"].values():
    assert f"]({name})" in md
    _read_png(os.path.join(out, name))


def test_report_without_matplotlib(tmp_path, tri_modal_dataset, monkeypatch):
  for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
    monkeypatch.delitem(sys.modules, name)
  monkeypatch.setitem(sys.modules, "matplotlib", None)

  class Pad:
    name = "pad"

    def default_route(self, query, gallery):
      return f"{query}->{gallery}"

    def encode(self, query, gallery, route, xq, xg):
      d = max(xq.shape[1], xg.shape[1])
      return np.pad(xq, ((0, 0), (0, d - xq.shape[1]))), np.pad(xg, ((0, 0), (0, d - xg.shape[1])))

  summary = report_lib.run_report(Pad(), tri_modal_dataset, str(tmp_path), log=lambda msg: None)
  assert summary["plots"] == {} and "matplotlib" in summary["plots_skipped"]
  assert sorted(os.listdir(tmp_path)) == ["report.json", "report.md"]
  assert "No pictures: matplotlib is not installed" in (tmp_path / "report.md").read_text()
  assert summary["reconstruction"] == []  # no translators in this strategy
  assert summary["gap"][0]["gap_before"] is None


def test_evaluate_cli_on_a_trained_workdir(digits_run, digits_report, tmp_path):
  _, _, workdir = digits_run
  out = tmp_path / "cli"
  cmd = [
    sys.executable,
    os.path.join(REPO_ROOT, "launch", "evaluate.py"),
    f"--workdir={workdir}",
    f"--out={out}",
    "--paths=image->text->audio,text->image->text",
    "--split=test",
    "--noplots",
  ]
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(tmp_path), timeout=300)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  report = json.loads((out / "report.json").read_text())
  assert report["step"] == 30 and report["workdir"] == os.path.abspath(workdir)
  named = [r for r in report["rows"] if r["named_route"]]
  assert [r["route"] for r in named] == [
    "image->text->audio",
    "text->image->text",
  ]  # both named, not defaults
  assert (named[0]["query"], named[0]["gallery"]) == ("image", "audio")
  assert named[1]["query"] == named[1]["gallery"] == "text"
  # the restored run scores exactly what the in-process run scored
  in_process = {(r["query"], r["gallery"]): r["mAP"] for r in digits_report[0]["rows"]}
  restored = {(r["query"], r["gallery"]): r["mAP"] for r in report["rows"] if not r["named_route"]}
  assert restored == pytest.approx(in_process, abs=1e-6)
  assert not (out / "projection.png").exists()
  assert "| image | audio | image->text<-audio | 2 | paired | class |" in proc.stdout


def test_evaluate_workdir_errors(tmp_path, digits_run, tri_modal_arrays):
  with pytest.raises(CheckpointError, match="no checkpoints in"):
    evaluate_run.evaluate_workdir(str(tmp_path))
  other = str(tmp_path / "other.npz")
  np.savez(other, **tri_modal_arrays)  # same modality names, other dims
  with pytest.raises(Exception, match="dimension mismatch for 'image'"):
    evaluate_run.evaluate_workdir(
      digits_run[2], data=other, out=str(tmp_path / "x"), log=lambda m: None
    )


def test_retrieval_matrix():
  rows = [
    {"query": "a", "gallery": "b", "level": "class", "mAP": 0.5, "chance_mAP": 0.1},
    {"query": "b", "gallery": "a", "level": "class", "mAP": 0.7, "chance_mAP": 0.2},
    {
      "query": "b",
      "gallery": "a",
      "level": "class",
      "mAP": 0.0,
      "chance_mAP": 0.2,
      "named_route": True,
    },
  ]
  values, chance = figures_lib.retrieval_matrix(rows, ["a", "b"], "class")
  np.testing.assert_array_equal(values, [[np.nan, 0.5], [0.7, np.nan]])
  np.testing.assert_array_equal(chance, [[np.nan, 0.1], [0.2, np.nan]])


def test_max_queries_samples_queries_and_says_so(digits_run, tmp_path):
  """eval.max_queries scores a seeded sample of query rows against the whole gallery, and the
  report (json, md, console) says so; 0 scores every row."""
  config, result, _ = digits_run
  setup = result.setup
  aligner = aligners_lib.GraphAligner(setup.layout, result.params, setup.compute_dtype)
  dataset = result.dataset
  full = retrieval_lib.retrieval_rows(aligner, dataset)
  sampled = retrieval_lib.retrieval_rows(aligner, dataset, max_queries=40, seed=0)
  again = retrieval_lib.retrieval_rows(aligner, dataset, max_queries=40, seed=0)
  assert sampled == again  # deterministic
  for f, s in zip(full, sampled):
    assert "queries_sampled" not in f
    assert s["queries_sampled"] and s["query_rows"] == f["n_queries"] + f["n_skipped"] > 40
    assert s["n_queries"] + s["n_skipped"] == 40 and s["n_gallery"] == f["n_gallery"]
  with pytest.raises(ValueError, match="max_queries"):
    retrieval_lib.retrieval_rows(aligner, dataset, max_queries=-1)
  options = report_lib.EvalOptions.from_config(config)
  assert options.max_queries == 0
  config = config.copy_and_resolve_references()
  config.eval.max_queries = 40
  options = report_lib.EvalOptions.from_config(config)
  lines = []
  summary = report_lib.run_report(
    aligner, dataset, str(tmp_path), options=options, plots=False, log=lines.append
  )
  assert "eval.max_queries" in summary["query_sampling"]
  assert any("eval.max_queries" in line for line in lines)
  with open(tmp_path / "report.md") as f:
    assert "eval.max_queries" in f.read()
  with open(tmp_path / "report.json") as f:
    assert all(r["queries_sampled"] for r in json.load(f)["rows"])
