"""`graphbridge-train --dry_run`: check config, data and graph, print the plan, train nothing."""

from __future__ import annotations

import os
from typing import Callable

import ml_collections


def stages(config: ml_collections.ConfigDict, dataset) -> list[tuple[str, object]]:
  """[(stage name, train.Setup)] the strategy would train, built exactly as training builds them
  (graph, translator layout, loss plan), without compiling or initialising anything."""
  from graphbridge import strategies as strat_lib
  from graphbridge import train as train_lib
  out = []
  planned = strat_lib.stages(config, dataset)
  for stage in planned:
    frozen = [e.name for j in stage.freeze_stages for e in planned[j].graph.edges]
    out.append((stage.name, train_lib.build_setup(strat_lib.with_overrides(config, stage.overrides), dataset,
                                                  graph=stage.graph, frozen=frozen, objective=stage.objective)))
  return out


def dry_run(config: ml_collections.ConfigDict, workdir: str | None = None,
            log: Callable[[str], None] = print) -> list[tuple[str, object]]:
  """Validate the config, load the data, build graph and loss plan; log them and the resolved
  config. Raises ConfigError / DataError / GraphError with the message training would give."""
  from graphbridge import checkpoint as ckpt_lib
  from graphbridge import config_check
  from graphbridge import data as data_lib
  from graphbridge import train as train_lib
  from graphbridge.translators import count_params

  config_check.validate(config)
  dataset = data_lib.load_for_config(config)
  log("resolved config:\n" + config.to_json_best_effort(indent=2, sort_keys=True))
  log(f"data: {dataset.source}\n{dataset.summary()}")
  built = stages(config, dataset)
  for name, setup in built:
    layout = setup.layout
    n_params = sum(b.size * count_params(init_params_shape(layout, b)) for b in layout.trainable_buckets)
    log(f"{name}: graph {setup.graph.describe()}")
    log(f"{name}: plan {setup.plan.describe()}; {n_params:,} trainable parameters; compute dtype "
        f"{setup.compute_dtype}, batch {setup.batch_size}")
  log(f"steps: {train_lib.total_steps(config)} (train.steps {int(config.train.steps)} + finetune.steps "
      f"{int(config.finetune.steps)})")
  directory = os.path.join(workdir, "checkpoints") if workdir else None
  if directory and os.path.isdir(directory):
    steps = ckpt_lib.Checkpoints(directory, max_to_keep=None, async_save=False, read_only=True).all_steps()
    if steps:
      log(f"workdir: {workdir} holds checkpoint step {max(steps)}; training would resume from there")
  log("dry run: config, data and graph are valid; nothing was trained or written")
  return built


def init_params_shape(layout, bucket):
  """Abstract params of one edge of `bucket` (shapes only: nothing is initialised)."""
  import jax

  from graphbridge.translators import init_edge_params
  edge = bucket.edges[0]
  return jax.eval_shape(lambda: init_edge_params(edge, bucket.d_in, bucket.d_out, bucket.arch, 0))
