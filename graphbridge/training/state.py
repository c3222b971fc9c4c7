"""The train state (a plain dict, big_vision style) and its checkpoint items."""

from __future__ import annotations

from typing import Mapping
import jax
import jax.numpy as jnp
import numpy as np
import optax
from graphbridge.training import checkpoint as checkpoint_lib
from graphbridge.training import sharding as sharding_lib
from graphbridge.model.translators import dtype_from_name, init_many, stack
from graphbridge.training.setup import Setup
from typing import Any

PyTree = Any


def init_state(
  setup: Setup,
  tx: optax.GradientTransformation,
  seed: int,
  weights: Mapping[str, jax.Array],
  mesh: jax.sharding.Mesh | None = None,
) -> dict:
  """The train state at step 0. With a `mesh`: built by one jit whose out_shardings place every
  leaf where the step wants it (eval_shape, then jit(init, out_shardings=...)), so no device ever
  holds more of it than its share."""
  if mesh is not None:
    weights = dict(weights)
    init = lambda: init_state(setup, tx, seed, weights)
    shardings = sharding_lib.tree_shardings(setup.layout, jax.eval_shape(init), mesh)
    return jax.jit(init, out_shardings=shardings)()
  layout = setup.layout
  per_edge = init_many(
    [(e, b.d_in, b.d_out, b.arch) for b in layout.trainable_buckets for e in b.edges], seed
  )
  params = {
    "edges": stack(layout, per_edge, trainable_only=True),
    "globals": setup.plan.initial_globals(),
  }
  state = {
    "step": jnp.int32(0),
    "params": params,
    "opt": tx.init(params),
    "rng": jax.random.PRNGKey(seed),
    "weights": dict(weights),
    "health": _fresh_health(setup),
  }
  return with_compute_copy(setup, state)


def state_shardings(
  setup: Setup, tx: optax.GradientTransformation, mesh: jax.sharding.Mesh
) -> PyTree:
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
  return {
    "bad_step": jnp.int32(-1),
    "terms_finite": {k: jnp.ones((len(v),), bool) for k, v in plan.term_names().items()},
    "grads_finite": {b.key: jnp.ones((b.size,), bool) for b in setup.layout.trainable_buckets},
  }


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
  params_by_edge, globals_ = checkpoint_lib.split_by_edge(setup.layout, state["params"])
  opt_by_edge, opt_shared = checkpoint_lib.split_by_edge(setup.layout, state["opt"])
  edge_items = {
    e: {"params": params_by_edge[e], "opt": opt_by_edge.get(e, {})} for e in params_by_edge
  }
  train_item = {
    "step": np.asarray(state["step"]),
    "rng": np.asarray(
      jax.random.key_data(state["rng"])
      if jnp.issubdtype(state["rng"].dtype, jax.dtypes.prng_key)
      else state["rng"]
    ),
    "weights": _drop_empty(state["weights"]),
    "health": _drop_empty(state["health"]),
    "globals": globals_,
    "opt_shared": opt_shared,
  }
  return edge_items, train_item


def items_to_state(
  setup: Setup, template: Mapping, edge_items: Mapping[str, Mapping], train_item: Mapping
) -> dict:
  """Rebuild a train state shaped like `template` from restored checkpoint items."""
  layout = setup.layout
  params_by_edge = {e: item["params"] for e, item in edge_items.items()}
  opt_by_edge = {e: item.get("opt", {}) for e, item in edge_items.items()}
  params = checkpoint_lib.merge_by_edge(
    layout, template["params"], params_by_edge, train_item.get("globals", {})
  )
  opt = checkpoint_lib.merge_by_edge(
    layout, template["opt"], opt_by_edge, train_item.get("opt_shared", {})
  )
  health = checkpoint_lib.merge_by_edge(layout, template["health"], {}, train_item["health"])
  weights = checkpoint_lib.merge_by_edge(layout, template["weights"], {}, train_item["weights"])
  state = {
    "step": jnp.int32(train_item["step"]),
    "params": jax.tree.map(jnp.asarray, params),
    "opt": jax.tree.map(jnp.asarray, opt),
    "rng": jnp.asarray(train_item["rng"], jnp.uint32),
    "weights": jax.tree.map(jnp.asarray, dict(weights)),
    "health": jax.tree.map(jnp.asarray, health),
  }
  return with_compute_copy(setup, state)


def with_edge_params(state: dict, params: Mapping, setup) -> dict:
  """state with its trainable edge params replaced by `params` ({bucket_key: stacked}, host arrays;
  extra keys such as frozen buckets are ignored), each placed as the leaf it replaces (device,
  sharding)."""
  edges = state["params"]["edges"]
  new_edges = jax.tree.map(
    lambda old, new: jax.device_put(jnp.asarray(new, old.dtype), old.sharding),
    edges,
    {k: params[k] for k in edges},
  )
  out = {**state, "params": {**state["params"], "edges": new_edges}}
  if "compute_params" in state:
    out["compute_params"] = to_compute_dtype(setup, new_edges)
  return out
