"""The field's alignment methods as strategies of one pipeline, in a registry.

Every strategy is a translator graph trained by the same jitted step, optimizer, NaN guard and
per-edge checkpoints, and scored by the same evaluation code; they differ in the graph and the
objective. Each lives in its own module here and returns its stages as objects (`base.Stage`):

* graph     translators on the edges of the data's pair graph (the seed method; graph.py)
* pivot     ImageBind / VIP-ANT binding into one pivot modality (pivot.py)
* pairwise  CLIP-style projection of every modality into one shared space (pairwise.py)
* cmcr      C-MCR: two contrastive spaces connected through a common one (cmcr.py)
* dmvae     the private-shared disentangled multimodal VAE (dmvae.py; the model is graphbridge/dmvae.py):
            not a translator graph, so it trains and reports itself (Strategy.run)

A new strategy is one module defining `STRATEGY = Strategy(name, stages)` plus one line below
(or `strategies.register(...)` from user code); `config_check` takes the choices of
`config.strategy` and `compare.strategies` from this registry. See docs/extending.md.

Post-hoc alignment and linear baselines wrap or replace any strategy's aligner (aligners.py).
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable

import ml_collections

from graphbridge.aligners import BASELINES, POSTHOC, LinearAligner, PosthocAligner  # noqa: F401
from graphbridge.config_check import ConfigError
from graphbridge.data import Dataset
from graphbridge.strategies import cmcr as _cmcr
from graphbridge.strategies import dmvae as _dmvae
from graphbridge.strategies import graph as _graph
from graphbridge.strategies import pairwise as _pairwise
from graphbridge.strategies import pivot as _pivot
from graphbridge.strategies.base import Stage, Strategy, pair_partners, with_overrides  # noqa: F401
from graphbridge.strategies.cmcr import cmcr_roles  # noqa: F401
from graphbridge.strategies.pairwise import SHARED_NODE  # noqa: F401
from graphbridge.strategies.pivot import choose_pivot  # noqa: F401

REGISTRY: dict[str, Strategy] = {}


def register(strategy: Strategy, replace: bool = False) -> Strategy:
  """Add `strategy` under strategy.name (config.strategy selects it). replace=False refuses to
  shadow a registered name."""
  if not isinstance(strategy, Strategy):
    raise TypeError(f"register takes a strategies.Strategy, got {type(strategy).__name__}")
  if strategy.name in REGISTRY and not replace:
    raise ValueError(f"strategy {strategy.name!r} is already registered "
                     "(pass replace=True to override)")
  REGISTRY[strategy.name] = strategy
  return strategy


def unregister(name: str) -> None:
  REGISTRY.pop(name, None)


def names() -> tuple[str, ...]:
  """The registered strategy names, in registration order."""
  return tuple(REGISTRY)


def get(name: str) -> Strategy:
  if name not in REGISTRY:
    raise ConfigError(f"strategy {name!r} is not known (choices: {', '.join(REGISTRY)})")
  return REGISTRY[name]


for _module in (_graph, _pivot, _pairwise, _cmcr, _dmvae):
  register(_module.STRATEGY)


def check_strategy(name: str) -> str:
  return get(name).name


def unlocked_copy(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(config.to_dict())


def stages(config: ml_collections.ConfigDict, dataset: Dataset) -> list[Stage]:
  """The stages `config.strategy` would train on `dataset` (nothing built or compiled)."""
  built = get(config.strategy).stages(config, dataset)
  if not built:
    raise ConfigError(f"strategy {config.strategy!r} returned no stages")
  return built


# ---- running a strategy -------------------------------------------------------------------------

@dataclasses.dataclass
class StrategyRun:
  strategy: str
  aligner: object                     # evaluate.Aligner of the trained translators
  results: list                       # train.TrainResult per stage
  seconds: float

  @property
  def result(self):
    return self.results[-1]


def aligner_for(strategy: str, layout, params, compute_dtype: str, name: str | None = None):
  """The evaluation aligner of `strategy`'s translators (its hook, else evaluate.GraphAligner);
  unknown names (runs of strategies not registered here) get the GraphAligner."""
  if strategy in REGISTRY:
    return REGISTRY[strategy].make_aligner(layout, params, compute_dtype, name)
  from graphbridge.evaluate import GraphAligner
  return GraphAligner(layout, params, compute_dtype, name=name or strategy)


PUBLISHED = "kept_round.json"   # in a workdir whose outputs were copied from a round's (publish_round)
ROUND_OUTPUTS = ("checkpoints", "metrics.jsonl", "tensorboard")


def publish_round(round_dir: str, workdir: str, kept: int, rounds: int, log: Callable[[str], None] = print) -> None:
  """Self-training stopped before its last round (no pseudo-pair passed the gate), so the kept model
  lives in round_dir, not in the workdir where a finished run's model is. Copy its checkpoints,
  metrics.jsonl and tensorboard events into the workdir, so `graphbridge.load(workdir)`,
  launch/evaluate.py and the report's training curves find them, and record the copy in
  kept_round.json. Outputs already in the workdir are replaced only when an earlier copy put them
  there (a rerun); anything else there is left as it is, with a message."""
  import json
  import shutil
  marker = os.path.join(workdir, PUBLISHED)
  copied_before = os.path.exists(marker)
  kept_out = [name for name in ROUND_OUTPUTS if os.path.exists(os.path.join(workdir, name))]
  if kept_out and not copied_before:
    log(f"pseudo-pairs: kept round {kept}'s model is in {round_dir}; {workdir} already holds "
        f"{', '.join(kept_out)} from another run, left as they are")
    return
  for name in ROUND_OUTPUTS:
    src, dst = os.path.join(round_dir, name), os.path.join(workdir, name)
    if not os.path.exists(src):
      continue
    tmp = dst + ".copying"
    for stale in (tmp, dst):
      if os.path.isdir(stale):
        shutil.rmtree(stale)
      elif os.path.exists(stale):
        os.remove(stale)
    (shutil.copytree if os.path.isdir(src) else shutil.copy2)(src, tmp)
    os.replace(tmp, dst)
  with open(marker, "w") as f:
    json.dump({"round": kept, "rounds": rounds, "copied_from": os.path.basename(round_dir)}, f)
  log(f"pseudo-pairs: kept the model of round {kept} ({os.path.basename(round_dir)}/); its checkpoints and "
      f"metrics are copied into {workdir}")


def run_strategy(config: ml_collections.ConfigDict, dataset: Dataset, workdir: str | None,
                 log: Callable[[str], None] = print) -> StrategyRun:
  """Train `config.strategy`'s stages on `dataset` (checkpoints under workdir).

  Stages run in order; a stage's `freeze_stages` edges come from the earlier results, frozen."""
  from graphbridge import train as train_lib
  strategy = get(config.strategy)
  if strategy.run is not None:  # not a translator graph: the strategy trains itself
    return strategy.run(config, dataset, workdir, log)
  t0 = time.perf_counter()
  plan = stages(config, dataset)
  results = []
  trained_on = dataset
  rounds = 0
  if strategy.name == "graph":
    from graphbridge import pseudo  # self-training rounds on gated pseudo-pairs (pseudo.py)
    requested = int((config.get("pseudo", None) or {}).get("rounds", pseudo.AUTO))
    rounds, why = pseudo.resolve_rounds(requested, dataset)
    if requested != 0:
      log(f"pseudo-pairs: {rounds} round{'' if rounds == 1 else 's'} ({why})")
  if rounds > 0:
    round_dir = lambda r: workdir if (workdir is None or r == rounds) else os.path.join(workdir, f"round{r}")
    trained_rounds = []

    def train_round(ds, r):
      trained_rounds.append(r)
      return train_lib.train(config, round_dir(r), dataset=ds, log=log)

    # each round rebuilds the graph from its data: accepted pseudo-pairs may add edges
    result, trained_on = pseudo.self_train(
        config, dataset, train_round,
        lambda res: strategy.make_aligner(res.setup.layout, res.params, res.setup.compute_dtype), log=log)
    import jax
    if workdir is not None and trained_rounds[-1] != rounds and jax.process_index() == 0:
      # stopped early: the kept model is a round's (process 0 writes, as for checkpoints)
      publish_round(round_dir(trained_rounds[-1]), workdir, trained_rounds[-1], rounds, log)
    plan, results = [], [result]
  for i, stage in enumerate(plan):
    if len(plan) > 1 or stage.overrides or stage.objective is not None:
      log(stage.name)
    frozen = {}
    for j in stage.freeze_stages:
      if not 0 <= j < i:
        raise ConfigError(f"strategy {strategy.name!r}: stage {i} freezes stage {j}, "
                          "which is not an earlier one")
      frozen.update(results[j].edge_params())
    stage_dir = os.path.join(workdir, stage.subdir) if workdir and stage.subdir else workdir
    stage_config = with_overrides(config, stage.overrides)
    results.append(train_lib.train(stage_config, stage_dir, dataset=dataset, log=log,
                                   graph=stage.graph, objective=stage.objective,
                                   frozen_params=frozen or None))
  final = results[-1]
  aligner = strategy.make_aligner(final.setup.layout, final.params, final.setup.compute_dtype)
  if hasattr(aligner, "bind_data"):
    aligner.bind_data(trained_on)  # pseudo-paired edges are paired hops; cycle-only edges are not
  return StrategyRun(strategy.name, aligner, results, time.perf_counter() - t0)
