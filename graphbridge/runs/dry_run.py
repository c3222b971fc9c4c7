"""`graphbridge-train --dry_run`: check config, data and graph, print the plan, train nothing."""

from __future__ import annotations

import os
from typing import Callable

import ml_collections

from graphbridge.data import readers as readers_lib
from graphbridge.runs import validate as validate_lib
from graphbridge.strategies import pseudo as pseudo_lib
from graphbridge.strategies import registry as strategies
from graphbridge.training import checkpoint as checkpoint_lib
from graphbridge.training import identity as identity_lib
from graphbridge.training import optimizer as optimizer_lib


def check_resume(config, dataset, workdir: str, log: Callable[[str], None] = print) -> None:
  """What training would say of the checkpoints in `workdir`: the step it resumes from, or the
  RunMismatchError it refuses with (the config differs from the run's; the data where it is the
  data the checkpoints were trained on, i.e. no pseudo-pair rounds grow it)."""
  _, checkpoints = checkpoint_lib.read_workdir(workdir)
  step = checkpoints.latest_complete_step(log=lambda _: None)
  if step is None:
    if checkpoints.all_steps():
      log(f"workdir: {workdir} holds no usable checkpoint; training would start from scratch")
    return
  meta = checkpoints.restore_meta(step)
  strategy = strategies.get(config.strategy)
  compared = strategy.resume_config(config, dataset)
  if compared is not None:
    problems = identity_lib.config_differences(compared, meta)
    saved_data = meta.get("data", {}).get("content")
    pseudo = (
      config.strategy == "graph" and pseudo_lib.resolve_rounds(config.pseudo.rounds, dataset)[0] > 0
    )
    if saved_data and not pseudo and saved_data != dataset.content_digest():
      problems.append(
        f"data: {dataset.source} differs from {meta['data'].get('source')} the checkpoints were "
        "trained on (other rows, splits, labels or pairs)"
      )
    if problems and not bool(config.train.allow_resume_changes):
      raise identity_lib.mismatch_error(step, checkpoints.directory, problems)
    if problems:
      log(
        f"resuming checkpoint step {step} with changes (train.allow_resume_changes=True):\n  "
        + "\n  ".join(problems)
      )
  log(f"workdir: {workdir} holds checkpoint step {step}; training would resume from there")


def dry_run(
  config: ml_collections.ConfigDict, workdir: str | None = None, log: Callable[[str], None] = print
) -> list[str]:
  """Validate the config, load the data, build what the strategy would train (for translator
  strategies: graph, layout and loss plan; nothing compiled or initialised); log it and the
  resolved config, and return the plan's lines. Raises ConfigError / DataError / GraphError with
  the message training would give, and on a workdir holding checkpoints of another run the
  RunMismatchError training would refuse with."""
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
    check_resume(config, dataset, workdir, log)
  log("dry run: config, data and graph are valid; nothing was trained or written")
  return lines
