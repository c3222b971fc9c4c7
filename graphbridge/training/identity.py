"""A run's identity in its checkpoints, and resuming only the same run (or a change asked
for on purpose)."""

from __future__ import annotations

import json
import logging
from typing import Callable, Mapping, Sequence
from graphbridge.core import errors
from graphbridge.training import checkpoint as checkpoint_lib
from graphbridge.data import dataset as dataset_lib
from graphbridge.core.graph import ModalityGraph
from graphbridge.core.errors import RunMismatchError
from graphbridge.training.setup import Setup
from graphbridge.training.state import items_to_state
from graphbridge import defaults


# Config keys a resume may change without changing what the run computes (docs/reliability.md).
# train.steps may only grow; anything else needs --config.train.allow_resume_changes=True.
SAFE_RESUME_CHANGES = (
  "train.log_every",
  "train.print_every",
  "train.checkpoint_every",
  "train.keep_checkpoints",
  "train.tensorboard",
  "train.allow_resume_changes",
  "data.path",
  "data.name",
  "data.prefetch",
  "eval.",
  "posthoc",
  "compare.",
  "mesh.",  # the checkpoint format is the single-device one: any mesh resumes it
  "model.edge_apply",
)  # how stacked edges run: the same function either way


def plan_identity(setup: Setup) -> dict:
  """What the loss plan computes: its description and the names of its terms by kind."""
  plan = setup.plan
  terms = (
    {k: [str(n) for n in v] for k, v in plan.term_names().items()}
    if hasattr(plan, "term_names")
    else {}
  )
  return {
    "describe": plan.describe() if hasattr(plan, "describe") else type(plan).__name__,
    "terms": terms,
  }


def config_dict(config) -> dict:
  return json.loads(config.to_json_best_effort()) if hasattr(config, "to_json_best_effort") else {}


def run_meta(
  setup: Setup, config, dataset: dataset_lib.Dataset | None, history: Sequence[Mapping] = ()
) -> dict:
  """The run's identity, stored in every checkpoint step: layout (graph, architectures), resolved
  config, loss plan, data fingerprint, and the changes accepted on earlier resumes."""
  meta = {
    "layout": setup.layout.to_dict(),
    "compute_dtype": setup.compute_dtype,
    "config": config_dict(config),
    "plan": plan_identity(setup),
  }
  if dataset is not None:
    meta["data"] = {
      "source": dataset.source,
      "fingerprint": dataset.fingerprint(),
      "content": dataset.content_digest(),
    }
    # nodes without rows (a strategy's projection spaces): evaluation checks the data against them
    meta["virtual_nodes"] = [n for n in setup.graph.node_names if n not in dataset.modalities]
    # edges between modalities without pairs in the data trained on (cycle-only): never a hop of
    # a route. Pseudo-pairs are part of that data, so a loaded run takes the routes the training
    # run's report took, not the ones the data's own pairs alone would give
    meta["cycle_only"] = [
      e.name
      for e in setup.graph.edges
      if e.src in dataset.modalities
      and e.dst in dataset.modalities
      and not dataset.pairs_for(e.src, e.dst).size
    ]
  if history:
    meta["resume_changes"] = list(history)
  return meta


def _flatten(tree, prefix: str = "") -> dict:
  out = {}
  if isinstance(tree, Mapping):
    for k, v in tree.items():
      out.update(_flatten(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: tree}


def _safe_change(key: str, old, new) -> bool:
  if key == "train.steps":
    try:
      return new is not None and old is not None and int(new) >= int(old)
    except (TypeError, ValueError):
      return False
  return any(key == s or (s.endswith(".") and key.startswith(s)) for s in SAFE_RESUME_CHANGES)


def config_differences(config, meta: Mapping) -> list[str]:
  """The config values a resume from a checkpoint with `meta` would change, other than the safe
  ones (SAFE_RESUME_CHANGES): ["optim.lr: 0.002 -> 0.01", ...]."""
  problems = []
  if "config" in meta and hasattr(config, "to_json_best_effort"):
    # both completed: a field added after the checkpoint was written is at its default in both
    old = _flatten(config_dict(defaults.complete(meta["config"])))
    new = _flatten(config_dict(defaults.complete(config)))
    for key in sorted(set(old) | set(new)):
      a, b = old.get(key, "<unset>"), new.get(key, "<unset>")
      if a != b and not _safe_change(key, a, b):
        problems.append(f"{key}: {a!r} -> {b!r}")
  return problems


def mismatch_error(step: int, directory: str, problems: Sequence[str]) -> RunMismatchError:
  """The refusal of a resume that would change the run: its differences, and what to do."""
  listing = "\n  ".join(problems)
  return RunMismatchError(
    f"checkpoint step {step} in {directory} belongs to another run; resuming would change:\n  "
    f"{listing}\nuse a fresh --workdir, the run's own config (config.json in the workdir), or "
    "--config.train.allow_resume_changes=True to continue with these changes on purpose"
  )


def run_differences(
  setup: Setup, config, dataset: dataset_lib.Dataset | None, meta: Mapping
) -> list[str]:
  """Differences between the run a checkpoint's meta describes and the one `config` would train,
  other than the safe ones (SAFE_RESUME_CHANGES): ["optim.lr: 0.002 -> 0.01", ...]."""
  problems = config_differences(config, meta)
  saved_plan = meta.get("plan")
  if saved_plan is not None and saved_plan != plan_identity(setup):
    now = plan_identity(setup)
    for kind in sorted(set(saved_plan.get("terms", {})) | set(now["terms"])):
      a, b = saved_plan.get("terms", {}).get(kind, []), now["terms"].get(kind, [])
      if a != b:
        gone, added = [t for t in a if t not in b], [t for t in b if t not in a]
        problems.append(
          f"loss plan {kind} terms: "
          + ", ".join(
            ([f"removed {', '.join(gone)}"] if gone else [])
            + ([f"added {', '.join(added)}"] if added else [])
            or ["reordered"]
          )
        )
    if saved_plan.get("describe") != now["describe"] and not any(
      p.startswith("loss plan") for p in problems
    ):
      problems.append(f"loss plan: {saved_plan.get('describe')!r} -> {now['describe']!r}")
  saved_data = meta.get("data", {})
  if (
    dataset is not None
    and saved_data.get("content")
    and saved_data["content"] != dataset.content_digest()
  ):
    problems.append(
      f"data: {dataset.source} differs from {saved_data.get('source')} the checkpoints were "
      "trained on (other rows, splits, labels or pairs)"
    )
  return problems


def check_run_identity(
  setup: Setup,
  config,
  dataset: dataset_lib.Dataset | None,
  meta: Mapping,
  step: int,
  directory: str,
  log: Callable[[str], None] = logging.warning,
) -> list[str]:
  """RunMismatchError listing the differences, unless there are none or the config says
  train.allow_resume_changes=True (then they are logged and returned, to be recorded)."""
  problems = run_differences(setup, config, dataset, meta)
  if not problems:
    return []
  listing = "\n  ".join(problems)
  if bool(config.train.allow_resume_changes):
    log(
      f"resuming checkpoint step {step} with changes (train.allow_resume_changes=True):\n  "
      f"{listing}"
    )
    return problems
  raise mismatch_error(step, directory, problems)


def _canonical_graph(graph: Mapping) -> tuple:
  """Node and edge sets: the order of modalities in a data file does not change the graph."""
  return (sorted(tuple(n) for n in graph.get("nodes", [])), sorted(graph.get("edges", [])))


def check_meta_matches(setup: Setup, meta: Mapping, step: int, directory: str) -> None:
  saved = meta.get("layout", {})
  now = setup.layout.to_dict()
  if _canonical_graph(saved.get("graph", {})) != _canonical_graph(now["graph"]):
    raise errors.CheckpointMismatchError(
      f"checkpoint step {step} in {directory} was written for another graph "
      f"({ModalityGraph.from_dict(saved['graph']).describe() if 'graph' in saved else 'unknown'}) "
      f"but the config builds {setup.graph.describe()}; use a fresh --workdir or the matching "
      "config"
    )
  if saved.get("arch") != now["arch"]:
    raise errors.CheckpointMismatchError(
      f"checkpoint step {step} in {directory}: translator architecture differs "
      "from the config; use a fresh --workdir or the matching config"
    )


def restore_state(
  setup: Setup,
  checkpoints: checkpoint_lib.Checkpoints,
  template: Mapping,
  step: int | None = None,
  log: Callable[[str], None] = logging.warning,
  config=None,
  dataset: dataset_lib.Dataset | None = None,
  history: list | None = None,
) -> tuple[dict, int] | tuple[None, None]:
  """Restore `step`, or the newest step that restores cleanly.

  A step that is incomplete (missing item, unreadable metadata) or corrupt (an item fails to
  read) is reported and the next older complete step is tried: resuming from an older step only
  repeats work, and the batch RNG is a function of the step, so the run ends the same. A
  checkpoint of another graph is an error, not a fallback: no step of it can be used. With a
  `config`, so is one of another run (RunMismatchError); `history` receives the changes accepted
  before (and now, under train.allow_resume_changes) to be recorded in the next checkpoints."""

  def restore(candidate: int) -> dict:
    meta = checkpoints.check_complete(candidate)
    check_meta_matches(setup, meta, candidate, checkpoints.directory)
    said, changes = [], []  # the accepted changes are logged once the state restores with them
    if config is not None:
      changes = check_run_identity(
        setup, config, dataset, meta, candidate, checkpoints.directory, said.append
      )
      if history is not None:
        history[:] = list(meta.get("resume_changes", [])) + (
          [{"step": candidate, "changes": changes}] if changes else []
        )
    edge_items = checkpoints.restore_edges(
      candidate, [e.name for e in setup.layout.trainable_edges]
    )
    try:
      state = items_to_state(setup, template, edge_items, checkpoints.restore_train(candidate))
    except errors.CheckpointMismatchError as exc:
      if not changes:
        raise
      raise RunMismatchError(
        f"checkpoint step {candidate} in {checkpoints.directory}: these changes cannot be "
        "resumed, even with train.allow_resume_changes=True: they change the structure of the "
        "saved train state ("
        + " ".join(str(exc).split())
        + "):\n  "
        + "\n  ".join(changes)
        + "\nuse a fresh --workdir, or the run's own config (config.json in the workdir)"
      ) from None
    for line in said:
      log(line)
    return state

  state, restored, problems = checkpoints.newest_usable(restore, step, log)
  if problems:  # damaged steps newer than the one restored (or all of them) make way, kept aside
    if restored is None:  # newest_usable named them only where an older step was used
      for problem in problems:
        log(f"{problem}; skipped it")
    checkpoints.set_aside_damaged(restored, log)
    log(
      f"resuming from checkpoint step {restored}, the latest complete one"
      if restored is not None
      else f"no usable checkpoint in {checkpoints.directory} ({len(problems)} damaged); "
      "starting from scratch"
    )
  return (state, restored) if restored is not None else (None, None)
