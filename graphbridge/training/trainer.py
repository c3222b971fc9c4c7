"""Training: state, the one jitted train step, checkpointed training loop.

The train state is a plain dict (big_vision style):
  {"step": int32, "params": {"edges": {bucket: stacked}, "globals": {...}}, "opt": optax state,
   "rng": key, "weights": loss weights, "health": first non-finite step and which terms/edges}
Frozen edges (e.g. the old graph when grafting) are a separate, non-donated argument: they take
part in every path and cycle but have no optimizer state and never change.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Any, Callable, Mapping
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from graphbridge.training import checkpoint as checkpoint_lib
from graphbridge.core import fields
from graphbridge.core.errors import ConfigError
from graphbridge.data import dataset as dataset_lib
from graphbridge.data import feed as feed_lib
from graphbridge.data import readers as readers_lib
from graphbridge.data import tables as tables_lib
from graphbridge.training import sharding as sharding_lib
from graphbridge.training import validation as validation_lib
from graphbridge.training import selection as selection_lib
from graphbridge.training import closed_form
from graphbridge.training import lock as lock_lib
from graphbridge.training import loop as loop_lib
from graphbridge.training import writers as writers_lib
from graphbridge.core.graph import ModalityGraph
from graphbridge.model.translators import stack, unstack
from graphbridge.training.identity import restore_state, run_meta
from graphbridge.training.optimizer import (
  learning_rate_schedule,
  make_optimizer,
  phase_weights,
  total_steps,
)
from graphbridge.training.setup import (
  Setup,
  build_setup,
  describe_positives,
)
from graphbridge.training.state import compute_frozen, init_state, state_to_items, with_edge_params
from graphbridge.training.step import (
  flat_metrics,
  make_batch_step,
  make_device_step,
  progress_terms,
  raise_if_unhealthy,
)
from graphbridge.training.writers import trim_metrics
from graphbridge.training.step import sampler_arrays
from graphbridge import defaults


PyTree = Any


@dataclasses.dataclass
class TrainResult:
  setup: Setup
  state: dict
  frozen: dict
  dataset: dataset_lib.Dataset
  steps_run: int
  seconds: float
  compile_seconds: float
  final_metrics: dict
  bridge: dict = dataclasses.field(default_factory=dict)  # what the closed-form start and the
  # per-edge selection chose (report.json "bridge"; also in the last checkpoint's meta)

  @property
  def params(self) -> dict:
    """{bucket: stacked} for every edge, trainable and frozen (what compose/evaluate take)."""
    return {**self.frozen, **self.state["params"]["edges"]}

  def edge_params(self) -> dict:
    return unstack(self.setup.layout, self.params)


_log = writers_lib.log_process0  # the default `log` of every entry point


def train(
  config: ml_collections.ConfigDict,
  workdir: str | None,
  dataset: dataset_lib.Dataset | None = None,
  frozen_params: Mapping[str, PyTree] | None = None,
  graph: ModalityGraph | None = None,
  log: Callable[[str], None] = _log,
  objective: Callable[[Setup], Any] | None = None,
  frozen_from: Mapping[str, str] | None = None,
  holdout: selection_lib.PairHoldout | None = None,
) -> TrainResult:
  """Train translators as `config` says; checkpoints and metrics under `workdir` (None: neither).

  Resumes from the latest complete checkpoint in workdir.
  frozen_params: {edge_name: params} of edges that take part but are not trained (their edges must
    be in `graph`); every checkpoint holds them too, so the workdir is self-contained.
  frozen_from: {edge_name: checkpoint step dir} whose item files are copied unchanged into every
    checkpoint for those frozen edges (grafting: old edges stay byte-identical).
  objective: objective(layout, dataset, config) builds a strategy objective (default: the graph's
    loss plan).

  Several devices (config.mesh, see sharding.py): the state is initialised and kept sharded over a
  (data, edges) mesh and every process runs this same loop; metrics and logs come from process 0,
  every process takes part in checkpointing (Orbax writes from process 0). The returned state is
  gathered to the host (then on the default device), like a single-device run's.
  data.host_sampling: batches are drawn on the host from (memory-mapped) tables, only the batch's
  rows read per step, on background threads (data.prefetch batches ahead).
  holdout: the pairs held back for per-edge selection (training/selection.py); None: chosen here
    from `dataset` when model.linear_rank and train.select_edges ask for it (the graph strategy
    passes one holdout to all its pseudo-pair rounds)."""
  with contextlib.ExitStack() as exits:
    # the workdir lock is taken once the config, data and graph are checked and held to the end
    lock = lambda: exits.enter_context(lock_lib.WorkdirLock(workdir, log=log))
    return _train(
      config, workdir, dataset, frozen_params, graph, log, objective, frozen_from, lock, holdout
    )


def _train(
  config,
  workdir,
  dataset,
  frozen_params,
  graph,
  log,
  objective,
  frozen_from,
  lock: Callable[[], Any],
  holdout: selection_lib.PairHoldout | None = None,
) -> TrainResult:
  config = defaults.complete(config)  # a config built by hand or by an older version
  problems = fields.range_problems(config)  # also for library callers that skip validate()
  if problems:
    raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
  dataset = dataset if dataset is not None else readers_lib.load_for_config(config)
  full_dataset, validator = dataset, None
  validate_every = int(config.train.validate_every)
  if (
    validate_every > 0
  ):  # held-back train rows: never trained on, scored every validate_every steps
    dataset, val_view = validation_lib.hold_out(
      dataset, float(config.train.validate_fraction), int(config.seed)
    )
  frozen_params = dict(frozen_params or {})
  if holdout is None:
    holdout = selection_lib.PairHoldout.for_run(config, dataset, graph_plan=objective is None)
  linear_rank, select = holdout.linear_rank, holdout.select
  if objective is None:
    log(holdout.describe())
  if linear_rank > 0:
    # edges start as the ridge map of their pairs; held-back pairs choose where they may move
    holdout = holdout.for_round(dataset, int(config.seed))
    dataset = holdout.without_held(dataset)
  else:
    holdout = None
  setup = build_setup(
    config,
    dataset,
    graph=graph,
    frozen=tuple(frozen_params),
    objective=objective,
    training=True,
    linear_rank=linear_rank,
  )
  layout, plan = setup.layout, setup.plan
  mesh = sharding_lib.mesh_from_config(config)  # None: one device, no shardings (the plain path)
  if mesh is not None:
    sharding_lib.check_batch(setup.batch_size, mesh)
  host_sampling = bool(config.data.host_sampling)
  frozen_f32 = stack(layout, frozen_params, buckets=layout.frozen_buckets) if frozen_params else {}
  frozen = compute_frozen(setup, frozen_f32)
  frozen_from = dict(frozen_from or {})
  frozen_items = {
    e: {"params": jax.tree.map(np.asarray, p), "opt": {}}
    for e, p in frozen_params.items()
    if e not in frozen_from
  }
  tx = make_optimizer(config)
  n_total = total_steps(config)
  state = init_state(setup, tx, int(config.seed), phase_weights(config, plan, 0), mesh=mesh)
  bridge, selector, starts = {}, None, {}
  if holdout is not None:
    starts = {
      e.name: holdout.start(dataset, e.name, False, dataset.pairs_for(e.src, e.dst))
      for e in layout.trainable_edges
    }
    starts = {k: v for k, v in starts.items() if v is not None}
    state = with_edge_params(state, _with_starts(setup, state, starts), setup)
    if select:
      selector = selection_lib.EdgeSelector(
        layout,
        full_dataset,
        holdout,
        dict(setup.infonce_positives),
        setup.compute_dtype,
        int(config.seed),
      )
      selector.score(0, {**frozen_f32, **state["params"]["edges"]})
  if mesh is not None:
    frozen = sharding_lib.put(frozen, sharding_lib.tree_shardings(layout, frozen, mesh))
    state_sh = sharding_lib.shardings_of(state)

  checkpoints = None
  start = 0
  history: list = []  # changes accepted on resumes (train.allow_resume_changes), kept in every meta
  if workdir:
    lock()
    checkpoints = checkpoint_lib.Checkpoints(
      os.path.join(workdir, "checkpoints"), max_to_keep=int(config.train.keep_checkpoints)
    )
    # with a mesh the template is host zeros: restore reads only its shapes, and a state sharded
    # over several processes cannot be read by one
    template = state if mesh is None else sharding_lib.zeros_like_host(state)
    restored, restored_step = restore_state(
      setup, checkpoints, template, log=log, config=config, dataset=dataset, history=history
    )
    if restored is not None:
      state, start = restored, int(restored_step)
      if mesh is not None:
        state = sharding_lib.put(state, state_sh)
      log(f"resumed from checkpoint step {start} in {checkpoints.directory}")
      if selector is not None:
        saved = checkpoints.restore_train(start).get("select")
        if saved is not None:
          selector.load_state(saved)
    trim_metrics(os.path.join(workdir, "metrics.jsonl"), start)
  writer = writers_lib.for_run(workdir, config, log=log)
  lr_at = learning_rate_schedule(config)
  if validate_every > 0:
    validator = validation_lib.Validator(
      layout, val_view, setup.compute_dtype, keep=bool(config.train.keep_best)
    )

  skip_nonfinite = bool(config.train.skip_nonfinite)
  batches = None
  feed = None
  if host_sampling:  # rows read on the host, normalised on the device inside the step
    feed = feed_lib.HostFeed(
      plan.sample,
      sampler_arrays(setup, dataset),
      setup.batch_size,
      state["rng"],
      prefetch=int(config.data.prefetch),
    )
    batch_sh = None if mesh is None else feed.raw_shardings(mesh, sharding_lib.DATA)
    batches = feed.batches(start, n_total, shardings=batch_sh)
    step_fn = make_batch_step(
      setup,
      tx,
      skip_nonfinite=skip_nonfinite,
      mesh=mesh,
      batch_sharding=batch_sh,
      prepare=feed.finish,
    )
  elif mesh is None:
    arrays = jax.device_put(tables_lib.materialize_tables(sampler_arrays(setup, dataset)))
    step_fn = make_device_step(setup, tx, skip_nonfinite=skip_nonfinite)
  else:
    host_arrays = tables_lib.materialize_tables(sampler_arrays(setup, dataset))
    arrays_sh = sharding_lib.arrays_shardings(
      host_arrays, mesh, by_rows=bool(config.mesh.shard_data_rows)
    )
    arrays = sharding_lib.put_arrays(host_arrays, arrays_sh)
    step_fn = make_device_step(
      setup, tx, skip_nonfinite=skip_nonfinite, mesh=mesh, arrays_sharding=arrays_sh
    )
  if mesh is not None:
    log(
      f"devices: {sharding_lib.describe(mesh)}; translators by bucket: "
      + ", ".join(
        f"{k} {v}" for k, v in sharding_lib.spec_summary(layout, state["params"]["edges"]).items()
      )
    )
  log(f"graph: {setup.graph.describe()}")
  log(f"plan: {plan.describe()}; {describe_positives(setup)}; {start}/{n_total} steps done")

  finetune_at = int(config.train.steps) if int(config.finetune.steps) > 0 else -1

  select_every = int(config.train.select_every)  # >= 1 (checked with the config)
  patience = int(config.train.select_patience)
  stopped = []

  def after_step(done, state) -> bool:
    """Scores the held-back pairs every select_every steps; True (stop: early stopping) once
    `patience` scores in a row improved no edge (never during a fine-tuning phase)."""
    if selector is None or done % select_every:
      return False
    selector.score(done, {**frozen_f32, **state["params"]["edges"]})
    if patience > 0 and selector.stale >= patience and finetune_at < 0:
      stopped.append(done)
      log(
        f"step {done}: early stop (no edge improved on its held-back pairs in the last "
        f"{patience} scores, {patience * select_every} steps; train.select_patience)"
      )
      return True
    return False

  def before_step(i, state):
    if i != finetune_at:
      return state
    weights = phase_weights(config, plan, i)
    if mesh is not None:
      weights = sharding_lib.put(weights, state_sh["weights"])
    log(f"step {i}: contrastive fine-tuning phase ({int(config.finetune.steps)} steps)")
    return {**state, "weights": weights}

  def values(done, state, metrics):
    raise_if_unhealthy(setup, state["health"])
    out = flat_metrics(setup, metrics)
    out["lr"] = float(lr_at(done - 1))
    if validator is not None and (done % validate_every == 0 or done == n_total):
      out.update(validator.score(done, {**frozen_f32, **state["params"]["edges"]}))
    return out

  def keep_best(state):
    if (
      validator is None
      or not validator.keep
      or validator.best_params is None
      or validator.best_step == n_total
    ):
      return state
    log(
      f"keeping the params of step {validator.best_step} (best val mAP "
      f"{validator.best_map:.3f}; train.keep_best)"
    )
    return with_edge_params(state, validator.best_params, setup)

  def at_end(state):
    state = keep_best(state)
    if holdout is None:
      return state
    if selector is None:  # train.select_edges=0: the trained params stay
      bridge.update(_describe_bridge(setup, holdout, starts, {}, False))
      return state
    last = stopped[0] if stopped else n_total
    if not selector.scored(last):
      selector.score(last, {**frozen_f32, **state["params"]["edges"]})
    if stopped:  # the run reads as finished: its last checkpoint is step n_total
      state = {**state, "step": jnp.asarray(n_total, state["step"].dtype)}
    state, chosen = _select_edges(
      setup,
      state,
      selector,
      holdout,
      full_dataset,
      starts,
      float(config.train.select_confidence),
    )
    bridge.update(_describe_bridge(setup, holdout, starts, chosen, selector is not None))
    bridge["stopped_at"] = last
    log(
      "bridge: " + "; ".join(c.describe() for c in chosen.values())
      if chosen
      else "bridge: every edge kept its closed-form start (no held-back pairs)"
    )
    return state

  def save(done, state):
    raise_if_unhealthy(setup, state["health"])
    # every process gathers the (possibly sharded) state; Orbax writes numpy from process 0
    edge_items, train_item = state_to_items(
      setup,
      state
      if mesh is None
      else sharding_lib.to_host({k: v for k, v in state.items() if k != "compute_params"}),
    )
    if selector is not None:  # a resumed run decides as an uninterrupted one would
      train_item["select"] = selector.state_dict()
    meta = run_meta(setup, config, dataset, history)
    if bridge and done == n_total:
      meta["bridge"] = bridge
    checkpoints.save(
      done, {**edge_items, **frozen_items}, train_item, meta, copy_items_from=frozen_from
    )

  line = lambda v: f"loss {v['loss/total']:.4f}  {progress_terms(v)}  lr {v['lr']:.2e}"
  step = lambda state, i: step_fn(state, frozen, next(batches) if batches is not None else arrays)
  result = loop_lib.run(
    state,
    start,
    loop_lib.Cadence.from_config(config, n_total),
    step,
    values=values,
    line=line,
    writer=writer,
    log=log,
    save=save if checkpoints else None,
    before_step=before_step,
    at_end=at_end,
    early_stop=after_step,
    close=[c.close for c in (batches, checkpoints) if c is not None],
  )
  state, metrics, compile_seconds = result.state, result.metrics, result.compile_seconds
  if feed is not None:
    log(
      f"host feed: {feed.rows_read} table rows read by this process "
      f"({feed.rows_per_batch} a step on all processes)"
    )
  if metrics is not None:
    raise_if_unhealthy(setup, state["health"])
  seconds = result.seconds
  final = flat_metrics(setup, metrics) if metrics is not None else {}
  if metrics is None and workdir:  # nothing left to train: the final step's logged losses
    final = writers_lib.logged_at(os.path.join(workdir, writers_lib.METRICS_FILE), n_total)
  if (
    mesh is not None
  ):  # callers (evaluation, grafting) get host-gathered arrays, as from one device
    state = jax.tree.map(jnp.asarray, sharding_lib.to_host(state))
  return TrainResult(
    setup,
    state,
    frozen_f32,
    full_dataset,
    result.steps_run,
    seconds,
    compile_seconds,
    final,
    bridge,
  )


def _with_starts(setup: Setup, state: Mapping, starts: Mapping) -> dict:
  """{bucket: stacked} trainable params of `state` with each edge of `starts` at its closed-form
  start (closed_form.start_params)."""
  layout = setup.layout
  per_edge = unstack(layout, jax.device_get(state["params"]["edges"]))
  for name, start in starts.items():
    per_edge[name] = closed_form.start_params(per_edge[name], layout.arch_of(name), start)
  return stack(layout, per_edge, trainable_only=True)


def _select_edges(setup, state, selector, holdout, dataset, starts, confidence):
  """(state with each edge where selection put it, {edge: EdgeChoice}). Edges whose held-back pairs
  say training helped keep their best step's params; the other edges with pairs of their own in
  the data are reset to their closed-form start refitted on all their pairs (held-back included);
  edges without any (cycle-only, composed pseudo-pairs) keep what training made of them."""
  layout = setup.layout
  chosen = selector.decide(0, confidence)
  per_edge = unstack(layout, jax.device_get(state["params"]["edges"]))
  best = unstack(layout, jax.device_get(selector.best_params)) if chosen else {}
  for name in starts:
    choice = chosen.get(name)
    if choice is not None and choice.moved:
      per_edge[name] = best[name]
      continue
    start = holdout.start(dataset, name, True)
    if start is not None:
      per_edge[name] = closed_form.start_params(per_edge[name], layout.arch_of(name), start)
  return with_edge_params(state, stack(layout, per_edge, trainable_only=True), setup), chosen


def _describe_bridge(setup, holdout, starts, chosen, selected: bool) -> dict:
  """report.json's "bridge": per edge, its closed-form start and what selection kept."""
  edges = {}
  for name, start in starts.items():
    src, dst = name.split("->")
    arch = setup.layout.arch_of(name)
    rank = closed_form.linear_rank(setup.graph.dim(src), setup.graph.dim(dst), arch.linear)
    real = holdout.real_for(src, dst, True)
    entry = {
      "start": "ridge",
      "alpha": start.alpha,
      "pairs": int(start.pairs),
      "held": int(len(holdout.held_for(src, dst))),
      "linear": "full" if rank == 0 else f"rank {rank}",
    }
    choice = chosen.get(name)
    if holdout.is_pseudo(src, dst):
      entry["start"] = "ridge on pseudo-pairs"
    if real is None:
      entry["kept"] = "trained"
    elif choice is None:
      entry["kept"] = "closed form on all pairs (none held back)" if selected else "trained"
    else:
      entry.update(
        kept="trained" if choice.moved else "closed form on all pairs",
        step=choice.best_step if choice.moved else 0,
        best_step=choice.best_step,
        held_ap_start=round(choice.start_ap, 4),
        held_ap_best=round(choice.best_ap, 4),
      )
    edges[name] = entry
  kept = [e["kept"] for e in edges.values()]
  return {
    "selection": "per edge on held-back pairs" if selected else "off (trained params kept)",
    "trained": sum(k == "trained" for k in kept),
    "closed_form": sum(k != "trained" for k in kept),
    "edges": edges,
  }
