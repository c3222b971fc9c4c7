"""What a strategy is: one method of the field, owning its whole life cycle through hooks.

A `Strategy` trains a model on a dataset (`train`), restores it from a workdir (`load`), adds a
modality to a trained one (`graft`) and describes its plan without training (`describe`, for the
dry run). Runs, the report, grafting and the Python API only call these hooks; none of them asks
which strategy a workdir holds (strategies.registry.for_workdir reads the name from its checkpoint).

What `train` and `load` give back is a `Model`: the aligner evaluation scores, the same model at
initialisation (the report's "before"), translation of new rows. Most strategies are translators
on a graph and only say which stages to train (`translator.TranslatorStrategy`); a model that is
not (DMVAE, strategies/dmvae/) subclasses `Strategy` and `Model` itself. docs/extending.md has a
recipe of each.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import ml_collections
import numpy as np

from graphbridge import defaults
from graphbridge.core.errors import ConfigError, GraftError

Log = Callable[[str], None]


class Model:
  """A trained (or restored) model, as evaluation and the Python API use it.

  Subclasses set `strategy`, `config`, `meta`, `step`, `workdir` and `aligner`, and override the
  hooks below that do not fit their model."""

  strategy: str
  config: ml_collections.ConfigDict
  meta: dict
  step: int
  workdir: str | None
  aligner: Any  # evaluation.encoding.Aligner of the trained model
  # (step, problem) of newer checkpoint steps skipped as damaged when it was loaded, newest first
  skipped: tuple = ()

  @property
  def dims(self) -> dict[str, int]:
    """{modality: embedding dim} of the modalities the model takes (no virtual spaces)."""
    raise NotImplementedError

  @property
  def modalities(self) -> tuple[str, ...]:
    return tuple(self.dims)

  @property
  def aligners(self) -> list:
    """Every retrieval view of the model worth comparing (compare.py scores each)."""
    return [self.aligner]

  def initial_aligner(self, seed: int):
    """The same model at initialisation (the report's "before" columns); None if there is none."""
    return None

  def report_routes(self, dataset) -> tuple[str, ...]:
    """Named routes every report of this model adds to the default ones."""
    return ()

  def report_header(self) -> dict:
    """Entries at the top of report.json: {"graph": ..., "step": ...}."""
    return {"step": int(self.step)}

  def check_data(self, dataset) -> None:
    """DataError / GraphError if `dataset` cannot be evaluated with this model (missing modality,
    another dim)."""

  def translate(self, x: np.ndarray, route: str) -> np.ndarray:
    """x: [rows, d_query] -> [rows, d] along `route`, L2-normalised, float32."""
    raise NotImplementedError(f"{type(self).__name__} does not translate")


@dataclasses.dataclass
class StrategyRun:
  """A finished training: the model and one result per trained stage (each with steps_run,
  seconds, compile_seconds, final_metrics and state["step"])."""

  strategy: str
  model: Model
  results: list
  seconds: float

  @property
  def result(self):
    return self.results[-1]

  @property
  def aligner(self):
    return self.model.aligner

  @property
  def aligners(self) -> list:
    return self.model.aligners


class Strategy:
  """A registered strategy (strategies.register). Override the hooks; `name` selects it
  (config.strategy, compare.strategies).

  settings: the strategy's own config block (config[name]) with its defaults, for a strategy
    defined outside graphbridge (the built-in ones are declared in defaults.py); config
    validation accepts it and fills in what a config leaves out."""

  name: str = ""
  summary: str = ""
  settings: ml_collections.ConfigDict | None = None

  def describe(self, config, dataset) -> list[str]:
    """The plan's lines for the dry run (nothing built or compiled)."""
    return [f"strategy {self.name}: {self.summary}"]

  def train(self, config, dataset, workdir: str | None, log: Log = print) -> StrategyRun:
    """Train on `dataset`; checkpoints and metrics under `workdir` (None: neither)."""
    raise NotImplementedError(f"strategy {self.name!r} does not train")

  def load(self, workdir: str, step: int | None = None, log: Log | None = None) -> Model:
    """The model in `workdir` (its newest usable checkpoint, or `step`)."""
    raise NotImplementedError(f"strategy {self.name!r} cannot restore a workdir")

  def graft(
    self,
    config,
    from_workdir: str,
    workdir: str,
    dataset,
    report: bool = True,
    plots: bool = True,
    log: Log = print,
  ):
    """Add config.graft.modality to the model in `from_workdir` (whose files are only read),
    training in `workdir`."""
    raise GraftError(f"strategy {self.name!r} does not support grafting")

  def resume_config(self, config, dataset):
    """The config the checkpoints in a workdir are compared with on a resume (the dry run checks
    them as training would), or None where the strategy does not compare configs on resuming."""
    return None

  def train_base(self, config, workdir: str, dataset, log: Log = print) -> StrategyRun:
    """The first half of a graft's worked example: train on `dataset` (the data without the
    modality to graft). The default is `train`."""
    return self.train(config, dataset, workdir, log)


def with_overrides(
  config: ml_collections.ConfigDict, overrides: Mapping[str, Any]
) -> ml_collections.ConfigDict:
  """An unlocked copy of `config` with dotted `overrides` set (the keys must exist)."""
  out = ml_collections.ConfigDict(config.to_dict())
  for dotted, value in overrides.items():
    node = out
    *parents, leaf = dotted.split(".")
    for part in parents:
      node = node[part]
    if leaf not in node:
      raise ConfigError(f"stage override {dotted!r}: no such config field")
    node[leaf] = value
  return out


def pair_partners(dataset, modality: str) -> list[str]:
  """The modalities `modality` has pair sets with, in the data's pair order."""
  return [b if a == modality else a for a, b in dataset.pairs if modality in (a, b)]


def graft_settings(config) -> ml_collections.ConfigDict:
  """config.graft (graft.modality, graft.connect_to, ...); GraftError without one."""
  if "graft" not in config:
    raise GraftError(
      "the config has no `graft` block (graft.modality, graft.connect_to); start from "
      "configs/graft_audio.py"
    )
  return defaults.complete(config).graft


def timing(results: Sequence) -> dict:
  """report.json's timing of a training: seconds, compile seconds and steps over its stages."""
  return {
    "train_seconds": sum(r.seconds for r in results),
    "compile_seconds": sum(r.compile_seconds for r in results),
    "steps": sum(r.steps_run for r in results),
  }
