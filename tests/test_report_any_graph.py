"""The report for any graph: 6 and 8 modalities of mixed dims, tree and chain pairings."""

import json
import os

import numpy as np
import pytest

from graphbridge.data import dataset as dataset_lib
from graphbridge.data import readers as readers_lib
from graphbridge import defaults
from graphbridge.evaluation import report as report_lib
from graphbridge.evaluation import figures as figures_lib
from graphbridge.evaluation import aligners as aligners_lib
from graphbridge.training import setup as setup_lib
from graphbridge.model import translators as translators_lib
from graphbridge.evaluation.plots import projection as projection_lib


def multiview(dims, edges, n=320, per_edge=25, seed=0) -> dataset_lib.Dataset:
  """Instance-aligned views of one latent (row i of every view = sample i), labels and ids; each
  paired edge on its own disjoint slice of the train rows, the rest unpaired."""
  rng = np.random.default_rng(seed)
  z = rng.normal(size=(n, 6))
  labels = np.argmax(z[:, :3], axis=1)
  train = np.arange(n) < n * 3 // 4
  arrays = {}
  for i, d in enumerate(dims):
    arrays[f"m{i}_emb"] = np.tanh(z @ rng.normal(size=(6, d))) + 0.1 * rng.normal(size=(n, d))
    arrays[f"m{i}_label"], arrays[f"m{i}_id"] = labels, np.arange(n)
    arrays[f"m{i}_train"], arrays[f"m{i}_test"] = train, ~train
  for k, (a, b) in enumerate(edges):
    rows = np.arange(k * per_edge, (k + 1) * per_edge)
    assert train[rows].all()
    arrays[f"pairs_m{a}__m{b}"] = np.stack([rows, rows], 1)
  return readers_lib.from_arrays(arrays, source="multiview")


class untrained:
  """Translators at initialisation on the data's graph (the report does not care whether they
  were trained; compiling a training step for 10+ edges of mixed dims takes a minute on CPU)."""

  def __init__(self, dataset, seed=0):
    config = defaults.shrink_for_tests(defaults.base_config())
    layout = translators_lib.EdgeLayout.build(
      dataset.default_graph(), setup_lib.arch_from_config(config.model)
    )
    self.aligner = aligners_lib.GraphAligner(
      layout, translators_lib.init_params(layout, seed), name="graph"
    )
    self.init_aligner = aligners_lib.GraphAligner(
      layout, translators_lib.init_params(layout, seed + 1), name="graph"
    )


FAST = report_lib.EvalOptions(
  cycle_length=2, path_hops=1, silhouette_sample=60, projection_points=30
)
SHAPES = {
  "tree6": ((8, 12, 16, 8, 24, 10), ((0, 1), (0, 2), (1, 3), (1, 4))),
  "chain8": ((8, 12, 16, 8, 24, 10, 14, 6), ((0, 1), (1, 2), (2, 3), (3, 4))),
}


@pytest.mark.parametrize("shape", ["tree6", "chain8"])
def test_report_for_mixed_dims(shape, tmp_path, monkeypatch):
  dims, edges = SHAPES[shape]
  if shape == "tree6":
    edges = edges + ((2, 5),)
  else:
    edges = edges + ((4, 5), (5, 6), (6, 7))
  dataset = multiview(dims, edges)
  run = untrained(dataset)
  seen_before_plots = []
  original = figures_lib.write_plots

  def spy(report, out_dir, *args, **kwargs):
    seen_before_plots.append(
      all(os.path.exists(os.path.join(out_dir, f)) for f in report_lib.REPORT_FILES)
    )
    return original(report, out_dir, *args, **kwargs)

  monkeypatch.setattr(report_lib, "write_plots", spy)
  log = []
  summary = report_lib.run_report(
    run.aligner, dataset, str(tmp_path), before=run.init_aligner, options=FAST, log=log.append
  )
  assert seen_before_plots == [True]
  saved = json.loads((tmp_path / "report.json").read_text())
  n = len(dims)
  defaults_rows = [r for r in saved["rows"] if not r["named_route"]]
  assert {(r["query"], r["gallery"]) for r in defaults_rows} == {
    (f"m{a}", f"m{b}") for a in range(n) for b in range(n) if a != b
  }
  assert max(r["hops"] for r in defaults_rows) >= 3
  md = (tmp_path / "report.md").read_text()
  assert "## Retrieval" in md
  # the projection is drawn in the hub's space with every modality translated into it
  assert (tmp_path / "projection.png").exists() or any(
    "projection" in s for s in saved["plots_not_drawn"]
  )
  assert "projection" in saved["plots"]
  assert not saved.get("plots_not_drawn")
  assert summary["projection"]["routes"]


def test_a_figure_that_fails_is_skipped_with_a_note(tmp_path, monkeypatch):
  dims, edges = SHAPES["tree6"]
  dataset = multiview(dims, edges + ((2, 5),))
  run = untrained(dataset)

  def broken(*args, **kwargs):
    raise ValueError("all modalities in before must share one embedding dimension")

  monkeypatch.setattr(projection_lib, "plot_projection_before_after", broken)
  log = []
  report_lib.run_report(
    run.aligner, dataset, str(tmp_path), before=run.init_aligner, options=FAST, log=log.append
  )
  saved = json.loads((tmp_path / "report.json").read_text())
  assert saved["plots_not_drawn"] == [
    "projection: ValueError: all modalities in before must share one embedding dimension"
  ]
  assert "heatmap_instance" in saved["plots"]
  assert "Figure not drawn: projection" in (tmp_path / "report.md").read_text()
  assert any(line.startswith("figure not drawn: projection") for line in log)
