"""The losses of one training step, planned statically and computed in one traced program.

A `LossPlan` is built once in Python from the edge layout and the loss settings:

* supervised edges (those with pairs): per-edge cosine reconstruction `1 - cos(f_e(x_a), y_b)` and
  symmetric InfoNCE between `f_e(x_a)` and `y_b`;
* every cycle up to the configured length, per start modality (`image->text->image`,
  `image->text->audio->image`, ...): `1 - cos(cycle(x_m), x_m)` on samples of m's own rows.

Cycles that share a prefix share its computation: the plan is a prefix tree whose values live in
*slots* ([batch, d] arrays). Level k applies every edge needed at hop k; within a level all
applications of one bucket (edges with the same shapes) run as one batched translator call on a
[E_b, rows, d_in] stack. The number of levels is the longest cycle, not the number of edges or
cycles, so the traced program stays small as the graph grows.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, Sequence
import jax
import jax.numpy as jnp
import numpy as np
from graphbridge.core.graph import Edge, Path, path_edges, path_name
from graphbridge.data import positives as positives_lib
from graphbridge.data import sampling as sampling_lib
from graphbridge.core.errors import GraphError
from graphbridge.model.losses import cosine_loss, gather_rows, structure_loss, symmetric_infonce
from graphbridge.model.translators import EdgeLayout, apply_bucket, translator_flops


PyTree = Any


@dataclasses.dataclass(frozen=True)
class PairTerm:
  """Cosine + symmetric InfoNCE between the two sides of training pairs, each side translated
  along its own path; both paths end at the same node (the space the pair is compared in).

  pairs: the pair set "a->b" (rows of a, rows of b). Graph edge a->b: path_a=(a, b), path_b=(b,);
  pivot binding: (a, p) vs (p,); CLIP-style pairwise into a shared node s: (a, s) vs (b, s)."""

  name: str
  pairs: str
  path_a: Path
  path_b: Path

  def __post_init__(self):
    a, b = self.pairs.split("->")
    if self.path_a[0] != a or self.path_b[0] != b or self.path_a[-1] != self.path_b[-1]:
      raise GraphError(
        f"pair term {self.name}: paths {path_name(self.path_a)} and {path_name(self.path_b)} "
        f"must start at {a} and {b} and end at the same node"
      )

  @property
  def edges(self) -> tuple[Edge, ...]:
    return path_edges(self.path_a) + path_edges(self.path_b)


def edge_term(edge: Edge) -> PairTerm:
  """The per-edge term of the translator graph: f_e(x_src) against y_dst in dst's space."""
  return PairTerm(edge.name, edge.name, (edge.src, edge.dst), (edge.dst,))


def meet_term(a: str, b: str, space: str) -> PairTerm:
  """Both sides projected into `space` (a pivot modality or a virtual shared node)."""
  path_a = (a,) if a == space else (a, space)
  path_b = (b,) if b == space else (b, space)
  return PairTerm(
    f"{path_name(path_a)}<-{b}" if b != space else path_name(path_a), f"{a}->{b}", path_a, path_b
  )


@dataclasses.dataclass(frozen=True)
class LossSettings:
  """Static loss settings (weights are dynamic: see `initial_weights`)."""

  edge_cos: float = 1.0
  infonce: float = 0.5
  temperature: float = 0.07
  learn_temperature: bool = False
  cycle_weights: tuple[float, ...] = (
    0.5,
  )  # weight of 2-cycles, 3-cycles, ... (length = max cycle)
  supervised_edges: tuple[str, ...] | None = None  # None: every trainable edge that has pairs
  cycle_starts: tuple[str, ...] | None = None  # None: every node with data
  pair_terms: tuple[PairTerm, ...] | None = (
    None  # explicit terms (strategies); overrides supervised_edges
  )
  aligned_batches: bool = (
    False  # instance-aligned data: row i of every modality is one sample, so a
  )
  # pair term a->b uses the cycle batches of a and b (shared first hop)
  structure: float = 0.0  # neighbourhood-structure regulariser weight (structure_loss)
  structure_temperature: float = 0.1

  @property
  def max_cycle_length(self) -> int:
    lengths = [i + 2 for i, w in enumerate(self.cycle_weights) if w > 0]
    return max(lengths) if lengths else 0


@dataclasses.dataclass(frozen=True)
class BucketCall:
  """One batched translator call: inputs[i][r] is the slot fed to edge i of the bucket (row block
  r); outputs[i][r] is the slot its result goes to (-1: padding, discarded)."""

  bucket_key: str
  inputs: tuple[tuple[int, ...], ...]
  outputs: tuple[tuple[int, ...], ...]


@dataclasses.dataclass(frozen=True)
class LossPlan:
  layout: EdgeLayout
  settings: LossSettings
  terms: tuple[PairTerm, ...]
  cycles: tuple[Path, ...]
  starts: tuple[str, ...]
  start_slot: tuple[tuple[str, int], ...]
  pair_slot: tuple[tuple[str, int, int], ...]  # (pairs key, slot of a rows, slot of b rows)
  slot_dims: tuple[int, ...]
  levels: tuple[tuple[BucketCall, ...], ...]
  term_out: tuple[tuple[int, int], ...]  # (slot of side a, slot of side b) per term
  cycle_out: tuple[int, ...]  # slot of the reconstruction per cycle
  applications: int  # translator applications per step (per batch row)
  structure_out: tuple[tuple[int, int], ...] = ()  # (slot of a's rows, slot of f_ab(rows)) per edge
  structure_edges: tuple[str, ...] = ()

  @property
  def supervised(self) -> tuple[Edge, ...]:
    """Edges whose per-edge term is trained (graph strategy naming)."""
    return tuple(Edge.parse(t.name) for t in self.terms if t == edge_term(Edge.parse(t.pairs)))

  @property
  def pair_keys(self) -> tuple[str, ...]:
    return tuple(k for k, _, _ in self.pair_slot)

  @property
  def cycle_lengths(self) -> tuple[int, ...]:
    return tuple(len(c) - 1 for c in self.cycles)

  def term_names(self) -> dict[str, list[str]]:
    names = {
      "edge_cos": [t.name for t in self.terms],
      "infonce": [t.name for t in self.terms],
      "cycle": [path_name(c) for c in self.cycles],
    }
    if self.structure_out:
      names["structure"] = list(self.structure_edges)
    return names

  def describe(self) -> str:
    return (
      f"{len(self.terms)} pair terms, {len(self.cycles)} cycles (lengths "
      f"{sorted(set(self.cycle_lengths))}), {self.applications} translator applications/step, "
      f"{len(self.layout.buckets)} buckets"
    )

  # -- the objective interface (objective_api.Objective; shared with C-MCR and strategy objectives)
  # --
  def initial_weights(self) -> dict[str, jax.Array]:
    return initial_weights(self.settings)

  def finetune_weights(self, weights: Mapping[str, jax.Array], finetune) -> dict[str, jax.Array]:
    return finetune_weights(weights, finetune)

  def initial_globals(self) -> dict:
    if self.settings.learn_temperature:
      return {"log_inv_temperature": jnp.float32(np.log(1.0 / self.settings.temperature))}
    return {}

  def sampler_arrays(self, dataset, infonce_positives="label") -> dict:
    """Numpy arrays for the device sampler: rows to draw cycles from, pair sets, pair labels.

    infonce_positives: "label" / "pair", or {"a->b": "label" | "pair"} per pair set (the choices
    of loss.infonce_positives="auto", see data.choose_positives)."""
    if self.settings.aligned_batches:
      return sampling_lib.aligned_arrays(dataset, self.starts, self.pair_keys, infonce_positives)
    pair_sets = [Edge.parse(k) for k in self.pair_keys]
    arrays = sampling_lib.device_arrays(dataset, self.layout.graph, pair_sets, self.starts)
    for e in pair_sets:
      pairs = arrays["pairs"][e.name]
      choice = positives_lib.resolve_positives(infonce_positives, e.src, e.dst)
      if choice == "pair" or not positives_lib.pair_label_agreement(dataset, e.src, e.dst, pairs):
        arrays["pair_labels"][e.name] = np.arange(len(pairs), dtype=np.int32)
    return arrays

  def sample(self, arrays: Mapping, key, batch_size: int) -> dict:
    if self.settings.aligned_batches:
      return sampling_lib.sample_aligned_batch(arrays, key, batch_size, self.pair_keys)
    return sampling_lib.sample_batch(arrays, key, batch_size)

  def loss(self, params, frozen, batch, weights, key, dtype):
    del key  # the graph objective is deterministic given the batch
    return loss_fn(self, params, frozen, batch, weights, dtype)

  def forward_flops_per_row(self) -> int:
    """Matmul FLOPs of one forward pass per batch row (every application, padding excluded)."""
    total = 0
    for level in self.levels:
      for call in level:
        bucket = self.layout.bucket_by_key[call.bucket_key]
        real = sum(1 for outs in call.outputs for s in outs if s >= 0)
        total += real * translator_flops(bucket.d_in, bucket.d_out, bucket.arch)
    return total


def build_plan(
  layout: EdgeLayout,
  settings: LossSettings,
  paired_edges: Sequence[Edge | str] = (),
  data_nodes: Sequence[str] | None = None,
) -> LossPlan:
  """Plan every loss term of a step.

  paired_edges: edges (or pair-set directions "a->b") that have training pairs.
  data_nodes: nodes with rows of their own (default: all); cycles start only there."""
  graph = layout.graph
  paired = {Edge.parse(e) if isinstance(e, str) else e for e in paired_edges}
  trainable = set(layout.trainable_edges)
  if settings.pair_terms is not None:
    terms = tuple(settings.pair_terms)
    for t in terms:
      graph.parse_path(t.path_a) if len(t.path_a) > 1 else None
      graph.parse_path(t.path_b) if len(t.path_b) > 1 else None
      a, b = t.pairs.split("->")
      if Edge(a, b) not in paired and Edge(b, a) not in paired:
        raise GraphError(f"pair term {t.name} needs pairs of {a} and {b}, but the data has none")
  elif settings.supervised_edges is None:
    terms = tuple(edge_term(e) for e in graph.edges if e in paired and e in trainable)
  else:
    terms = tuple(edge_term(graph.edge(e)) for e in settings.supervised_edges)
    for t in terms:
      if Edge.parse(t.pairs) not in paired:
        raise GraphError(f"edge {t.name} is asked for a supervised loss but has no training pairs")
  terms = tuple(t for t in terms if any(e in trainable for e in t.edges))
  if settings.edge_cos <= 0 and settings.infonce <= 0:
    terms = ()
  starts_allowed = (
    settings.cycle_starts
    if settings.cycle_starts is not None
    else (tuple(data_nodes) if data_nodes is not None else None)
  )
  cycles = graph.cycles(settings.max_cycle_length, starts=starts_allowed)
  # keep cycles of a weighted length that pass through at least one trainable edge
  cycles = tuple(
    c
    for c in cycles
    if settings.cycle_weights[len(c) - 3] > 0 and any(e in trainable for e in path_edges(c))
  )
  if not terms and not cycles:
    raise GraphError(
      "nothing to train: no pair term has a trainable edge and no cycle passes through a "
      f"trainable edge ({graph.describe()})"
    )
  starts = tuple(
    n
    for n in graph.node_names
    if any(c[0] == n for c in cycles)
    or (settings.aligned_batches and any(n in t.pairs.split("->") for t in terms))
  )

  dims = graph.dims
  slot_dims: list[int] = []

  def new_slot(dim: int) -> int:
    slot_dims.append(dim)
    return len(slot_dims) - 1

  start_slot = {m: new_slot(dims[m]) for m in starts}
  pair_slot: dict[str, tuple[int, int]] = {}
  for t in terms:
    if t.pairs not in pair_slot:
      a, b = t.pairs.split("->")
      pair_slot[t.pairs] = (
        (start_slot[a], start_slot[b])
        if settings.aligned_batches
        else (new_slot(dims[a]), new_slot(dims[b]))
      )
  n_levels = max(
    [len(c) - 1 for c in cycles]
    + [len(t.path_a) - 1 for t in terms]
    + [len(t.path_b) - 1 for t in terms]
    + [1]
  )
  levels: list[list[tuple[int, Edge, int]]] = [[] for _ in range(n_levels)]
  prefix_slot: dict[tuple[int, Path], int] = {}

  def chain_end(root: int, path: Path) -> int:
    """Slot holding `path` applied to the rows in slot `root` (prefixes shared per root)."""
    prefix_slot.setdefault((root, path[:1]), root)
    for k in range(1, len(path)):
      if (root, path[: k + 1]) not in prefix_slot:
        out = new_slot(dims[path[k]])
        levels[k - 1].append((prefix_slot[(root, path[:k])], Edge(path[k - 1], path[k]), out))
        prefix_slot[(root, path[: k + 1])] = out
    return prefix_slot[(root, path)]

  term_out = [
    (chain_end(pair_slot[t.pairs][0], t.path_a), chain_end(pair_slot[t.pairs][1], t.path_b))
    for t in terms
  ]
  cycle_out = [chain_end(start_slot[c[0]], c) for c in cycles]
  structure_out, structure_edges = [], []
  if settings.structure > 0:  # every trainable first hop of a start modality's own rows
    for m in starts:
      for e in graph.out_edges(m):
        if e in trainable and e.dst in (data_nodes if data_nodes is not None else graph.node_names):
          structure_out.append((start_slot[m], chain_end(start_slot[m], (m, e.dst))))
          structure_edges.append(e.name)

  planned_levels = []
  applications = 0
  for apps in levels:
    calls = []
    for bucket in layout.buckets:
      per_edge = {e: [(i, o) for (i, ed, o) in apps if ed == e] for e in bucket.edges}
      if not any(per_edge.values()):
        continue
      rows = max(len(v) for v in per_edge.values())
      filler = next(v[0][0] for v in per_edge.values() if v)  # any input of the right dim
      inputs, outputs = [], []
      for e in bucket.edges:
        v = per_edge[e]
        applications += len(v)
        inputs.append(tuple(i for i, _ in v) + (v[0][0] if v else filler,) * (rows - len(v)))
        outputs.append(tuple(o for _, o in v) + (-1,) * (rows - len(v)))
      calls.append(BucketCall(bucket.key, tuple(inputs), tuple(outputs)))
    planned_levels.append(tuple(calls))
  return LossPlan(
    layout,
    settings,
    terms,
    cycles,
    starts,
    tuple(start_slot.items()),
    tuple((k, a, b) for k, (a, b) in pair_slot.items()),
    tuple(slot_dims),
    tuple(planned_levels),
    tuple(term_out),
    tuple(cycle_out),
    applications,
    tuple(structure_out),
    tuple(structure_edges),
  )


def initial_weights(settings: LossSettings) -> dict[str, jax.Array]:
  """Loss weights as arrays: they live in the train state, so changing them (e.g. for a
  contrastive fine-tuning phase) does not recompile the step."""
  weights = {
    "edge_cos": jnp.float32(settings.edge_cos),
    "infonce": jnp.float32(settings.infonce),
    "cycle": jnp.asarray(settings.cycle_weights, jnp.float32),
  }
  if settings.structure > 0:
    weights["structure"] = jnp.float32(settings.structure)
  return weights


def finetune_weights(weights: Mapping[str, jax.Array], finetune) -> dict[str, jax.Array]:
  """Contrastive fine-tuning (config.finetune): edge_cos and infonce set, cycles scaled; any other
  weight is kept as it is."""
  return {
    **weights,
    "edge_cos": jnp.float32(finetune.edge_cos),
    "infonce": jnp.float32(finetune.infonce),
    "cycle": weights["cycle"] * finetune.cycle_scale,
  }


def _slot_locations(plan: "LossPlan"):
  """slot -> (level, dim, row in that level's pool of that dim); and root slots per dim.

  Level 0 holds the batches (start rows, pair sides); level k holds every output of hop k,
  bucket after bucket, each bucket's outputs as [edge, row block] flattened."""
  if "_locations" in plan.__dict__:
    return plan.__dict__["_locations"]
  location: dict[int, tuple[int, int, int]] = {}
  roots: dict[int, list[int]] = {}
  root_slots = [s for _, s in plan.start_slot]
  if not plan.settings.aligned_batches:
    root_slots += [a for _, a, _ in plan.pair_slot] + [b for _, _, b in plan.pair_slot]
  for s in sorted(set(root_slots)):
    d = plan.slot_dims[s]
    location[s] = (0, d, len(roots.setdefault(d, [])))
    roots[d].append(s)
  for k, level in enumerate(plan.levels, 1):
    offset: dict[int, int] = {}
    for call in level:
      bucket = plan.layout.bucket_by_key[call.bucket_key]
      rows = len(call.inputs[0])
      base = offset.get(bucket.d_out, 0)
      for i, outs in enumerate(call.outputs):
        for r, s in enumerate(outs):
          if s >= 0:
            location[s] = (k, bucket.d_out, base + i * rows + r)
      offset[bucket.d_out] = base + bucket.size * rows
  plan.__dict__["_locations"] = (location, roots)
  return location, roots


def run_translators(plan: LossPlan, params: Mapping[str, PyTree], batch: Mapping, dtype) -> dict:
  """Apply every hop of the plan. Returns the pools {(level, dim): [rows, B, dim]} that hold every
  slot (see _slot_locations). params: {bucket_key: stacked} (trainable and frozen)."""
  location, roots = _slot_locations(plan)
  root_value = {s: batch["start"][m] for m, s in plan.start_slot}
  if not plan.settings.aligned_batches:
    for key, slot_a, slot_b in plan.pair_slot:
      root_value[slot_a], root_value[slot_b] = batch["src"][key], batch["dst"][key]
  pools = {
    (0, d): jnp.stack([root_value[s] for s in slots]).astype(dtype) for d, slots in roots.items()
  }
  for k, level in enumerate(plan.levels, 1):
    outputs: dict[int, list] = {}
    for call in level:
      bucket = plan.layout.bucket_by_key[call.bucket_key]
      rows = len(call.inputs[0])
      index = tuple(location[s][2] for edge_inputs in call.inputs for s in edge_inputs)
      x = gather_rows(pools[(k - 1, bucket.d_in)], index)  # [E_b * rows, B, d_in]
      batch_size = x.shape[1]
      x = x.reshape(bucket.size, rows * batch_size, bucket.d_in)
      y = apply_bucket(bucket, params[call.bucket_key], x, dtype)
      outputs.setdefault(bucket.d_out, []).append(
        y.reshape(bucket.size * rows, batch_size, bucket.d_out)
      )
    for d, ys in outputs.items():
      pools[(k, d)] = ys[0] if len(ys) == 1 else jnp.concatenate(ys)
  return pools


def gather_slots(plan: LossPlan, pools: Mapping, slots: Sequence[int]) -> jax.Array:
  """Stack the values of `slots` (all of one dim) into [n, B, d], one gather per source level."""
  location, _ = _slot_locations(plan)
  by_level: dict[int, list[int]] = {}
  for j, s in enumerate(slots):
    by_level.setdefault(location[s][0], []).append(j)
  parts, order = [], []
  for level in sorted(by_level):
    js = by_level[level]
    d = location[slots[js[0]]][1]
    parts.append(gather_rows(pools[(level, d)], tuple(location[slots[j]][2] for j in js)))
    order += js
  out = parts[0] if len(parts) == 1 else jnp.concatenate(parts)
  if order != list(range(len(slots))):
    out = gather_rows(out, tuple(int(i) for i in np.argsort(order)))
  return out


def _by_dim(plan: LossPlan, pred_slots: Sequence[int]) -> list[list[int]]:
  """Indices of items grouped by feature dim (each group is one batched computation)."""
  groups: dict[int, list[int]] = {}
  for i, s in enumerate(pred_slots):
    groups.setdefault(plan.slot_dims[s], []).append(i)
  return list(groups.values())


def _in_item_order(values: list, index_groups: list[list[int]]) -> jax.Array:
  """Concatenate per-group vectors and put them back in item order (one static gather)."""
  if not values:
    return jnp.zeros((0,), jnp.float32)
  flat = values[0] if len(values) == 1 else jnp.concatenate(values)
  order = [i for g in index_groups for i in g]
  if order == list(range(len(order))):
    return flat
  return jnp.take(flat, np.argsort(order))


def compute_terms(
  plan: LossPlan, pools: Mapping, batch: Mapping, inv_temperature, dtype=jnp.float32
) -> dict[str, jax.Array]:
  """Per-term loss vectors: {"edge_cos": [n_terms], "infonce": [n_terms], "cycle": [n_cycles]}."""
  pred_slots = [a for a, _ in plan.term_out]
  target_slots = [b for _, b in plan.term_out]
  term_groups = _by_dim(plan, pred_slots)
  cos_parts, nce_parts = [], []
  for idx in term_groups:
    pred = gather_slots(plan, pools, [pred_slots[i] for i in idx])
    target = gather_slots(plan, pools, [target_slots[i] for i in idx])
    labels = jnp.stack([batch["pair_label"][plan.terms[i].pairs] for i in idx])
    cos_parts.append(cosine_loss(pred, target))
    nce_parts.append(symmetric_infonce(pred, target, labels, inv_temperature, dtype))
  start_of = dict(plan.start_slot)
  cycle_targets = [start_of[c[0]] for c in plan.cycles]
  cycle_groups = _by_dim(plan, list(plan.cycle_out))
  cycle_parts = []
  for idx in cycle_groups:
    pred = gather_slots(plan, pools, [plan.cycle_out[i] for i in idx])
    target = gather_slots(plan, pools, [cycle_targets[i] for i in idx])
    cycle_parts.append(cosine_loss(pred, target))
  out = {
    "edge_cos": _in_item_order(cos_parts, term_groups),
    "infonce": _in_item_order(nce_parts, term_groups),
    "cycle": _in_item_order(cycle_parts, cycle_groups),
  }
  if plan.structure_out:
    out["structure"] = jnp.stack(
      [
        structure_loss(
          gather_slots(plan, pools, [a])[0],
          gather_slots(plan, pools, [b])[0],
          plan.settings.structure_temperature,
        )
        for a, b in plan.structure_out
      ]
    )
  return out


@functools.lru_cache(maxsize=None)
def _length_matrix(cycle_lengths: tuple[int, ...], n_lengths: int) -> np.ndarray:
  """[n_lengths, n_cycles] averaging matrix: row L-2 averages the cycles of length L."""
  m = np.zeros((n_lengths, len(cycle_lengths)), np.float32)
  for j, length in enumerate(cycle_lengths):
    m[length - 2, j] = 1.0
  counts = m.sum(axis=1, keepdims=True)
  return m / np.maximum(counts, 1.0)


def total_loss(plan: LossPlan, terms: Mapping[str, jax.Array], weights: Mapping[str, jax.Array]):
  """Weighted sum: mean over edges of each supervised term, mean over cycles of each length."""
  n_lengths = len(plan.settings.cycle_weights)
  total = jnp.float32(0.0)
  if len(plan.terms):
    total += weights["edge_cos"] * jnp.mean(terms["edge_cos"])
    total += weights["infonce"] * jnp.mean(terms["infonce"])
  cycle_by_length = jnp.zeros((n_lengths,), jnp.float32)
  if len(plan.cycles):
    cycle_by_length = jnp.asarray(_length_matrix(plan.cycle_lengths, n_lengths)) @ terms["cycle"]
    total += jnp.sum(weights["cycle"] * cycle_by_length)
  if "structure" in terms and "structure" in weights:
    total += weights["structure"] * jnp.mean(terms["structure"])
  return total, cycle_by_length


def inverse_temperature(plan: LossPlan, params: Mapping[str, PyTree]) -> jax.Array:
  if plan.settings.learn_temperature:
    return jnp.minimum(jnp.exp(params["globals"]["log_inv_temperature"]), 100.0)  # CLIP's clamp
  return jnp.float32(1.0 / plan.settings.temperature)


def loss_fn(
  plan: LossPlan,
  params: Mapping[str, PyTree],
  frozen: Mapping[str, PyTree],
  batch: Mapping,
  weights: Mapping[str, jax.Array],
  dtype,
):
  """Scalar loss and aux metrics. params: {"edges": {bucket: ...}, "globals": {...}} (trainable)."""
  all_edges = {**frozen, **params["edges"]}
  pools = run_translators(plan, all_edges, batch, dtype)
  inv_t = inverse_temperature(plan, params)
  terms = compute_terms(plan, pools, batch, inv_t, dtype)
  total, cycle_by_length = total_loss(plan, terms, weights)
  return total, {"terms": terms, "cycle_by_length": cycle_by_length, "inv_temperature": inv_t}
