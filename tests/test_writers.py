"""Training feedback: TensorBoard events read back (tags exactly as in metrics.jsonl, the report's
final numbers, hparams and figures), JSONL with lr, progress with rate/ETA/lr, validation on
held-back rows with the best step, a clean skip without tensorboardX."""

from __future__ import annotations

import os

import numpy as np
import pytest

from graphbridge.training import trained as trained_lib
from graphbridge.training import trainer as trainer_lib
from graphbridge.training import validation as validation_lib
from graphbridge.training import writers as writers_lib
from graphbridge.evaluation import retrieval as retrieval_lib
from graphbridge.core import fields
from graphbridge.runs import evaluate as evaluate_lib


@pytest.fixture(scope="module")
def validated_run(tmp_path_factory, tri_modal_dataset, digits_config_module):
  config = digits_config_module.get_config("tiny")
  config.model.hidden = (16,)
  config.data.batch_size = 16
  config.train.steps = 20
  config.train.log_every = 5
  config.train.print_every = 10
  config.train.validate_every = 10
  config.train.validate_fraction = 0.25
  workdir = str(tmp_path_factory.mktemp("writers") / "run")
  lines = []
  result = trainer_lib.train(config, workdir, dataset=tri_modal_dataset, log=lines.append)
  return result, workdir, lines


def test_tensorboard_events_hold_the_scalars(validated_run):
  _, workdir, _ = validated_run
  scalars = writers_lib.read_tensorboard_scalars(os.path.join(workdir, writers_lib.TENSORBOARD_DIR))
  assert [s for s, _ in scalars["loss/total"]] == [5, 10, 15, 20]
  assert all(np.isfinite(v) for _, v in scalars["loss/total"])
  lrs = [v for _, v in scalars["lr"]]
  assert lrs[0] > 0 and lrs[-1] < max(lrs)  # warmup then cosine decay
  assert [s for s, _ in scalars["val/mAP"]] == [10, 20]
  # every tag as in metrics.jsonl, "->" included (TensorBoard takes any string as a tag)
  rows = writers_lib.read_metrics(os.path.join(workdir, "metrics.jsonl"))
  keys = {k for r in rows for k, v in r.items() if k != "step" and np.isfinite(v)}
  assert keys == set(scalars)
  assert "grad_norm/image->text" in scalars and "val/mAP/image->audio" in scalars
  assert scalars["val/mAP/image->audio"] == [
    (r["step"], pytest.approx(r["val/mAP/image->audio"])) for r in rows if "val/mAP" in r
  ]


def test_report_sends_final_metrics_hparams_and_figures(validated_run, data_path, tmp_path):
  """The report at the end of a run adds, at the final step, its numbers (named like the
  validation's: test/mAP/image->audio), the HParams session (config against the headline metrics)
  and every figure as an image, in the run's TensorBoard folder."""
  _, workdir, _ = validated_run
  out = str(tmp_path / "report")
  lines = []
  summary = evaluate_lib.evaluate_workdir(workdir, data=data_path, out=out, log=lines.append)
  logdir = os.path.join(out, writers_lib.TENSORBOARD_DIR)
  assert any(line.startswith("final metrics and figures in TensorBoard") for line in lines)
  scalars = writers_lib.read_tensorboard_scalars(logdir)
  default = [r for r in summary["rows"] if not r["named_route"] and r["level"] == "class"]
  for r in default:
    pair = f"{r['query']}->{r['gallery']}"
    assert scalars[f"test/mAP/{pair}"] == [(20, pytest.approx(r["mAP"]))]
    assert scalars[f"test/R@1/{pair}"] == [(20, pytest.approx(r["R@1"]))]
  assert scalars["test/mAP"] == [(20, pytest.approx(np.mean([r["mAP"] for r in default])))]
  assert {"test/mAP/hops1", "test/mAP/hops2", "test/gap", "test/silhouette"} <= set(scalars)
  assert not [tag for tag in scalars if "_to_" in tag]
  hparams = writers_lib.read_tensorboard_hparams(logdir)
  assert hparams["train.steps"] == 20 and hparams["train.validate_every"] == 10
  assert hparams["strategy"] == "graph" and hparams["model.hidden"] == "(16,)"
  images = writers_lib.read_tensorboard_images(logdir)
  assert set(images) == {f"report/{key}" for key in summary["plots"]} and images
  for tag, ((step, png),) in images.items():
    name = summary["plots"][tag[len("report/") :]]
    assert step == 20
    with open(os.path.join(out, name), "rb") as f:
      assert png == f.read()


def test_jsonl_progress_and_validation(validated_run):
  result, workdir, lines = validated_run
  rows = writers_lib.read_metrics(os.path.join(workdir, "metrics.jsonl"))
  assert [r["step"] for r in rows] == [5, 10, 15, 20]
  assert all("lr" in r for r in rows)
  val = [r for r in rows if "val/mAP" in r]
  assert [r["step"] for r in val] == [10, 20]
  best = max(val, key=lambda r: r["val/mAP"])
  assert val[-1]["val/best_mAP"] == pytest.approx(best["val/mAP"])
  assert val[-1]["val/best_step"] == best["step"]
  assert all(0.0 <= r["val/mAP"] <= 1.0 for r in val)
  assert "val/mAP/image->audio" in val[-1]  # zero-shot pair scored too
  progress = [line for line in lines if line.startswith("step ")]
  assert [line.split()[1] for line in progress] == ["10/20", "20/20"]
  assert all(" lr " in line and "val mAP" in line for line in progress)
  assert "eta" in progress[0] or "compiled" in progress[0]
  # the held-back rows were not trained on, and the returned dataset is the caller's
  assert result.dataset.modalities["image"].train.sum() == 36


def test_hold_out_never_overlaps_and_keeps_test_rows(tri_modal_dataset):
  train_view, val_view = validation_lib.hold_out(tri_modal_dataset, 0.25, seed=1)
  for name, mod in tri_modal_dataset.modalities.items():
    t, v = train_view.modalities[name], val_view.modalities[name]
    assert not np.any(t.train & v.test)
    assert np.array_equal(t.train | v.test, mod.train)
    assert np.array_equal(t.test, mod.test)  # the test split is untouched
    assert v.test.sum() == round(0.25 * mod.train.sum())
  with pytest.raises(ValueError, match="validate_fraction"):
    validation_lib.hold_out(tri_modal_dataset, 1.0)


def test_no_tensorboardx_is_a_note_not_an_error(
  tmp_path, tri_modal_dataset, tiny_config, monkeypatch
):
  monkeypatch.setattr(writers_lib, "tensorboard_available", lambda: False)
  tiny_config.train.steps = 5
  tiny_config.train.checkpoint_every = 0
  lines = []
  trainer_lib.train(tiny_config, str(tmp_path), dataset=tri_modal_dataset, log=lines.append)
  assert any("tensorboardX is not installed" in line for line in lines)
  assert not os.path.exists(os.path.join(tmp_path, writers_lib.TENSORBOARD_DIR))
  assert writers_lib.read_metrics(os.path.join(tmp_path, "metrics.jsonl"))


def test_format_eta():
  assert writers_lib.format_eta(42.4) == "42s"
  assert writers_lib.format_eta(185) == "3m05s"
  assert writers_lib.format_eta(3720) == "1h02m"
  assert writers_lib.format_eta(float("nan")) == "?"


def test_keep_best_ends_with_the_best_validated_params(
  tmp_path, tri_modal_dataset, digits_config_module, monkeypatch
):
  """train.keep_best: the run returns, and its last checkpoint holds, the params scored best on the
  held-back rows (here step 10 of 20, by scripted validation scores), not the last step's."""
  import jax

  scripted = iter([0.2, 0.9, 0.5, 0.4])  # steps 5, 10, 15, 20
  seen = {}

  def fake_rows(aligner, dataset, split="test", ks=(1,)):
    seen[len(seen) * 5 + 5] = jax.tree.map(np.array, aligner.params)
    return [{"level": "instance", "query": "image", "gallery": "text", "mAP": next(scripted)}]

  monkeypatch.setattr(retrieval_lib, "retrieval_rows", fake_rows)
  config = digits_config_module.get_config("tiny")
  config.model.hidden = (16,)
  config.data.batch_size = 16
  config.train.steps = 20
  config.train.log_every = 5
  config.train.validate_every = 5
  config.train.keep_best = True
  workdir = str(tmp_path / "run")
  lines = []
  result = trainer_lib.train(config, workdir, dataset=tri_modal_dataset, log=lines.append)
  assert any("keeping the params of step 10" in line for line in lines)
  loaded = trained_lib.load_trained(workdir)
  assert loaded.step == 20
  for key, stacked in result.state["params"]["edges"].items():
    for got, saved, best, last in zip(
      jax.tree.leaves(stacked),
      jax.tree.leaves(loaded.params[key]),
      jax.tree.leaves(seen[10][key]),
      jax.tree.leaves(seen[20][key]),
    ):
      np.testing.assert_array_equal(np.asarray(got), best)
      np.testing.assert_array_equal(np.asarray(saved), best)
      assert not np.array_equal(best, last)


def test_keep_best_needs_validation(digits_config_module):
  config = digits_config_module.get_config("tiny")
  config.train.keep_best = True
  assert any(
    "train.keep_best needs train.validate_every" in p for p in fields.range_problems(config)
  )
