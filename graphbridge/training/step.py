"""The one jitted, donated train step, its health record and its metrics."""

from __future__ import annotations

from typing import Callable, Mapping
import jax
import jax.numpy as jnp
import numpy as np
import optax
from graphbridge.data import dataset as dataset_lib
from graphbridge.training import sharding as sharding_lib
from graphbridge.model.translators import dtype_from_name
from graphbridge.core.errors import NonFiniteError
from graphbridge.training.setup import Setup
from graphbridge.training.state import state_shardings, to_compute_dtype
from typing import Any

PyTree = Any


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


def make_step_fn(
  setup: Setup, tx: optax.GradientTransformation, skip_nonfinite: bool = True
) -> Callable:
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
    finite = jnp.isfinite(total) & jnp.all(
      jnp.asarray([jnp.all(v) for v in list(terms_finite.values()) + list(grads_finite.values())])
    )

    def update(params, opt):
      updates, new_opt = tx.update(grads, opt, params)
      return optax.apply_updates(params, updates), new_opt

    if skip_nonfinite:  # a bad step leaves params and optimizer untouched; the host stops the run
      # one branch runs: no select pass over params and optimizer state on good steps
      new_params, new_opt = jax.lax.cond(
        finite, update, lambda p, o: (p, o), state["params"], state["opt"]
      )
    else:
      new_params, new_opt = update(state["params"], state["opt"])
    health = state["health"]
    first_bad = (health["bad_step"] < 0) & ~finite
    health = {
      "bad_step": jnp.where(first_bad, state["step"], health["bad_step"]),
      "terms_finite": jax.tree.map(
        lambda new, old: jnp.where(first_bad, new, old), terms_finite, health["terms_finite"]
      ),
      "grads_finite": jax.tree.map(
        lambda new, old: jnp.where(first_bad, new, old), grads_finite, health["grads_finite"]
      ),
    }
    new_state = {
      **state,
      "step": state["step"] + 1,
      "params": new_params,
      "opt": new_opt,
      "health": health,
    }
    if lowp:
      new_state["compute_params"] = to_compute_dtype(setup, new_params["edges"])
    metrics = {"loss/total": total, "grad_norm": grad_norms, **aux}
    return new_state, metrics

  return step


def make_device_step(
  setup: Setup,
  tx: optax.GradientTransformation,
  skip_nonfinite: bool = True,
  donate: bool = True,
  mesh: jax.sharding.Mesh | None = None,
  arrays_sharding: PyTree | None = None,
) -> Callable:
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
      batch = jax.lax.with_sharding_constraint(
        batch, sharding_lib.batch_shardings(batch, setup.batch_size, mesh)
      )
    return step(state, frozen, batch)

  if mesh is None:
    return jax.jit(device_step, donate_argnums=donate_argnums)
  state_sh = state_shardings(setup, tx, mesh)
  in_shardings = (
    state_sh,
    frozen_shardings(setup, mesh),
    arrays_sharding if arrays_sharding is not None else sharding_lib.replicated(mesh),
  )
  return jax.jit(
    device_step,
    in_shardings=in_shardings,
    out_shardings=(state_sh, sharding_lib.replicated(mesh)),
    donate_argnums=donate_argnums,
  )


def frozen_shardings(setup: Setup, mesh: jax.sharding.Mesh) -> dict:
  """Shardings of the frozen edges argument ({bucket: stacked}, every frozen bucket, or {})."""
  return {
    b.key: sharding_lib.NamedSharding(mesh, sharding_lib.edge_axis_spec(b.size, mesh))
    for b in setup.layout.frozen_buckets
  }


def make_batch_step(
  setup: Setup,
  tx: optax.GradientTransformation,
  skip_nonfinite: bool = True,
  donate: bool = True,
  mesh: jax.sharding.Mesh | None = None,
  batch_sharding: PyTree | None = None,
  prepare: Callable | None = None,
) -> Callable:
  """jit(step(state, frozen, batch)) for batches drawn on the host (data.host_sampling).

  prepare: batch = prepare(argument) inside the jitted step (HostFeed.finish: float16 rows and
  their norms -> the normalised float32 batch).
  With a mesh: in/out shardings as make_device_step; `batch_sharding` (default: split over
  `data`, a prefix of every batch leaf) is how the host sampler lays the batch out."""
  inner = make_step_fn(setup, tx, skip_nonfinite)
  step = (
    inner if prepare is None else (lambda state, frozen, raw: inner(state, frozen, prepare(raw)))
  )
  donate_argnums = (0,) if donate else ()
  if mesh is None:
    return jax.jit(step, donate_argnums=donate_argnums)
  state_sh = state_shardings(setup, tx, mesh)
  batch_sh = (
    batch_sharding
    if batch_sharding is not None
    else sharding_lib.NamedSharding(mesh, sharding_lib.P(sharding_lib.DATA))
  )
  return jax.jit(
    step,
    in_shardings=(state_sh, frozen_shardings(setup, mesh), batch_sh),
    out_shardings=(state_sh, sharding_lib.replicated(mesh)),
    donate_argnums=donate_argnums,
  )


def sampler_arrays(setup: Setup, dataset: dataset_lib.Dataset) -> dict:
  """Numpy arrays the device sampler draws batches from (see the objective's sampler_arrays)."""
  return setup.plan.sampler_arrays(dataset, dict(setup.infonce_positives))


def raise_if_unhealthy(setup: Setup, health: Mapping) -> None:
  health = jax.device_get(health)
  bad_step = int(health["bad_step"])
  if bad_step < 0:
    return
  names = setup.plan.term_names()
  bad_terms = [
    f"{kind} {names[kind][i]}"
    for kind, ok in health["terms_finite"].items()
    for i in np.nonzero(~np.asarray(ok))[0]
  ]
  bad_grads = [
    setup.layout.bucket_by_key[key].edges[i].name
    for key, ok in health["grads_finite"].items()
    for i in np.nonzero(~np.asarray(ok))[0]
  ]
  parts = []
  if bad_terms:
    parts.append("non-finite loss term(s): " + ", ".join(bad_terms))
  if bad_grads:
    parts.append("non-finite gradient for edge(s): " + ", ".join(bad_grads))
  # 1-based, like progress lines and checkpoint steps: "step 5" is the 5th update
  raise NonFiniteError(
    f"step {bad_step + 1}: "
    + ("; ".join(parts) or "non-finite total loss")
    + " (the update was skipped; checkpoints hold the last good state)"
  )


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


def progress_terms(values: Mapping[str, float]) -> str:
  """'edge_cos 0.412 infonce 0.380 cycle/2 0.370' from flat metrics."""
  return "  ".join(
    f"{k[5:]} {v:.3f}"
    for k, v in values.items()
    if k.startswith("loss/")
    and k != "loss/total"
    and (k.count("/") == 1 or k.startswith("loss/cycle/"))
  )
