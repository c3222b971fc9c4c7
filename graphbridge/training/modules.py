"""Training models made of named modules: anything that is not a translator graph (DMVAE, or a
strategy of your own, docs/extending.md).

A model supplies {module name: params} to train (and frozen ones that take part unchanged), a loss
over them and the arrays it samples from. `train_modules` runs the shared loop (loop.py) on a
plain-dict state {"params", "opt", "step", "key"} with one Orbax item per module, resumes from the
newest complete checkpoint, and copies frozen modules' items byte for byte from the run they came
from (a graft). `load_modules` restores the modules of a workdir.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from graphbridge.core.errors import CheckpointError, CheckpointMismatchError, NonFiniteError
from graphbridge.training import checkpoint as checkpoint_lib
from graphbridge.training import loop as loop_lib
from graphbridge.training import writers as writers_lib
from graphbridge.training.optimizer import learning_rate_schedule

PyTree = Any
# loss(trainable {module: params}, frozen {module: params}, arrays, key) -> (scalar, {name: scalar})
ModuleLoss = Callable[[Mapping, Mapping, Any, jax.Array], "tuple[jax.Array, dict]"]


def item_name(module: str) -> str:
  """'enc:image' -> 'module.enc.image': a module's Orbax item in a checkpoint step."""
  kind, sep, rest = module.partition(":")
  return f"module.{kind}.{rest}" if sep else f"module.{module}"


def make_step(loss: ModuleLoss, tx: optax.GradientTransformation) -> Callable:
  """One jitted, donated step: state {"params", "opt", "step", "key"}, frozen, arrays -> (state,
  metrics). The step's key is fold_in(state key, step), so a resumed run draws the same batches. A
  step whose loss or gradients are not finite is not applied (metrics["nonfinite"] = 1)."""

  def step(state, frozen, arrays):
    key = jax.random.fold_in(state["key"], state["step"])
    (value, metrics), grads = jax.value_and_grad(loss, has_aux=True)(
      state["params"], frozen, arrays, key
    )
    updates, opt = tx.update(grads, state["opt"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    finite = jnp.isfinite(value) & jnp.isfinite(optax.tree.norm(grads))
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    metrics["nonfinite"] = 1.0 - finite.astype(jnp.float32)
    metrics["grad_norm"] = optax.tree.norm(grads)
    return {
      "params": keep(params, state["params"]),
      "opt": keep(opt, state["opt"]),
      "step": state["step"] + 1,
      "key": state["key"],
    }, metrics

  return jax.jit(step, donate_argnums=0)


def state_items(state: Mapping, modules: Sequence[str]) -> tuple[dict, dict]:
  """({item name: {"params", "opt"}}, train item) of a state, as numpy."""
  host = jax.device_get(state)
  opt_per, opt_shared = checkpoint_lib.split_items(
    host["opt"], checkpoint_lib.module_locator(modules)
  )
  items = {}
  for m in modules:  # Orbax cannot store empty subtrees: "opt" only where the optimizer keeps rows
    items[item_name(m)] = {"params": jax.tree.map(np.asarray, host["params"][m])}
    if opt_per.get(m):
      items[item_name(m)]["opt"] = opt_per[m]
  train = {"step": np.asarray(host["step"]), "key": np.asarray(host["key"])}
  if opt_shared:
    train["opt"] = opt_shared
  return items, train


def restore_state(
  checkpoints: checkpoint_lib.Checkpoints, step: int, template: Mapping, modules: Sequence[str]
) -> dict:
  """The state saved at `step`, shaped like `template`."""
  locate = checkpoint_lib.module_locator(modules)
  per = {m: checkpoints.restore_item(step, item_name(m)) for m in modules}
  train = checkpoints.restore_train(step)
  params = checkpoint_lib.merge_items(
    {m: template["params"][m] for m in modules}, {m: per[m]["params"] for m in modules}, {}, locate
  )
  opt = checkpoint_lib.merge_items(
    template["opt"], {m: per[m].get("opt", {}) for m in modules}, train.get("opt", {}), locate
  )
  return {
    "params": params,
    "opt": opt,
    "step": jnp.asarray(train["step"], jnp.int32),
    "key": jnp.asarray(train["key"], template["key"].dtype),
  }


@dataclasses.dataclass
class ModulesResult:
  params: dict  # every module, trainable and frozen
  state: dict  # {"step": ...}
  steps_run: int
  seconds: float
  compile_seconds: float
  final_metrics: dict
  trainable: tuple[str, ...]  # the modules trained in this run


def train_modules(
  config,
  workdir: str | None,
  params: Mapping[str, PyTree],
  step: Callable,
  tx: optax.GradientTransformation,
  arrays: Any,
  key: jax.Array,
  meta: Mapping,
  same_model: Callable[[Mapping], bool],
  line: Callable[[Mapping], str],
  frozen: Mapping[str, PyTree] | None = None,
  frozen_from: str | None = None,
  log: Callable[[str], None] = print,
) -> ModulesResult:
  """Train `params` ({module: params}) for config.train.steps steps of `step` (make_step's, built
  with `tx`); checkpoints and metrics under workdir (None: neither).

  meta: what every checkpoint records (the model's spec; "kind" names the model in messages);
  same_model(saved meta): whether a checkpoint in workdir is of this model (else resuming is refused
  with CheckpointMismatchError). frozen: modules that take part, not trained; frozen_from: the step
  directory their items are copied from byte for byte. line(values): the progress line's text."""
  frozen = {k: jax.tree.map(jnp.asarray, v) for k, v in (frozen or {}).items()}
  modules = list(params)
  kind = str(meta.get("kind", "model"))
  meta = {**meta, "strategy": str(config.strategy)}  # how a later load finds the strategy
  state = {
    "params": dict(params),
    "opt": tx.init(dict(params)),
    "step": jnp.asarray(0, jnp.int32),
    "key": key,
  }
  cadence = loop_lib.Cadence.from_config(config, int(config.train.steps))
  checkpoints, start = None, 0
  if workdir:
    os.makedirs(workdir, exist_ok=True)
    checkpoints = checkpoint_lib.Checkpoints(
      os.path.join(workdir, "checkpoints"), max_to_keep=int(config.train.keep_checkpoints)
    )

    def restore(candidate: int):
      old = checkpoints.check_complete(candidate)
      if not same_model(old):
        raise CheckpointMismatchError(
          f"{checkpoints.directory} holds a checkpoint of another model "
          f"({old.get('kind', 'graph')}, {old.get('spec')}); use a new --workdir"
        )
      return restore_state(checkpoints, candidate, state, modules)

    # a damaged newer step is skipped with a line naming it, and moved aside (kept)
    restored, saved, problems = checkpoints.newest_usable(restore, None, log)
    if problems:
      checkpoints.set_aside_damaged(saved, log)
    if restored is not None:
      state, start = restored, saved
      log(f"resumed from checkpoint step {start} in {checkpoints.directory}")
    writers_lib.trim_metrics(os.path.join(workdir, writers_lib.METRICS_FILE), start)
  arrays = jax.device_put(arrays)
  lr_at = learning_rate_schedule(config)
  copy = {item_name(m): frozen_from for m in frozen} if frozen_from else None

  def values(done, state, metrics):
    out = {k: float(v) for k, v in jax.device_get(metrics).items()}
    if not np.isfinite(out["loss/total"]):
      raise NonFiniteError(f"{kind}: loss is {out['loss/total']} at step {done} (lower optim.lr)")
    out["lr"] = float(lr_at(done - 1))
    return out

  def save(done, state):
    items, train_item = state_items(state, modules)
    checkpoints.save_items(done, items, train_item, meta, copy_items_from=copy)

  t0 = time.perf_counter()
  result = loop_lib.run(
    state,
    start,
    cadence,
    lambda s, i: step(s, frozen, arrays),
    values=values,
    line=line,
    writer=writers_lib.for_run(workdir, config, log=log),
    log=log,
    save=save if checkpoints else None,
    close=[checkpoints.close] if checkpoints else [],
  )
  state = result.state
  values = result.values
  if not values and workdir:  # nothing left to train: the final step's logged values
    values = writers_lib.logged_at(
      os.path.join(workdir, writers_lib.METRICS_FILE), cadence.total, drop=()
    )
  return ModulesResult(
    {**frozen, **state["params"]},
    {"step": int(state["step"])},
    result.steps_run,
    time.perf_counter() - t0,
    result.compile_seconds,
    values,
    tuple(modules),
  )


@dataclasses.dataclass
class LoadedModules:
  params: dict  # {module: params} of every module in the checkpoint
  meta: dict
  step: int
  step_dir: str
  skipped: tuple = ()  # (step, problem) of newer steps skipped as damaged


def load_modules(
  workdir: str,
  templates: Callable[[Mapping], Mapping[str, PyTree]],
  kind: str,
  step: int | None = None,
  log: Callable[[str], None] | None = None,
) -> LoadedModules:
  """The modules of the `kind` model in `workdir` (its newest usable step, or `step`);
  templates(meta) -> {module: params of the right structure} for every module the meta lists.
  A newer damaged step is skipped with one line in `log` (default: stderr) naming it."""
  _, checkpoints = checkpoint_lib.read_workdir(workdir)

  def restore(candidate: int):
    meta = checkpoints.check_complete(candidate)
    if meta.get("kind") != kind:
      raise CheckpointMismatchError(
        f"{workdir} step {candidate} is not a {kind} checkpoint "
        f"(kind {meta.get('kind', 'graph')!r})"
      )
    params = {}
    for module, template in templates(meta).items():
      tree = checkpoints.restore_item(candidate, item_name(module))["params"]
      params[module] = jax.tree.map(
        jnp.asarray,
        checkpoint_lib.merge_items(
          {"p": template}, {"p": tree}, {}, checkpoint_lib.module_locator(["p"])
        )["p"],
      )
    return params, meta

  found, step, problems = checkpoints.newest_usable(restore, step, log or checkpoint_lib.warn)
  if found is None:
    raise CheckpointError(
      f"no complete checkpoint in {workdir}/checkpoints"
      + (": " + "; ".join(problems) if problems else "")
    )
  params, meta = found
  skipped = tuple(zip([s for s in reversed(checkpoints.all_steps()) if s > step], problems))
  return LoadedModules(params, meta, step, checkpoints.step_dir(step), skipped)
