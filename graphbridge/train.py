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
import json
import logging
import os
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from graphbridge import checkpoint as ckpt_lib
from graphbridge import config_check
from graphbridge.config_check import ConfigError  # noqa: F401  (re-exported: train.ConfigError)
from graphbridge import data as data_lib
from graphbridge import objective_api
from graphbridge import objectives
from graphbridge import sharding as sharding_lib
from graphbridge import validation as validation_lib
from graphbridge import workdir_lock
from graphbridge import writers as writers_lib
from graphbridge.graph import Edge, ModalityGraph
from graphbridge.translators import EdgeLayout, TranslatorArch, dtype_from_name, init_many, stack, unstack

PyTree = Any


class NonFiniteError(FloatingPointError):
  """A loss term or gradient became NaN/inf; the message names the term and edge."""


class RunMismatchError(ckpt_lib.CheckpointMismatchError):
  """Resuming would silently change the run in the workdir (config, loss plan or data differ from
  what its checkpoints were trained with); the message lists the differences."""


# Config keys a resume may change without changing what the run computes (docs/reliability.md).
# train.steps may only grow; anything else needs --config.train.allow_resume_changes=True.
SAFE_RESUME_CHANGES = ("train.log_every", "train.print_every", "train.checkpoint_every",
                       "train.keep_checkpoints", "train.tensorboard", "train.allow_resume_changes",
                       "data.path", "data.name", "data.prefetch", "eval.", "posthoc", "compare.",
                       "mesh.",  # the checkpoint format is the single-device one: any mesh resumes it
                       "model.edge_apply")  # how stacked edges run: the same function either way



# ---- setup from config --------------------------------------------------------------------------



@dataclasses.dataclass(frozen=True)
class Setup:
  """Everything static about a run: graph, translator layout, objective, dtypes, batch size.

  `plan` is the step's objective (objective_api.Objective): the graph's `objectives.LossPlan`,
  `cmcr.CMCRObjective`, or any strategy's own."""
  layout: EdgeLayout
  plan: objective_api.Objective
  compute_dtype: str
  batch_size: int
  infonce_positives: tuple        # (("a->b", "label" | "pair"), ...) per pair set of the data
  positive_choices: tuple = ()    # ((pair set, choice, why), ...) as printed on the plan line

  @property
  def graph(self) -> ModalityGraph:
    return self.layout.graph


def arch_from_config(model_cfg) -> TranslatorArch:
  return TranslatorArch(hidden=tuple(model_cfg.hidden), activation=model_cfg.activation,
                        layer_norm=bool(model_cfg.layer_norm), residual=bool(model_cfg.residual),
                        impl=model_cfg.get("impl", "flax"),
                        edge_apply=model_cfg.get("edge_apply", "auto"))


def loss_settings_from_config(loss_cfg) -> objectives.LossSettings:
  sup = config_check.names(loss_cfg.get("supervised_edges", ""))
  starts = config_check.names(loss_cfg.get("cycle_starts", ""))
  return objectives.LossSettings(
      edge_cos=float(loss_cfg.edge_cos), infonce=float(loss_cfg.infonce),
      temperature=float(loss_cfg.temperature), learn_temperature=bool(loss_cfg.learn_temperature),
      cycle_weights=tuple(float(w) for w in loss_cfg.cycle_weights),
      supervised_edges=sup or None, cycle_starts=starts or None,
      aligned_batches=bool(loss_cfg.get("aligned_batches", False)),
      structure=float(loss_cfg.get("structure", 0.0)),
      structure_temperature=float(loss_cfg.get("structure_temperature", 0.1)))


def virtual_nodes_from_config(config) -> dict[str, int]:
  """graph.virtual_nodes = "shared:256,common:128": nodes with no data (projection spaces)."""
  return config_check.virtual_nodes(config.graph.get("virtual_nodes", ""))


def graph_from_config(config, dataset: data_lib.Dataset) -> ModalityGraph:
  edges = config_check.names(config.graph.get("edges", ""))
  virtual = virtual_nodes_from_config(config)
  if edges:
    graph = ModalityGraph.build({**dataset.dims, **virtual})
    for e in edges:
      graph = graph.add_edge(e)
  else:
    graph = dataset.default_graph()
    for name, dim in virtual.items():
      graph = graph.add_node(name, dim)
  for e in config_check.names(config.graph.get("extra_edges", "")):
    if Edge.parse(e) not in graph.edges:
      graph = graph.add_edge(e)
  dataset.check_graph(graph, virtual=virtual)
  return graph


def build_setup(config, dataset: data_lib.Dataset, graph: ModalityGraph | None = None,
                frozen: Sequence[str] = (), objective: Callable | None = None,
                training: bool = False) -> Setup:
  """Static setup of a run. objective(layout, dataset, config) builds a strategy objective
  (default: the translator graph's loss plan from config.loss). training: the setup is for `train`,
  so every edge in graph.frozen must be among `frozen` (edges whose trained parameters are given)."""
  graph = graph or graph_from_config(config, dataset)
  config_check.check_against_graph(config, graph, dataset, frozen_given=frozen if training else None,
                                   eval_paths=objective is None)
  dataset.check_train_pairs()
  frozen = tuple(frozen) + config_check.names(config.graph.get("frozen", ""))
  layout = EdgeLayout.build(graph, arch_from_config(config.model), frozen=frozen)
  if objective is not None:
    plan = objective(layout, dataset, config)
  else:
    paired = [e for e in graph.edges if len(dataset.pairs_for(e.src, e.dst))]
    plan = objectives.build_plan(layout, loss_settings_from_config(config.loss), paired,
                                 data_nodes=[n for n in graph.node_names if n in dataset.modalities])
  dtype_from_name(config.model.compute_dtype)  # validate early
  requested = config.loss.get("infonce_positives", "auto")
  if requested not in data_lib.POSITIVES:
    raise ConfigError(f"loss.infonce_positives={requested!r}: choose 'auto', 'label' or 'pair'")
  choices = {f"{a}->{b}": data_lib.choose_positives(dataset, a, b, requested) for a, b in dataset.pairs}
  return Setup(layout, plan, config.model.compute_dtype, int(config.data.batch_size),
               tuple((k, v[0]) for k, v in choices.items()), tuple((k, *v) for k, v in choices.items()))


def describe_positives(setup: Setup) -> str:
  """'InfoNCE positives: image<->text label (class-level pairs ...), ...' for the plan line."""
  return "InfoNCE positives: " + ", ".join(f"{k.replace('->', '<->')} {c} ({why})"
                                           for k, c, why in setup.positive_choices)


# ---- optimizer and state ------------------------------------------------------------------------

def total_steps(config) -> int:
  return int(config.train.steps) + int(config.finetune.steps)


def learning_rate_schedule(config) -> optax.Schedule:
  """step -> learning rate: warmup, cosine decay over train.steps, then finetune's constant."""
  opt = config.optim
  main = optax.warmup_cosine_decay_schedule(
      0.0, opt.lr, warmup_steps=min(int(opt.warmup_steps), max(int(config.train.steps) - 1, 1)),
      decay_steps=max(int(config.train.steps), 2), end_value=opt.lr * opt.get("final_lr_fraction", 0.05))
  schedule = main
  if int(config.finetune.steps) > 0:
    schedule = optax.join_schedules(
        [main, optax.constant_schedule(opt.lr * config.finetune.lr_scale)], [int(config.train.steps)])
  return schedule


# optim.name -> optax optimizer of (schedule, optim config, first-moment dtype or None); the choices
# of optim.name
OPTIMIZERS: dict[str, Callable[[optax.Schedule, Any, Any], optax.GradientTransformation]] = {
    "adam": lambda schedule, opt, mu_dtype: optax.adam(schedule, b1=opt.b1, b2=opt.b2,
                                                       mu_dtype=mu_dtype),
    "adamw": lambda schedule, opt, mu_dtype: optax.adamw(schedule, b1=opt.b1, b2=opt.b2,
                                                         weight_decay=opt.weight_decay, mu_dtype=mu_dtype),
    "sgd": lambda schedule, opt, mu_dtype: optax.sgd(schedule, momentum=0.9),
}
MU_DTYPES = ("", "float32", "bfloat16")   # choices of optim.mu_dtype ("" = the params' dtype)


def make_optimizer(config) -> optax.GradientTransformation:
  opt = config.optim
  schedule = learning_rate_schedule(config)
  mu_name = opt.get("mu_dtype", "")
  if mu_name not in MU_DTYPES:
    raise ConfigError(f"optim.mu_dtype={mu_name!r}: choose '', 'float32' or 'bfloat16'")
  mu_dtype = dtype_from_name(mu_name) if mu_name else None
  if opt.name not in OPTIMIZERS:
    raise ConfigError(f"optim.name={opt.name!r}: choose one of {', '.join(OPTIMIZERS)}")
  parts = [optax.clip_by_global_norm(opt.grad_clip)] if opt.grad_clip and opt.grad_clip > 0 else []
  return optax.chain(*parts, OPTIMIZERS[opt.name](schedule, opt, mu_dtype))


def phase_weights(config, objective, step: int) -> dict[str, jax.Array]:
  """Loss weights for `step`: the objective's initial weights, then (from train.steps on, when
  finetune.steps > 0) its fine-tuning weights (objective_api.finetune_weights: every key kept).

  objective: an objective_api.Objective, or objectives.LossSettings (the graph plan's weights)."""
  if isinstance(objective, objectives.LossSettings):
    weights, hook_owner = objectives.initial_weights(objective), objectives
  else:
    weights, hook_owner = objective.initial_weights(), objective
  if int(config.finetune.steps) > 0 and step >= int(config.train.steps):
    weights = objective_api.finetune_weights(hook_owner, weights, config.finetune)
  return weights


def init_state(setup: Setup, tx: optax.GradientTransformation, seed: int,
               weights: Mapping[str, jax.Array], mesh: jax.sharding.Mesh | None = None) -> dict:
  """The train state at step 0. With a `mesh`: built by one jit whose out_shardings place every
  leaf where the step wants it (eval_shape, then jit(init, out_shardings=...)), so no device ever
  holds more of it than its share."""
  if mesh is not None:
    weights = dict(weights)
    init = lambda: init_state(setup, tx, seed, weights)
    shardings = sharding_lib.tree_shardings(setup.layout, jax.eval_shape(init), mesh)
    return jax.jit(init, out_shardings=shardings)()
  layout = setup.layout
  per_edge = init_many([(e, b.d_in, b.d_out, b.arch) for b in layout.trainable_buckets for e in b.edges], seed)
  params = {"edges": stack(layout, per_edge, trainable_only=True),
            "globals": setup.plan.initial_globals()}
  state = {"step": jnp.int32(0), "params": params, "opt": tx.init(params),
           "rng": jax.random.PRNGKey(seed), "weights": dict(weights), "health": _fresh_health(setup)}
  return with_compute_copy(setup, state)


def state_shardings(setup: Setup, tx: optax.GradientTransformation, mesh: jax.sharding.Mesh) -> PyTree:
  """NamedShardings of the train state (see sharding.leaf_spec): bucket rows split over the
  `edges` axis where they divide evenly, the rest replicated."""
  abstract = jax.eval_shape(lambda: init_state(setup, tx, 0, setup.plan.initial_weights()))
  return sharding_lib.tree_shardings(setup.layout, abstract, mesh)


def to_compute_dtype(setup: Setup, tree: PyTree) -> PyTree:
  """Every leaf of `tree` cast to the run's compute dtype."""
  dtype = dtype_from_name(setup.compute_dtype)
  return jax.tree.map(lambda p: p.astype(dtype), tree)


def with_compute_copy(setup: Setup, state: dict) -> dict:
  """Mixed precision: add state["compute_params"], the trainable edges cast to the compute
  dtype. The step runs the translators on it and rewrites it inside the fused optimizer update,
  so no separate cast of the float32 master weights is needed. Derived: never checkpointed."""
  if setup.compute_dtype == "float32":
    return state
  return {**state, "compute_params": to_compute_dtype(setup, state["params"]["edges"])}


def compute_frozen(setup: Setup, frozen: Mapping) -> dict:
  """Frozen edges in the compute dtype (cast once, outside the step)."""
  return dict(frozen) if setup.compute_dtype == "float32" else to_compute_dtype(setup, dict(frozen))


def _fresh_health(setup: Setup) -> dict:
  plan = setup.plan
  return {"bad_step": jnp.int32(-1),
          "terms_finite": {k: jnp.ones((len(v),), bool) for k, v in plan.term_names().items()},
          "grads_finite": {b.key: jnp.ones((b.size,), bool) for b in setup.layout.trainable_buckets}}


# ---- the step ----------------------------------------------------------------------------------

def per_edge_grad_norms(grads_edges: Mapping[str, PyTree]) -> dict[str, jax.Array]:
  """{bucket: [E_b]} L2 norm of each edge's gradient."""
  out = {}
  for key, tree in grads_edges.items():
    out[key] = jnp.sqrt(sum(_per_row_sum_of_squares(g) for g in jax.tree.leaves(tree)))
  return out


def _per_row_sum_of_squares(g: jax.Array) -> jax.Array:
  """[E, ...] -> [E]. Reduced in two stages ([E, k, n/k] then [E, k]): a one-stage reduction to
  E outputs runs on only E thread blocks on GPU, which took milliseconds for large edges."""
  n = int(np.prod(g.shape[1:]))
  k = 1
  while k < 1024 and n % (2 * k) == 0 and n // (2 * k) >= 1024:
    k *= 2
  sq = jnp.square(g.astype(jnp.float32)).reshape(g.shape[0], k, n // k)
  return jnp.sum(jnp.sum(sq, axis=2), axis=1)


def make_step_fn(setup: Setup, tx: optax.GradientTransformation, skip_nonfinite: bool = True) -> Callable:
  """step(state, frozen_edges, batch) -> (state, metrics); pure, not yet jitted."""
  plan, dtype = setup.plan, dtype_from_name(setup.compute_dtype)

  def step(state, frozen, batch):
    key = jax.random.fold_in(jax.random.fold_in(state["rng"], state["step"]), 1)  # e.g. noise

    def loss(params):
      return plan.loss(params, frozen, batch, state["weights"], key, dtype)

    lowp = "compute_params" in state
    # with a compute-dtype copy, differentiate w.r.t. it: gradients come out in the compute dtype
    # and the float32 master weights are only touched by the optimizer update
    diff_params = {**state["params"], "edges": state["compute_params"]} if lowp else state["params"]
    (total, aux), grads = jax.value_and_grad(loss, has_aux=True)(diff_params)
    grad_norms = per_edge_grad_norms(grads["edges"])
    if lowp:
      grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, state["params"])
    terms_finite = {k: jnp.isfinite(v) for k, v in aux["terms"].items()}
    grads_finite = {k: jnp.isfinite(v) for k, v in grad_norms.items()}
    finite = jnp.isfinite(total) & jnp.all(jnp.asarray(
        [jnp.all(v) for v in list(terms_finite.values()) + list(grads_finite.values())]))

    def update(params, opt):
      updates, new_opt = tx.update(grads, opt, params)
      return optax.apply_updates(params, updates), new_opt

    if skip_nonfinite:  # a bad step leaves params and optimizer untouched; the host stops the run
      # one branch runs: no select pass over params and optimizer state on good steps
      new_params, new_opt = jax.lax.cond(finite, update, lambda p, o: (p, o), state["params"], state["opt"])
    else:
      new_params, new_opt = update(state["params"], state["opt"])
    health = state["health"]
    first_bad = (health["bad_step"] < 0) & ~finite
    health = {
        "bad_step": jnp.where(first_bad, state["step"], health["bad_step"]),
        "terms_finite": jax.tree.map(lambda new, old: jnp.where(first_bad, new, old),
                                     terms_finite, health["terms_finite"]),
        "grads_finite": jax.tree.map(lambda new, old: jnp.where(first_bad, new, old),
                                     grads_finite, health["grads_finite"]),
    }
    new_state = {**state, "step": state["step"] + 1, "params": new_params, "opt": new_opt,
                 "health": health}
    if lowp:
      new_state["compute_params"] = to_compute_dtype(setup, new_params["edges"])
    metrics = {"loss/total": total, "grad_norm": grad_norms, **aux}
    return new_state, metrics

  return step


def make_device_step(setup: Setup, tx: optax.GradientTransformation, skip_nonfinite: bool = True,
                     donate: bool = True, mesh: jax.sharding.Mesh | None = None,
                     arrays_sharding: PyTree | None = None) -> Callable:
  """jit(step(state, frozen, arrays)): draws the batch on device, then one optimizer step.

  The batch RNG is fold_in(state.rng, state.step), so a resumed run sees the same batches.
  mesh: jit with in/out shardings over it: the batch, drawn whole from the same key as on one
    device, is constrained to the `data` axis; state and frozen edges as sharding.tree_shardings;
    metrics replicated. arrays_sharding: the sampler arrays' shardings (default replicated)."""
  step = make_step_fn(setup, tx, skip_nonfinite)
  donate_argnums = (0,) if donate else ()

  def device_step(state, frozen, arrays):
    key = jax.random.fold_in(state["rng"], state["step"])
    batch = setup.plan.sample(arrays, key, setup.batch_size)
    if mesh is not None:  # drawn whole (as on one device), then split over the data axis
      batch = jax.lax.with_sharding_constraint(batch, sharding_lib.batch_shardings(batch, setup.batch_size, mesh))
    return step(state, frozen, batch)

  if mesh is None:
    return jax.jit(device_step, donate_argnums=donate_argnums)
  state_sh = state_shardings(setup, tx, mesh)
  in_shardings = (state_sh, frozen_shardings(setup, mesh),
                  arrays_sharding if arrays_sharding is not None else sharding_lib.replicated(mesh))
  return jax.jit(device_step, in_shardings=in_shardings,
                 out_shardings=(state_sh, sharding_lib.replicated(mesh)), donate_argnums=donate_argnums)


def frozen_shardings(setup: Setup, mesh: jax.sharding.Mesh) -> dict:
  """Shardings of the frozen edges argument ({bucket: stacked}, every frozen bucket, or {})."""
  return {b.key: sharding_lib.NamedSharding(mesh, sharding_lib.edge_axis_spec(b.size, mesh))
          for b in setup.layout.frozen_buckets}


def make_batch_step(setup: Setup, tx: optax.GradientTransformation, skip_nonfinite: bool = True,
                    donate: bool = True, mesh: jax.sharding.Mesh | None = None,
                    batch_sharding: PyTree | None = None) -> Callable:
  """jit(step(state, frozen, batch)) for batches drawn on the host (data.host_sampling).

  With a mesh: in/out shardings as make_device_step; `batch_sharding` (default: split over
  `data`, a prefix of every batch leaf) is how the host sampler lays the batch out."""
  step = make_step_fn(setup, tx, skip_nonfinite)
  donate_argnums = (0,) if donate else ()
  if mesh is None:
    return jax.jit(step, donate_argnums=donate_argnums)
  state_sh = state_shardings(setup, tx, mesh)
  batch_sh = batch_sharding if batch_sharding is not None else sharding_lib.NamedSharding(
      mesh, sharding_lib.P(sharding_lib.DATA))
  return jax.jit(step, in_shardings=(state_sh, frozen_shardings(setup, mesh), batch_sh),
                 out_shardings=(state_sh, sharding_lib.replicated(mesh)), donate_argnums=donate_argnums)


def sampler_arrays(setup: Setup, dataset: data_lib.Dataset) -> dict:
  """Numpy arrays the device sampler draws batches from (see the objective's sampler_arrays)."""
  return setup.plan.sampler_arrays(dataset, dict(setup.infonce_positives))


# ---- health ------------------------------------------------------------------------------------

def raise_if_unhealthy(setup: Setup, health: Mapping) -> None:
  health = jax.device_get(health)
  bad_step = int(health["bad_step"])
  if bad_step < 0:
    return
  names = setup.plan.term_names()
  bad_terms = [f"{kind} {names[kind][i]}" for kind, ok in health["terms_finite"].items()
               for i in np.nonzero(~np.asarray(ok))[0]]
  bad_grads = [setup.layout.bucket_by_key[key].edges[i].name for key, ok in health["grads_finite"].items()
               for i in np.nonzero(~np.asarray(ok))[0]]
  parts = []
  if bad_terms:
    parts.append("non-finite loss term(s): " + ", ".join(bad_terms))
  if bad_grads:
    parts.append("non-finite gradient for edge(s): " + ", ".join(bad_grads))
  # 1-based, like progress lines and checkpoint steps: "step 5" is the 5th update
  raise NonFiniteError(f"step {bad_step + 1}: " + ("; ".join(parts) or "non-finite total loss") +
                       " (the update was skipped; checkpoints hold the last good state)")


# ---- checkpoint glue ---------------------------------------------------------------------------

def plan_identity(setup: Setup) -> dict:
  """What the loss plan computes: its description and the names of its terms by kind."""
  plan = setup.plan
  terms = {k: [str(n) for n in v] for k, v in plan.term_names().items()} if hasattr(plan, "term_names") else {}
  return {"describe": plan.describe() if hasattr(plan, "describe") else type(plan).__name__, "terms": terms}


def config_dict(config) -> dict:
  return json.loads(config.to_json_best_effort()) if hasattr(config, "to_json_best_effort") else {}


def run_meta(setup: Setup, config, dataset: data_lib.Dataset | None, history: Sequence[Mapping] = ()) -> dict:
  """The run's identity, stored in every checkpoint step: layout (graph, architectures), resolved
  config, loss plan, data fingerprint, and the changes accepted on earlier resumes."""
  meta = {"layout": setup.layout.to_dict(), "compute_dtype": setup.compute_dtype,
          "config": config_dict(config), "plan": plan_identity(setup)}
  if dataset is not None:
    meta["data"] = {"source": dataset.source, "fingerprint": dataset.fingerprint(),
                    "content": dataset.content_digest()}
    # nodes without rows (a strategy's projection spaces): evaluation checks the data against them
    meta["virtual_nodes"] = [n for n in setup.graph.node_names if n not in dataset.modalities]
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


def run_differences(setup: Setup, config, dataset: data_lib.Dataset | None, meta: Mapping) -> list[str]:
  """Differences between the run a checkpoint's meta describes and the one `config` would train,
  other than the safe ones (SAFE_RESUME_CHANGES): ["optim.lr: 0.002 -> 0.01", ...]."""
  problems = []
  if "config" in meta and hasattr(config, "to_json_best_effort"):
    old, new = _flatten(meta["config"]), _flatten(config_dict(config))
    for key in sorted(set(old) | set(new)):
      a, b = old.get(key, "<unset>"), new.get(key, "<unset>")
      if a != b and not _safe_change(key, a, b):
        problems.append(f"{key}: {a!r} -> {b!r}")
  saved_plan = meta.get("plan")
  if saved_plan is not None and saved_plan != plan_identity(setup):
    now = plan_identity(setup)
    for kind in sorted(set(saved_plan.get("terms", {})) | set(now["terms"])):
      a, b = saved_plan.get("terms", {}).get(kind, []), now["terms"].get(kind, [])
      if a != b:
        gone, added = [t for t in a if t not in b], [t for t in b if t not in a]
        problems.append(f"loss plan {kind} terms: " + ", ".join(
            ([f"removed {', '.join(gone)}"] if gone else []) + ([f"added {', '.join(added)}"] if added else [])
            or ["reordered"]))
    if saved_plan.get("describe") != now["describe"] and not any(p.startswith("loss plan") for p in problems):
      problems.append(f"loss plan: {saved_plan.get('describe')!r} -> {now['describe']!r}")
  saved_data = meta.get("data", {})
  if dataset is not None and saved_data.get("content") and saved_data["content"] != dataset.content_digest():
    problems.append(f"data: {dataset.source} differs from {saved_data.get('source')} the checkpoints were "
                    "trained on (other rows, splits, labels or pairs)")
  return problems


def check_run_identity(setup: Setup, config, dataset: data_lib.Dataset | None, meta: Mapping, step: int,
                       directory: str, log: Callable[[str], None] = logging.warning) -> list[str]:
  """RunMismatchError listing the differences, unless there are none or the config says
  train.allow_resume_changes=True (then they are logged and returned, to be recorded)."""
  problems = run_differences(setup, config, dataset, meta)
  if not problems:
    return []
  listing = "\n  ".join(problems)
  if bool(config.train.get("allow_resume_changes", False)):
    log(f"resuming checkpoint step {step} with changes (train.allow_resume_changes=True):\n  {listing}")
    return problems
  raise RunMismatchError(
      f"checkpoint step {step} in {directory} belongs to another run; resuming would change:\n  {listing}\n"
      "use a fresh --workdir, the run's own config (config.json in the workdir), or "
      "--config.train.allow_resume_changes=True to continue with these changes on purpose")


def _drop_empty(tree: Mapping) -> dict:
  """Orbax cannot store zero-size arrays (e.g. the health of a plan without cycles); the
  template supplies them again on restore."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out[k] = _drop_empty(v)
    elif np.size(v):
      out[k] = v
  return out


def state_to_items(setup: Setup, state: Mapping) -> tuple[dict, dict]:
  """Split a train state into ({edge_name: {"params", "opt"}}, train item)."""
  state = jax.device_get(state)
  params_by_edge, globals_ = ckpt_lib.split_by_edge(setup.layout, state["params"])
  opt_by_edge, opt_shared = ckpt_lib.split_by_edge(setup.layout, state["opt"])
  edge_items = {e: {"params": params_by_edge[e], "opt": opt_by_edge.get(e, {})} for e in params_by_edge}
  train_item = {"step": np.asarray(state["step"]), "rng": np.asarray(jax.random.key_data(state["rng"])
                                                                      if jnp.issubdtype(state["rng"].dtype,
                                                                                        jax.dtypes.prng_key)
                                                                      else state["rng"]),
                "weights": _drop_empty(state["weights"]), "health": _drop_empty(state["health"]),
                "globals": globals_,
                "opt_shared": opt_shared}
  return edge_items, train_item


def items_to_state(setup: Setup, template: Mapping, edge_items: Mapping[str, Mapping],
                   train_item: Mapping) -> dict:
  """Rebuild a train state shaped like `template` from restored checkpoint items."""
  layout = setup.layout
  params_by_edge = {e: item["params"] for e, item in edge_items.items()}
  opt_by_edge = {e: item.get("opt", {}) for e, item in edge_items.items()}
  params = ckpt_lib.merge_by_edge(layout, template["params"], params_by_edge, train_item.get("globals", {}))
  opt = ckpt_lib.merge_by_edge(layout, template["opt"], opt_by_edge, train_item.get("opt_shared", {}))
  health = ckpt_lib.merge_by_edge(layout, template["health"], {}, train_item["health"])
  weights = ckpt_lib.merge_by_edge(layout, template["weights"], {}, train_item["weights"])
  state = {"step": jnp.int32(train_item["step"]), "params": jax.tree.map(jnp.asarray, params),
           "opt": jax.tree.map(jnp.asarray, opt), "rng": jnp.asarray(train_item["rng"], jnp.uint32),
           "weights": jax.tree.map(jnp.asarray, dict(weights)),
           "health": jax.tree.map(jnp.asarray, health)}
  return with_compute_copy(setup, state)


def _canonical_graph(graph: Mapping) -> tuple:
  """Node and edge sets: the order of modalities in a data file does not change the graph."""
  return (sorted(tuple(n) for n in graph.get("nodes", [])), sorted(graph.get("edges", [])))


def check_meta_matches(setup: Setup, meta: Mapping, step: int, directory: str) -> None:
  saved = meta.get("layout", {})
  now = setup.layout.to_dict()
  if _canonical_graph(saved.get("graph", {})) != _canonical_graph(now["graph"]):
    raise ckpt_lib.CheckpointMismatchError(
        f"checkpoint step {step} in {directory} was written for another graph "
        f"({ModalityGraph.from_dict(saved['graph']).describe() if 'graph' in saved else 'unknown'}) but the "
        f"config builds {setup.graph.describe()}; use a fresh --workdir or the matching config")
  if saved.get("arch") != now["arch"]:
    raise ckpt_lib.CheckpointMismatchError(f"checkpoint step {step} in {directory}: translator architecture differs "
                                   "from the config; use a fresh --workdir or the matching config")


def restore_state(setup: Setup, checkpoints: ckpt_lib.Checkpoints, template: Mapping,
                  step: int | None = None, log: Callable[[str], None] = logging.warning,
                  config=None, dataset: data_lib.Dataset | None = None, history: list | None = None
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
    if config is not None:
      changes = check_run_identity(setup, config, dataset, meta, candidate, checkpoints.directory, log)
      if history is not None:
        history[:] = list(meta.get("resume_changes", [])) + ([{"step": candidate, "changes": changes}]
                                                             if changes else [])
    edge_items = checkpoints.restore_edges(candidate, [e.name for e in setup.layout.trainable_edges])
    return items_to_state(setup, template, edge_items, checkpoints.restore_train(candidate))

  state, restored, problems = checkpoints.newest_usable(restore, step, log)
  if problems:  # damaged steps newer than the one restored (or all of them) make way, kept aside
    for damaged in [s for s in checkpoints.all_steps() if restored is None or s > restored]:
      log(f"moved damaged checkpoint step {damaged} to {checkpoints.quarantine(damaged)}")
    log(f"resuming from checkpoint step {restored}, the latest complete one" if restored is not None else
        f"no usable checkpoint in {checkpoints.directory} ({len(problems)} damaged); starting from scratch")
  return (state, restored) if restored is not None else (None, None)


# ---- metrics -----------------------------------------------------------------------------------

def flat_metrics(setup: Setup, metrics: Mapping) -> dict[str, float]:
  """Host-side flat dict {"loss/total": .., "loss/edge_cos/image->text": .., "loss/cycle/2": ..}."""
  m = jax.device_get(metrics)
  names = setup.plan.term_names()
  out = {"loss/total": float(m["loss/total"])}
  for kind, values in m["terms"].items():
    values = np.asarray(values)
    if len(values) and kind != "cycle":
      out[f"loss/{kind}"] = float(values.mean())
      for name, v in zip(names[kind], values):
        out[f"loss/{kind}/{name}"] = float(v)
  if "cycle_by_length" in m:
    lengths = set(getattr(setup.plan, "cycle_lengths", ()))
    for i, v in enumerate(np.asarray(m["cycle_by_length"])):
      if i + 2 in lengths:
        out[f"loss/cycle/{i + 2}"] = float(v)
  for key, norms in m["grad_norm"].items():
    for edge, v in zip(setup.layout.bucket_by_key[key].edges, np.asarray(norms)):
      out[f"grad_norm/{edge.name}"] = float(v)
  if "inv_temperature" in m:
    out["inv_temperature"] = float(m["inv_temperature"])
  return out


class MetricWriter:
  """Appends one JSON object per logged step to workdir/metrics.jsonl (process 0 only)."""

  def __init__(self, path: str | None):
    self.path = path if jax.process_index() == 0 else None
    if self.path:
      os.makedirs(os.path.dirname(self.path), exist_ok=True)

  def write(self, step: int, values: Mapping[str, float]) -> None:
    if self.path:
      with open(self.path, "a") as f:
        f.write(json.dumps({"step": int(step), **values}) + "\n")
    if os.environ.get("GRAPHBRIDGE_KILL_AFTER_STEP") == str(step):  # fault injection for tests
      os.kill(os.getpid(), 9)
    if os.environ.get("GRAPHBRIDGE_FILL_DISK_AFTER_STEP") == str(step) and self.path:  # fault injection:
      _fill_disk(os.path.dirname(self.path))                                          # a full disk


def _fill_disk(directory: str) -> None:
  """Fault injection for tests: fill the file system holding `directory` (a small tmpfs)."""
  with open(os.path.join(directory, "disk_filler"), "wb") as f:
    try:
      while True:
        f.write(b"\0" * 65536)
        f.flush()
    except OSError:
      pass


def trim_metrics(path: str, step: int) -> int:
  """Drop the rows of metrics.jsonl after `step` (written after the checkpoint a run resumes
  from; the resumed run writes them again), and a torn last line; keep one row per step.
  Returns how many rows were dropped. Process 0 only; the file is replaced atomically."""
  if jax.process_index() != 0 or not os.path.exists(path):
    return 0
  with open(path) as f:
    lines = f.read().splitlines()
  kept, seen = [], set()
  for line in lines:
    try:
      row = json.loads(line)
    except ValueError:
      continue  # a line torn by a kill
    if int(row.get("step", -1)) <= step and row.get("step") not in seen:
      seen.add(row.get("step"))
      kept.append(line)
  dropped = len(lines) - len(kept)
  if dropped:
    with open(path + ".tmp", "w") as f:
      f.write("".join(line + "\n" for line in kept))
    os.replace(path + ".tmp", path)
  return dropped


read_metrics = writers_lib.read_metrics  # metrics.jsonl rows; kept importable from here


# ---- the loop ----------------------------------------------------------------------------------

@dataclasses.dataclass
class TrainResult:
  setup: Setup
  state: dict
  frozen: dict
  dataset: data_lib.Dataset
  steps_run: int
  seconds: float
  compile_seconds: float
  final_metrics: dict

  @property
  def params(self) -> dict:
    """{bucket: stacked} for every edge, trainable and frozen (what compose/evaluate take)."""
    return {**self.frozen, **self.state["params"]["edges"]}

  def edge_params(self) -> dict:
    return unstack(self.setup.layout, self.params)


def progress_terms(values: Mapping[str, float]) -> str:
  """'edge_cos 0.412 infonce 0.380 cycle/2 0.370' from flat metrics."""
  return "  ".join(f"{k[5:]} {v:.3f}" for k, v in values.items()
                   if k.startswith("loss/") and k != "loss/total" and (k.count("/") == 1 or
                                                                       k.startswith("loss/cycle/")))


_log = writers_lib.log_process0  # the default `log` of every entry point


def train(config: ml_collections.ConfigDict, workdir: str | None, dataset: data_lib.Dataset | None = None,
          frozen_params: Mapping[str, PyTree] | None = None, graph: ModalityGraph | None = None,
          log: Callable[[str], None] = _log, objective: Callable[[Setup], Any] | None = None,
          frozen_from: Mapping[str, str] | None = None) -> TrainResult:
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
  rows read per step, on background threads (data.prefetch batches ahead)."""
  with contextlib.ExitStack() as exits:
    # the workdir lock is taken once the config, data and graph are checked and held to the end
    lock = lambda: exits.enter_context(workdir_lock.WorkdirLock(workdir, log=log))
    return _train(config, workdir, dataset, frozen_params, graph, log, objective, frozen_from, lock)


def _train(config, workdir, dataset, frozen_params, graph, log, objective, frozen_from,
           lock: Callable[[], Any]) -> TrainResult:
  problems = config_check.range_problems(config)  # also for library callers that skip validate()
  if problems:
    raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
  dataset = dataset if dataset is not None else data_lib.load_for_config(config)
  full_dataset, validator = dataset, None
  validate_every = int(config.train.get("validate_every", 0) or 0)
  if validate_every > 0:  # held-back train rows: never trained on, scored every validate_every steps
    dataset, val_view = validation_lib.hold_out(dataset, float(config.train.get("validate_fraction", 0.1)),
                                                int(config.seed))
  frozen_params = dict(frozen_params or {})
  setup = build_setup(config, dataset, graph=graph, frozen=tuple(frozen_params), objective=objective,
                      training=True)
  layout, plan = setup.layout, setup.plan
  mesh = sharding_lib.mesh_from_config(config)  # None: one device, no shardings (the plain path)
  if mesh is not None:
    sharding_lib.check_batch(setup.batch_size, mesh)
  host_sampling = bool(config.data.get("host_sampling", False))
  frozen_f32 = stack(layout, frozen_params, buckets=layout.frozen_buckets) if frozen_params else {}
  frozen = compute_frozen(setup, frozen_f32)
  frozen_from = dict(frozen_from or {})
  frozen_items = {e: {"params": jax.tree.map(np.asarray, p), "opt": {}} for e, p in frozen_params.items()
                  if e not in frozen_from}
  tx = make_optimizer(config)
  n_total = total_steps(config)
  state = init_state(setup, tx, int(config.seed), phase_weights(config, plan, 0), mesh=mesh)
  if mesh is not None:
    frozen = sharding_lib.put(frozen, sharding_lib.tree_shardings(layout, frozen, mesh))
    state_sh = sharding_lib.shardings_of(state)

  checkpoints = None
  start = 0
  history: list = []  # changes accepted on resumes (train.allow_resume_changes), kept in every meta
  if workdir:
    lock()
    checkpoints = ckpt_lib.Checkpoints(os.path.join(workdir, "checkpoints"),
                                       max_to_keep=int(config.train.get("keep_checkpoints", 2)))
    # with a mesh the template is host zeros: restore reads only its shapes, and a state sharded
    # over several processes cannot be read by one
    template = state if mesh is None else sharding_lib.zeros_like_host(state)
    restored, restored_step = restore_state(setup, checkpoints, template, log=log, config=config,
                                            dataset=dataset, history=history)
    if restored is not None:
      state, start = restored, int(restored_step)
      if mesh is not None:
        state = sharding_lib.put(state, state_sh)
      log(f"resumed from checkpoint step {start} in {checkpoints.directory}")
    trim_metrics(os.path.join(workdir, "metrics.jsonl"), start)
  writer = writers_lib.for_run(workdir, config, MetricWriter(os.path.join(workdir, "metrics.jsonl") if workdir
                                                             else None), log=log)
  lr_at = learning_rate_schedule(config)
  if validate_every > 0:
    validator = validation_lib.Validator(layout, val_view, setup.compute_dtype,
                                         keep=bool(config.train.get("keep_best", False)))

  skip_nonfinite = bool(config.train.get("skip_nonfinite", True))
  batches = None
  if host_sampling:
    sampler = data_lib.HostSampler(plan.sample, sampler_arrays(setup, dataset), setup.batch_size, state["rng"])
    if mesh is None:
      produce = lambda s: jax.device_put(sampler.batch(s))
      batch_sh = None
    else:
      batch_sh = sharding_lib.batch_shardings(sampler.batch_shapes, setup.batch_size, mesh)
      produce = lambda s: sampler.global_batch(s, batch_sh)
    batches = data_lib.Prefetcher(produce, start, n_total, size=int(config.data.get("prefetch", 4)))
    step_fn = make_batch_step(setup, tx, skip_nonfinite=skip_nonfinite, mesh=mesh, batch_sharding=batch_sh)
  elif mesh is None:
    arrays = jax.device_put(data_lib.materialize_tables(sampler_arrays(setup, dataset)))
    step_fn = make_device_step(setup, tx, skip_nonfinite=skip_nonfinite)
  else:
    host_arrays = data_lib.materialize_tables(sampler_arrays(setup, dataset))
    arrays_sh = sharding_lib.arrays_shardings(host_arrays, mesh,
                                              by_rows=bool(config.get("mesh", {}).get("shard_data_rows", False)))
    arrays = sharding_lib.put_arrays(host_arrays, arrays_sh)
    step_fn = make_device_step(setup, tx, skip_nonfinite=skip_nonfinite, mesh=mesh, arrays_sharding=arrays_sh)
  if mesh is not None:
    log(f"devices: {sharding_lib.describe(mesh)}; translators by bucket: "
        + ", ".join(f"{k} {v}" for k, v in sharding_lib.spec_summary(layout, state["params"]["edges"]).items()))
  log(f"graph: {setup.graph.describe()}")
  log(f"plan: {plan.describe()}; {describe_positives(setup)}; {start}/{n_total} steps done")

  log_every = max(int(config.train.log_every), 1)
  print_every = max(int(config.train.get("print_every", log_every)), 1)
  ckpt_every = int(config.train.checkpoint_every)
  metrics, compile_seconds = None, 0.0
  t_start = t_last = time.perf_counter()
  last_logged = start
  step = start
  try:
    for step in range(start, n_total):
      if int(config.finetune.steps) > 0 and step == int(config.train.steps):
        weights = phase_weights(config, plan, step)
        if mesh is not None:
          weights = sharding_lib.put(weights, state_sh["weights"])
        state = {**state, "weights": weights}
        log(f"step {step}: contrastive fine-tuning phase ({int(config.finetune.steps)} steps)")
      state, metrics = step_fn(state, frozen, next(batches) if batches is not None else arrays)
      done = step + 1
      if step == start:
        jax.block_until_ready(state["step"])
        compile_seconds = time.perf_counter() - t_start
        t_last, last_logged = time.perf_counter(), done
      if done % log_every == 0 or done == n_total:
        raise_if_unhealthy(setup, state["health"])
        values = flat_metrics(setup, metrics)
        now = time.perf_counter()
        rate = (done - last_logged) / max(now - t_last, 1e-9) if done > last_logged else float("nan")
        t_last, last_logged = now, done
        values["lr"] = float(lr_at(step))
        if validator is not None and (done % validate_every == 0 or done == n_total):
          values.update(validator.score(done, {**frozen_f32, **state["params"]["edges"]}))
        writer.write(done, {**values, "steps_per_sec": rate})
        if done % print_every == 0 or done == n_total or "val/mAP" in values:
          speed = (f"{rate:.1f} steps/s, eta {writers_lib.format_eta((n_total - done) / rate)}" if rate == rate
                   else f"compiled in {compile_seconds:.1f}s")
          val = (f"  val mAP {values['val/mAP']:.3f} (best {values['val/best_mAP']:.3f} at "
                 f"{int(values['val/best_step'])})" if "val/mAP" in values else "")
          log(f"step {done}/{n_total}  loss {values['loss/total']:.4f}  {progress_terms(values)}  "
              f"lr {values['lr']:.2e}{val}  {speed}")
      if done == n_total and validator is not None and validator.keep and validator.best_params is not None \
          and validator.best_step != done:  # train.keep_best: end with the best validated step's params
        state = with_edge_params(state, validator.best_params, setup)
        log(f"keeping the params of step {validator.best_step} (best val mAP {validator.best_map:.3f}; "
            f"train.keep_best)")
      if checkpoints and ((ckpt_every > 0 and done % ckpt_every == 0) or done == n_total):
        raise_if_unhealthy(setup, state["health"])
        # every process gathers the (possibly sharded) state; Orbax writes numpy from process 0
        edge_items, train_item = state_to_items(setup, state if mesh is None else sharding_lib.to_host(
            {k: v for k, v in state.items() if k != "compute_params"}))
        checkpoints.save(done, {**edge_items, **frozen_items}, train_item, run_meta(setup, config, dataset, history),
                         copy_items_from=frozen_from)
  finally:  # also on errors: saves in flight finish, so the last good checkpoint stays usable
    writer.close()
    if batches is not None:
      batches.close()
    if checkpoints:
      checkpoints.close()
  if metrics is not None:
    raise_if_unhealthy(setup, state["health"])
  seconds = time.perf_counter() - t_start
  final = flat_metrics(setup, metrics) if metrics is not None else {}
  if mesh is not None:  # callers (evaluation, grafting) get host-gathered arrays, as from one device
    state = jax.tree.map(jnp.asarray, sharding_lib.to_host(state))
  return TrainResult(setup, state, frozen_f32, full_dataset, max(n_total - start, 0), seconds, compile_seconds,
                     final)


def with_edge_params(state: dict, params: Mapping, setup) -> dict:
  """state with its trainable edge params replaced by `params` ({bucket_key: stacked}, host arrays; extra
  keys such as frozen buckets are ignored), each placed as the leaf it replaces (device, sharding)."""
  edges = state["params"]["edges"]
  new_edges = jax.tree.map(lambda old, new: jax.device_put(jnp.asarray(new, old.dtype), old.sharding), edges,
                           {k: params[k] for k in edges})
  out = {**state, "params": {**state["params"], "edges": new_edges}}
  if "compute_params" in state:
    out["compute_params"] = to_compute_dtype(setup, new_edges)
  return out


# ---- loading a trained run ---------------------------------------------------------------------

@dataclasses.dataclass
class TrainedRun:
  """A run restored from its checkpoint directory (for evaluation, grafting, composing paths)."""
  layout: EdgeLayout
  params: dict              # {bucket_key: stacked} for every edge
  config: ml_collections.ConfigDict
  meta: dict
  step: int
  workdir: str

  @property
  def graph(self) -> ModalityGraph:
    return self.layout.graph

  @property
  def compute_dtype(self) -> str:
    return self.meta.get("compute_dtype", "float32")

  def edge_params(self) -> dict:
    return unstack(self.layout, self.params)


def layout_from_meta(meta: Mapping) -> EdgeLayout:
  layout = meta["layout"]
  graph = ModalityGraph.from_dict(layout["graph"])
  arch = {e: TranslatorArch.from_dict(a) for e, a in layout["arch"].items()}
  return EdgeLayout.build(graph, arch)  # every edge trainable: a restored run is a plain set of params


def load_trained(workdir: str, step: int | None = None) -> TrainedRun:
  """Restore every edge's params from workdir/checkpoints (latest complete step by default)."""
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    raise ckpt_lib.CheckpointError(f"no checkpoints in {workdir!r} (expected {directory}); train first")
  checkpoints = ckpt_lib.Checkpoints(directory, max_to_keep=None, async_save=False, read_only=True)
  if not checkpoints.all_steps():
    raise ckpt_lib.CheckpointError(f"no complete checkpoint in {directory}")

  def restore(candidate: int):
    meta = checkpoints.check_complete(candidate)
    layout = layout_from_meta(meta)
    return meta, layout, checkpoints.restore_edges(candidate, [e.name for e in layout.graph.edges])

  found, step, problems = checkpoints.newest_usable(restore, step)
  if found is None:
    raise ckpt_lib.CheckpointError(f"no usable checkpoint in {directory}: " + "; ".join(problems))
  if problems:
    logging.warning("using checkpoint step %d, the latest complete one in %s", step, directory)
  meta, layout, items = found
  params = stack(layout, {e: jax.tree.map(jnp.asarray, item["params"]) for e, item in items.items()})
  config = ml_collections.ConfigDict(meta.get("config", {}))
  return TrainedRun(layout, params, config, meta, step, workdir)
