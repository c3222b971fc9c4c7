"""Training a DMVAE: sampling groups of rows, the jitted step, checkpoints."""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Callable, Mapping, Sequence
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from graphbridge.data import dataset as dataset_lib
from graphbridge.strategies.dmvae.model import (
  DMVAEError,
  DMVAESpec,
  KIND,
  row_losses,
  spec_from_config,
)
from graphbridge.training import modules as modules_lib
from graphbridge.training import optimizer as optimizer_lib
from graphbridge.strategies.dmvae.model import init_params
from typing import Any

PyTree = Any


@dataclasses.dataclass(frozen=True)
class Group:
  """One kind of training row: a pair set (two modalities) or one modality's unpaired rows."""

  modalities: tuple[str, ...]
  key: str  # name in the sampler arrays: "pairs:a:b" or "rows:m"
  weight: float


def training_groups(
  dataset: dataset_lib.Dataset,
  trainable: Sequence[str],
  unpaired_weight: float,
  log: Callable[[str], None] = print,
) -> list[Group]:
  """Every train pair set that touches a trainable modality, then each trainable modality's rows."""
  groups = []
  for a, b in dataset.pairs:
    if a not in trainable and b not in trainable:
      continue
    if len(dataset.pairs_for(a, b)) == 0:
      log(f"dmvae: pair set {a}<->{b} has no pair with both rows in the train split; skipped")
      continue
    groups.append(Group((a, b), f"pairs:{a}:{b}", 1.0))
  for m in trainable:
    if unpaired_weight > 0 and int(dataset.modalities[m].train.sum()):
      groups.append(Group((m,), f"rows:{m}", float(unpaired_weight)))
  if not groups:
    raise DMVAEError(
      f"dmvae: nothing to train on for {', '.join(trainable)} (no train pairs or rows)"
    )
  return groups


def sampler_arrays(dataset: dataset_lib.Dataset, groups: Sequence[Group]) -> dict:
  """{"emb": {m: [N_m, d_m]}, "index": {group key: [P, k] rows}} as numpy."""
  used = sorted({m for g in groups for m in g.modalities})
  emb = {m: np.asarray(dataset.modalities[m].emb, np.float32) for m in used}
  index = {}
  for g in groups:
    if len(g.modalities) == 2:
      index[g.key] = dataset.pairs_for(*g.modalities).astype(np.int32)
    else:
      index[g.key] = np.nonzero(dataset.modalities[g.modalities[0]].train)[0].astype(np.int32)[
        :, None
      ]
  return {"emb": emb, "index": index}


def make_loss_fn(spec: DMVAESpec, groups: Sequence[Group], batch_size: int, cross_weight: float):
  """loss(trainable, frozen, arrays, key) -> (scalar, metrics).

  batch_size rows of every group are sampled inside and put into one batch of rows with presence
  masks (a modality missing from a group's rows is masked), so each module runs once per step."""
  names = sorted({m for g in groups for m in g.modalities}, key=spec.names.index)

  def loss_fn(trainable, frozen, arrays, key):
    params = {**frozen, **trainable}
    k_rows, k_model = jax.random.split(key)
    xs = {m: [] for m in names}
    present = {m: [] for m in names}
    for i, g in enumerate(groups):  # a trace-time loop: one fused program
      index = arrays["index"][g.key]
      pick = index[
        jax.random.randint(jax.random.fold_in(k_rows, i), (batch_size,), 0, index.shape[0])
      ]
      for m in names:
        if m in g.modalities:
          xs[m].append(arrays["emb"][m][pick[:, g.modalities.index(m)]])
          present[m].append(jnp.ones((batch_size,), jnp.float32))
        else:
          xs[m].append(jnp.zeros((batch_size, arrays["emb"][m].shape[1]), arrays["emb"][m].dtype))
          present[m].append(jnp.zeros((batch_size,), jnp.float32))
    xs = {m: jnp.concatenate(v) for m, v in xs.items()}
    present = {m: jnp.concatenate(v) for m, v in present.items()}
    loss, parts = row_losses(spec, params, xs, present, k_model, cross_weight)
    weights = jnp.repeat(jnp.asarray([g.weight for g in groups], jnp.float32), batch_size)
    # mean over each group's rows, summed over groups (weighted)
    metrics = {f"loss/{k}": jnp.sum(weights * v) / batch_size for k, v in parts.items()}
    for i, g in enumerate(groups):
      metrics[f"loss/group/{'+'.join(g.modalities)}"] = jnp.mean(
        loss[i * batch_size : (i + 1) * batch_size]
      )
    total = jnp.sum(weights * loss) / batch_size
    metrics["loss/total"] = total
    return total, metrics

  return loss_fn


def _optimizer_key(config) -> str:
  """What train.make_optimizer reads, as a hashable key (runs that share it share one compiled
  step)."""
  return json.dumps(
    {
      "optim": config.optim.to_dict(),
      "train_steps": int(config.train.steps),
      "finetune": config.finetune.to_dict(),
    },
    sort_keys=True,
  )


@functools.lru_cache(maxsize=8)
def _cached_step(
  spec: DMVAESpec,
  groups: tuple[Group, ...],
  batch_size: int,
  cross_weight: float,
  optimizer_key: str,
) -> Callable:
  """make_step for a config's optimizer; seeds and repeated runs (compare, tests) compile once."""
  config = ml_collections.ConfigDict(json.loads(optimizer_key))
  config.train = ml_collections.ConfigDict({"steps": config.train_steps})
  return modules_lib.make_step(
    make_loss_fn(spec, groups, batch_size, cross_weight), optimizer_lib.make_optimizer(config)
  )


def _meta(
  spec: DMVAESpec,
  config,
  dataset: dataset_lib.Dataset,
  trainable: Sequence[str],
  frozen: Sequence[str],
) -> dict:
  return {
    "kind": KIND,
    "spec": spec.to_dict(),
    "trainable": list(trainable),
    "frozen": list(frozen),
    "config": json.loads(config.to_json_best_effort()),
    "data": {"source": dataset.source, "fingerprint": dataset.fingerprint()},
  }


@dataclasses.dataclass
class DMVAEResult(modules_lib.ModulesResult):
  """A trained DMVAE (what a DMVAE StrategyRun's `results` hold)."""

  spec: DMVAESpec | None = None


def train(
  config: ml_collections.ConfigDict,
  workdir: str | None,
  dataset: dataset_lib.Dataset,
  log: Callable[[str], None] = print,
  frozen_params: Mapping[str, PyTree] | None = None,
  frozen_from: str | None = None,
  spec: DMVAESpec | None = None,
) -> DMVAEResult:
  """Train a DMVAE on `dataset` (checkpoints and metrics.jsonl under workdir; None: neither).

  frozen_params: {module: params} held fixed (grafting); only the other modalities' encoders and
  decoders train, on the pair sets and rows that involve them. frozen_from: the step directory the
  frozen modules' items are copied from, byte for byte, into every checkpoint. Resumes from the
  latest complete checkpoint in workdir."""
  spec = spec or spec_from_config(config, dataset.dims)
  frozen = dict(frozen_params or {})
  frozen_modalities = sorted({k.partition(":")[2] for k in frozen})
  trainable_modalities = [m for m in spec.names if m not in frozen_modalities]
  if not trainable_modalities:
    raise DMVAEError("dmvae: every modality is frozen; nothing to train")
  modules = spec.modules(trainable_modalities)
  cfg = config.dmvae
  groups = training_groups(dataset, trainable_modalities, float(cfg.unpaired_weight), log)
  seed = int(config.seed)
  step = _cached_step(
    spec,
    tuple(groups),
    int(config.data.batch_size),
    float(cfg.cross_weight),
    _optimizer_key(config),
  )
  log(
    f"dmvae: modalities {', '.join(f'{m}[{d}]' for m, d in spec.dims)}; "
    f"shared {spec.shared_dim}, private {spec.private_dim}; "
    f"kappa {', '.join(f'{m} {spec.kappa_for(m):g}' for m in spec.names)}; "
    f"training {', '.join(modules)}"
    + (f" (frozen: {', '.join(sorted(frozen))})" if frozen else "")
    + f"; groups {', '.join('+'.join(g.modalities) for g in groups)}; "
    f"{int(config.train.steps)} steps"
  )
  line = lambda v: (
    f"loss {v['loss/total']:.3f}  recon {v['loss/recon']:.3f}  cross {v['loss/cross']:.3f}  "
    f"kl {v['loss/kl']:.3f}  lr {v['lr']:.2e}"
  )
  same = lambda meta: meta.get("kind") == KIND and meta.get("spec") == spec.to_dict()
  result = modules_lib.train_modules(
    config,
    workdir,
    init_params(spec, seed, trainable_modalities),
    step,
    optimizer_lib.make_optimizer(config),
    sampler_arrays(dataset, groups),
    jax.random.PRNGKey(seed + 1),
    _meta(spec, config, dataset, modules, sorted(frozen)),
    same,
    line,
    frozen=frozen,
    frozen_from=frozen_from,
    log=log,
  )
  return DMVAEResult(
    **{f.name: getattr(result, f.name) for f in dataclasses.fields(result)}, spec=spec
  )


@dataclasses.dataclass
class LoadedDMVAE:
  spec: DMVAESpec
  params: dict
  step: int
  step_dir: str
  meta: dict
  skipped: tuple = ()  # (step, problem) of newer steps skipped as damaged


def load(workdir: str, step: int | None = None, log=None) -> LoadedDMVAE:
  """The parameters of every module of a trained DMVAE workdir (newest usable step by default; a
  newer damaged one is skipped with a line in `log`, default stderr)."""

  def templates(meta):
    spec = DMVAESpec.from_dict(meta["spec"])
    return {m: init_params(spec, 0, [m.partition(":")[2]])[m] for m in spec.modules()}

  loaded = modules_lib.load_modules(workdir, templates, KIND, step, log=log)
  return LoadedDMVAE(
    DMVAESpec.from_dict(loaded.meta["spec"]),
    loaded.params,
    loaded.step,
    loaded.step_dir,
    loaded.meta,
    loaded.skipped,
  )
