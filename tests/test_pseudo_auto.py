"""pseudo.rounds=-1 (auto, the default): pseudo_lib.AUTO_ROUNDS (2) rounds where every pair set is
instance-level, else 0."""

import numpy as np
import pytest
from sklearn.datasets import load_digits

from graphbridge.core import errors
from graphbridge.runs import validate as validate_lib
from graphbridge.data import dataset as dataset_lib
from graphbridge.data import readers as readers_lib
from graphbridge import defaults
from graphbridge.strategies import pseudo as pseudo_lib
from graphbridge.training import trainer as trainer_lib
from graphbridge.strategies import graph as graph_strategy
from graphbridge.strategies import registry as strategies
from graphbridge.training import trained as trained_lib


def _views(
  class_level: bool, extra_class_level: bool = False, seed: int = 0
) -> dataset_lib.Dataset:
  """Views of sklearn's digit images (pixels; random projections of the pixels + noise), labelled;
  pairs join the same image (instance) or random images of one class (class level)."""
  x, y = load_digits(return_X_y=True)
  x, y = x[:600], y[:600]
  rng = np.random.default_rng(seed)
  rows = np.arange(len(x))

  def partner(shuffle: bool) -> np.ndarray:
    out = rows.copy()
    if shuffle:
      for c in np.unique(y):
        idx = np.nonzero(y == c)[0]
        out[idx] = rng.permutation(idx)
    return out

  arrays = {"pix_emb": x + 1e-3, "pix_label": y}
  for name in ("proj", "other"):
    arrays[f"{name}_emb"] = x @ rng.normal(size=(64, 40)) + 2.0 * rng.normal(size=(len(x), 40))
    arrays[f"{name}_label"] = y
  arrays["pairs_pix__proj"] = np.stack([rows[:300], partner(class_level)[:300]], 1)
  arrays["pairs_proj__other"] = np.stack([rows[300:], partner(extra_class_level)[300:]], 1)
  return readers_lib.from_arrays(arrays)


def test_default_is_auto():
  config = defaults.base_config()
  assert config.pseudo.rounds == pseudo_lib.AUTO == -1
  assert pseudo_lib.PseudoSettings.from_config(config).rounds == pseudo_lib.AUTO


def test_auto_runs_one_round_on_instance_level_pairs():
  dataset = _views(class_level=False)
  rounds, why = pseudo_lib.resolve_rounds(pseudo_lib.AUTO, dataset)
  assert rounds == pseudo_lib.AUTO_ROUNDS == 2, why
  assert "instance-level" in why
  assert pseudo_lib.PseudoSettings.from_config(defaults.base_config(), dataset).rounds == 2


@pytest.mark.parametrize("first, second", [(True, False), (False, True), (True, True)])
def test_auto_is_off_when_any_pair_set_is_class_level(first, second):
  rounds, why = pseudo_lib.resolve_rounds(
    pseudo_lib.AUTO, _views(class_level=first, extra_class_level=second)
  )
  assert rounds == 0, why
  named = [n for n, c in (("pix<->proj", first), ("proj<->other", second)) if c]
  assert all(n in why for n in named), why


def test_auto_is_off_on_the_embedded_digits_set():
  dataset = readers_lib.load_digits()  # class-level pairs, star around text
  rounds, why = pseudo_lib.resolve_rounds(pseudo_lib.AUTO, dataset)
  assert rounds == 0 and "class-level" in why, why
  assert pseudo_lib.PseudoSettings.from_config(defaults.base_config(), dataset).rounds == 0


def test_explicit_rounds_are_kept_and_bad_values_rejected():
  dataset = readers_lib.load_digits()
  assert pseudo_lib.resolve_rounds(2, dataset) == (2, "asked for")
  assert pseudo_lib.resolve_rounds(0, _views(class_level=False)) == (0, "asked for")
  with pytest.raises(ValueError, match="pseudo.rounds=-2"):
    pseudo_lib.resolve_rounds(-2, dataset)
  with pytest.raises(ValueError, match="pseudo.rounds must be"):
    pseudo_lib.PseudoSettings(rounds=-3)
  config = defaults.base_config()
  validate_lib.validate(config)  # -1 (auto) is valid
  config.pseudo.rounds = -2
  with pytest.raises(errors.ConfigError, match="pseudo.rounds must be an integer >= 0, or -1"):
    validate_lib.validate(config)


class _Entered(Exception):
  pass


def test_run_logs_the_decision_and_takes_the_matching_path(monkeypatch):
  """run_strategy prints the decision, then self-trains (auto: 1) or trains once (auto: 0);
  training itself is stubbed out (pseudo_lib.self_train's own tests: test_pseudo.py)."""

  def entered(name):
    def stub(*args, **kwargs):
      raise _Entered(name)

    return stub

  monkeypatch.setattr(pseudo_lib, "self_train", entered("self_train"))
  monkeypatch.setattr(trainer_lib, "train", entered("train"))
  config = defaults.base_config()
  assert config.pseudo.rounds == pseudo_lib.AUTO
  for class_level, path, decision in (
    (False, "self_train", "2 rounds (auto: all 2 pair sets instance-level)"),
    (True, "train", "0 rounds (auto: class-level pair sets pix<->proj"),
  ):
    lines = []
    with pytest.raises(_Entered, match=f"^{path}$"):
      graph_strategy.STRATEGY.train(config, _views(class_level=class_level), None, log=lines.append)
    assert any(line.startswith(f"pseudo-pairs: {decision}") for line in lines), lines
  config.pseudo.rounds = 0  # off: no decision line, one training
  lines = []
  with pytest.raises(_Entered, match="^train$"):
    graph_strategy.STRATEGY.train(config, _views(class_level=False), None, log=lines.append)
  assert not any(line.startswith("pseudo-pairs") for line in lines), lines


def test_a_run_that_stops_early_keeps_its_model_in_the_workdir(tmp_path, monkeypatch):
  """No pseudo-pair passes the gate after round 0: the kept model is round 0's (trained into
  round0/), so its checkpoints and metrics are copied into the workdir, where a finished run's model
  is; loading the workdir gives round 0's params, and a rerun (everything resumed) copies again
  without error."""
  monkeypatch.setattr(
    pseudo_lib, "probe_precision", lambda *a, **k: 0.0
  )  # the gate rejects every pair set
  c = defaults.shrink_for_tests(defaults.base_config())
  c.pseudo.rounds = 2
  c.train.tensorboard = False
  workdir = str(tmp_path / "run")
  lines = []
  run = strategies.get(c.strategy).train(c, _views(class_level=False), workdir, log=lines.append)
  assert any("no modality pair passed the gate" in l for l in lines)
  assert (tmp_path / "run" / "round0" / "checkpoints").is_dir()
  assert (tmp_path / "run" / "checkpoints").is_dir() and (
    tmp_path / "run" / "metrics.jsonl"
  ).is_file()
  assert '"round": 0' in (tmp_path / "run" / graph_strategy.PUBLISHED).read_text()
  loaded = trained_lib.load_trained(workdir)
  for key, stacked in run.results[-1].params.items():
    for a, b in zip(jax_leaves(stacked), jax_leaves(loaded.params[key])):
      np.testing.assert_array_equal(a, b)
  lines.clear()
  strategies.get(c.strategy).train(
    c, _views(class_level=False), workdir, log=lines.append
  )  # rerun: resumed, copied again
  assert any("copied into" in l for l in lines)
  assert trained_lib.load_trained(workdir).step == loaded.step


def jax_leaves(tree):
  import jax

  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_every_round_counts_and_pseudo_paired_edges_are_named(tmp_path, monkeypatch):
  """Self-training where a round accepts pix-other pairs: the run's results hold every round
  (the closing line's steps count them all), and the report's rows say which routes run on
  pseudo-paired edges while hops stay the distance in the data's own pairs."""
  from graphbridge.runs import experiment
  from graphbridge.strategies import reporting

  train_rows = np.arange(200)  # matching is stubbed: the true pix-other pairs of 200 train rows
  accepted = pseudo_lib.EdgeMatches(
    "pix", "other", np.stack([train_rows, train_rows], 1), 200, 1.0, True
  )
  monkeypatch.setattr(pseudo_lib, "pseudo_pairs", lambda *a, **k: [accepted])
  c = defaults.shrink_for_tests(defaults.base_config())
  c.pseudo.rounds, c.train.steps, c.train.tensorboard = 1, 6, False
  data = _views(class_level=False)
  run = strategies.get(c.strategy).train(c, data, str(tmp_path / "run"), log=lambda m: None)
  assert len(run.results) == 2 and sum(r.steps_run for r in run.results) == 12
  report = reporting.report(run.model, c, data, None, results=run.results, plots=False)
  assert report["timing"]["steps"] == 12
  line = experiment.closing_line(report["timing"], len(run.results), 1.0, "rounds")
  assert "12 steps over 2 rounds" in line
  by_pair = {(r["query"], r["gallery"]): r for r in report["rows"]}
  assert by_pair[("pix", "proj")]["edges"] == "paired" and by_pair[("pix", "proj")]["hops"] == 1
  zero_shot = by_pair[("pix", "other")]
  assert zero_shot["hops"] == 2 and "pseudo-paired" in zero_shot["edges"], zero_shot
