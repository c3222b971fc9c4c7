"""DMVAE (Lee & Pavlovic, CVPR-W 2021): the private-shared disentangled multimodal VAE as a
strategy.

Not a translator graph: per modality an encoder to a private and a shared Gaussian latent and a
decoder back (model.py), trained by the shared training loop (trainer.py), scored in the shared
latent and by translation (aligner.py). This module is its `Strategy`: train, restore, graft and
describe, plus the `Model` evaluation and the Python API use. See docs/dmvae.md.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time

import ml_collections
import numpy as np

from graphbridge import defaults
from graphbridge.core.errors import CheckpointError, DataError
from graphbridge.data.dataset import Dataset, subset_modalities
from graphbridge.strategies import reporting
from graphbridge.strategies.base import Log, Model, Strategy, StrategyRun, graft_settings
from graphbridge.strategies.dmvae.aligner import DMVAEAligner
from graphbridge.strategies.dmvae.model import (
  KIND,
  SHARED,
  DMVAEError,
  DMVAESpec,
  init_params,
  spec_from_config,
)
from graphbridge.training.modules import item_name
from graphbridge.strategies.dmvae.trainer import load, train, training_groups
from graphbridge.training.checkpoint import item_digest


def graph_summary(spec: DMVAESpec) -> dict:
  """The report header's "graph": modalities plus the shared latent; encoders m->shared, decoders
  back."""
  return {
    "nodes": [*[list(d) for d in spec.dims], [SHARED, spec.shared_dim]],
    "edges": [e for m in spec.names for e in (f"{m}->{SHARED}", f"{SHARED}->{m}")],
  }


@dataclasses.dataclass
class DMVAEModel(Model):
  """A trained DMVAE. Default routes compare in the shared latent (`a->shared<-b`); every report
  adds the translation routes `a->shared->b` as named routes. initial: the params of the "before"
  model (frozen modules of a graft keep their trained values); None = every module at its init."""

  spec: DMVAESpec
  params: dict
  config: ml_collections.ConfigDict
  meta: dict
  step: int
  workdir: str | None
  trainable: tuple[str, ...] = ()
  initial: dict | None = None
  strategy: str = KIND

  def __post_init__(self):
    self.aligner = DMVAEAligner(self.spec, self.params)

  @property
  def dims(self) -> dict[str, int]:
    return dict(self.spec.dims)

  @property
  def aligners(self) -> list[DMVAEAligner]:
    return [
      self.aligner,
      dataclasses.replace(self.aligner, name=f"{self.aligner.name}-translate", mode="translate"),
    ]

  def initial_aligner(self, seed: int) -> DMVAEAligner:
    return DMVAEAligner(
      self.spec, self.initial if self.initial is not None else init_params(self.spec, int(seed))
    )

  def report_routes(self, dataset) -> tuple[str, ...]:
    return self.aligner.translation_routes(dataset.names)

  def report_header(self) -> dict:
    return {
      "graph": graph_summary(self.spec),
      "step": int(self.step),
      "dmvae": {**self.spec.to_dict(), "trained_modules": list(self.trainable)},
    }

  def check_data(self, dataset: Dataset) -> None:
    for m, d in self.spec.dims:
      if dataset.dims.get(m) != d:
        raise DataError(
          f"{dataset.source}: modality {m} has dim {dataset.dims.get(m)}, the DMVAE "
          f"{'in ' + self.workdir + ' ' if self.workdir else ''}expects {d}"
        )

  def translate(self, x: np.ndarray, route: str) -> np.ndarray:
    """'a->shared': a's shared posterior means (unit rows); 'a->shared->b': decoded as b."""
    return self.aligner.apply_route(route, x)


class DMVAEStrategy(Strategy):
  name = KIND
  summary = "private-shared multimodal VAE: product-of-experts shared latent, cross-reconstruction"

  def describe(self, config, dataset: Dataset) -> list[str]:
    """Modules, latent sizes, kappa and training groups (nothing built)."""
    spec = spec_from_config(config, dataset.dims)
    groups = training_groups(
      dataset, spec.names, float(config.dmvae.unpaired_weight), log=lambda _: None
    )
    n_rows = len(groups) * int(config.data.batch_size)
    return [
      f"dmvae: modules {', '.join(spec.modules())}; shared latent {spec.shared_dim}, private "
      f"{spec.private_dim}, MLP hidden {spec.arch.hidden}",
      f"dmvae: kappa {', '.join(f'{m} {spec.kappa_for(m):g}' for m in spec.names)}; cross_weight "
      f"{float(config.dmvae.cross_weight):g}, "
      f"unpaired_weight {float(config.dmvae.unpaired_weight):g}",
      f"dmvae: groups {', '.join('+'.join(g.modalities) for g in groups)}; {n_rows} rows per step",
    ]

  def train(self, config, dataset: Dataset, workdir: str | None, log: Log = print) -> StrategyRun:
    t0 = time.perf_counter()
    result = train(config, workdir, dataset, log=log)
    model = DMVAEModel(
      result.spec,
      result.params,
      config,
      {},
      int(result.state["step"]),
      workdir,
      trainable=tuple(result.trainable),
    )
    return StrategyRun(KIND, model, [result], time.perf_counter() - t0)

  def load(self, workdir: str, step: int | None = None, log: Log | None = None) -> DMVAEModel:
    loaded = load(workdir, step, log=log)
    model = DMVAEModel(
      loaded.spec,
      loaded.params,
      defaults.complete(loaded.meta["config"]),
      loaded.meta,
      loaded.step,
      workdir,
      trainable=tuple(loaded.meta.get("trainable", ())),
    )
    model.skipped = loaded.skipped
    return model

  def train_base(self, config, workdir: str, dataset: Dataset, log: Log = print) -> StrategyRun:
    config = copy.deepcopy(config)
    config.eval.paths = ""  # graph routes; the DMVAE report adds its own translation routes
    return self.train(config, dataset, workdir, log)

  def graft(
    self,
    config,
    from_workdir: str,
    workdir: str,
    dataset: Dataset,
    report: bool = True,
    plots: bool = True,
    log: Log = print,
  ) -> "DMVAEGraft":
    """Add the modality of config.graft that the DMVAE in from_workdir lacks: its encoder and
    decoder train against the frozen old modules (same latent sizes, architecture and kappa as the
    old run), whose checkpoint items are copied byte for byte (checked before returning)."""
    config = copy.deepcopy(config)
    config.eval.paths = ""  # graph routes; the DMVAE report adds its own translation routes
    keep = list(load(from_workdir, log=lambda _: None).spec.names) + [
      str(graft_settings(config).modality)
    ]
    dataset = subset_modalities(dataset, [m for m in dataset.names if m in keep])
    return graft(config, from_workdir, workdir, dataset, log=log, report=report, plots=plots)


@dataclasses.dataclass
class DMVAEGraft:
  result: object  # trainer.DMVAEResult
  old_step: int
  item_digests: dict[
    str, str
  ]  # {old module: sha256 of its item}, equal in the old and new checkpoint
  report: dict | None


def module_digest(step_dir: str, module: str) -> str:
  """sha256 over the relative paths and bytes of every file of a module's checkpoint item."""
  return item_digest(os.path.join(step_dir, item_name(module)))


def graft(
  config,
  from_workdir: str,
  workdir: str,
  dataset: Dataset,
  log: Log = print,
  report: bool = False,
  plots: bool = False,
) -> DMVAEGraft:
  """Train the modalities of `dataset` that the DMVAE in `from_workdir` lacks."""
  old = load(from_workdir, log=log)  # a damaged newer step is skipped with a line naming it
  new = [m for m in dataset.names if m not in old.spec.names]
  missing = [m for m in old.spec.names if m not in dataset.modalities]
  if missing:
    raise DMVAEError(
      f"dmvae graft: the data lacks the old modalities {', '.join(missing)} (it has "
      f"{', '.join(dataset.names)})"
    )
  for m, d in old.spec.dims:
    if dataset.dims[m] != d:
      raise DMVAEError(
        f"dmvae graft: {m} has dim {dataset.dims[m]} in the data, {d} in {from_workdir}"
      )
  if not new:
    raise DMVAEError(
      f"dmvae graft: every modality of the data is already in {from_workdir} "
      f"({', '.join(old.spec.names)}); nothing to graft"
    )
  spec = old.spec.with_modalities({**dict(old.spec.dims), **{m: dataset.dims[m] for m in new}})
  log(
    f"dmvae graft: new {', '.join(new)} against frozen {', '.join(old.spec.names)} "
    f"(step {old.step})"
  )
  result = train(
    config, workdir, dataset, log=log, frozen_params=old.params, frozen_from=old.step_dir, spec=spec
  )
  grafted = load(workdir)
  digests = {}
  for m in old.spec.modules():
    before, after = module_digest(old.step_dir, m), module_digest(grafted.step_dir, m)
    if before != after:
      raise CheckpointError(f"dmvae graft: frozen module {m} changed in {grafted.step_dir}")
    digests[m] = after
  summary = None
  if report:
    model = DMVAEModel(
      spec,
      result.params,
      config,
      {},
      int(result.state["step"]),
      workdir,
      trainable=tuple(result.trainable),
      initial={**old.params, **init_params(spec, int(config.seed), new)},
    )
    summary = reporting.report(
      model, config, dataset, workdir, results=[result], plots=plots, log=log
    )
  return DMVAEGraft(result, old.step, digests, summary)


STRATEGY = DMVAEStrategy()
