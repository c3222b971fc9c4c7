"""loss.infonce_positives="auto": instance positives on instance pairs, label positives on
class-level pairs."""

import numpy as np
import pytest
from sklearn.datasets import load_digits

from graphbridge.core import errors
from graphbridge.data import dataset as dataset_lib
from graphbridge.data import positives as positives_lib
from graphbridge.data import readers as readers_lib
from graphbridge import defaults
from graphbridge.training import step as step_lib
from graphbridge.training import trainer as trainer_lib


def _views(with_ids: bool, class_level: bool, seed: int = 0) -> dataset_lib.Dataset:
  """Two views of sklearn's digit images (pixels; a random projection of the pixels + noise),
  labelled; pairs join the same image (instance) or random images of one class (class level)."""
  x, y = load_digits(return_X_y=True)
  x, y = x[:600], y[:600]
  rng = np.random.default_rng(seed)
  view = x @ rng.normal(size=(64, 40)) + 2.0 * rng.normal(size=(len(x), 40))
  rows = np.arange(len(x))
  partner = rows.copy()
  if class_level:
    for c in np.unique(y):
      idx = np.nonzero(y == c)[0]
      partner[idx] = rng.permutation(idx)
  arrays = {
    "pix_emb": x + 1e-3,
    "pix_label": y,
    "proj_emb": view,
    "proj_label": y,
    "pairs_pix__proj": np.stack([rows[:300], partner[:300]], 1),
  }
  if with_ids:
    arrays.update(pix_id=rows, proj_id=rows)
  return readers_lib.from_arrays(arrays)


@pytest.mark.parametrize("with_ids", [False, True])
def test_auto_picks_instance_positives_for_instance_pairs(with_ids):
  choice, why = positives_lib.choose_positives(_views(with_ids, class_level=False), "pix", "proj")
  assert choice == "pair", why


def test_auto_picks_label_positives_for_class_level_pairs():
  choice, why = positives_lib.choose_positives(_views(False, class_level=True), "pix", "proj")
  assert choice == "label", why
  for a, b in readers_lib.load_digits().pairs:  # the embedded set's pairs are class-level
    assert positives_lib.choose_positives(readers_lib.load_digits(), a, b)[0] == "label"


def test_forced_choices_and_bad_value():
  ds = _views(False, class_level=False)
  assert positives_lib.choose_positives(ds, "pix", "proj", "label")[0] == "label"
  assert positives_lib.choose_positives(ds, "pix", "proj", "pair")[0] == "pair"
  with pytest.raises(errors.DataError, match="choose one of auto, label, pair"):
    positives_lib.choose_positives(ds, "pix", "proj", "row")


def test_plan_line_prints_the_choice_and_sampler_uses_it():
  config = defaults.shrink_for_tests(defaults.base_config())
  config.train.steps = 2
  config.train.tensorboard = False
  assert config.loss.infonce_positives == "auto"
  lines = []
  result = trainer_lib.train(
    config, None, dataset=_views(False, class_level=False), log=lines.append
  )
  plan_line = next(line for line in lines if line.startswith("plan:"))
  assert "InfoNCE positives: pix<->proj pair (" in plan_line
  arrays = step_lib.sampler_arrays(result.setup, result.dataset)
  labels = next(iter(arrays["pair_labels"].values()))
  assert len(np.unique(labels)) == len(labels)  # every pair its own positive
  lines = []
  result = trainer_lib.train(
    config, None, dataset=_views(False, class_level=True), log=lines.append
  )
  assert "pix<->proj label (class-level" in next(line for line in lines if line.startswith("plan:"))
  labels = next(iter(step_lib.sampler_arrays(result.setup, result.dataset)["pair_labels"].values()))
  assert len(np.unique(labels)) == 10
