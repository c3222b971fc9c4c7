"""`graphbridge-train --dry_run`: check config, data and graph, print the plan, train nothing."""

from __future__ import annotations

import os
from typing import Callable

import ml_collections

from graphbridge.data import readers as readers_lib
from graphbridge.runs import validate as validate_lib
from graphbridge.strategies import registry as strategies
from graphbridge.training import checkpoint as checkpoint_lib
from graphbridge.training import optimizer as optimizer_lib


def dry_run(
  config: ml_collections.ConfigDict, workdir: str | None = None, log: Callable[[str], None] = print
) -> list[str]:
  """Validate the config, load the data, build what the strategy would train (for translator
  strategies: graph, layout and loss plan; nothing compiled or initialised); log it and the
  resolved config, and return the plan's lines. Raises ConfigError / DataError / GraphError with
  the message training would give."""
  validate_lib.validate(config)
  dataset = readers_lib.load_for_config(config)
  log("resolved config:\n" + config.to_json_best_effort(indent=2, sort_keys=True))
  log(f"data: {dataset.source}\n{dataset.summary()}")
  lines = strategies.get(config.strategy).describe(config, dataset)
  for line in lines:
    log(line)
  log(
    f"steps: {optimizer_lib.total_steps(config)} (train.steps {int(config.train.steps)} + "
    f"finetune.steps {int(config.finetune.steps)})"
  )
  directory = os.path.join(workdir, "checkpoints") if workdir else None
  if directory and os.path.isdir(directory):
    steps = checkpoint_lib.Checkpoints(
      directory, max_to_keep=None, async_save=False, read_only=True
    ).all_steps()
    if steps:
      log(
        f"workdir: {workdir} holds checkpoint step {max(steps)}; training would resume from there"
      )
  log("dry run: config, data and graph are valid; nothing was trained or written")
  return lines
