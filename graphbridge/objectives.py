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

from graphbridge.graph import Edge, GraphError, Path, path_edges, path_name
from graphbridge.translators import EdgeLayout, apply_bucket, normalize

PyTree = Any


@dataclasses.dataclass(frozen=True)
class LossSettings:
  """Static loss settings (weights are dynamic: see `initial_weights`)."""
  edge_cos: float = 1.0
  infonce: float = 0.5
  temperature: float = 0.07
  learn_temperature: bool = False
  cycle_weights: tuple[float, ...] = (0.5,)   # weight of 2-cycles, 3-cycles, ... (length = max cycle)
  supervised_edges: tuple[str, ...] | None = None   # None: every trainable edge that has pairs
  cycle_starts: tuple[str, ...] | None = None       # None: every node

  @property
  def max_cycle_length(self) -> int:
    lengths = [i + 2 for i, w in enumerate(self.cycle_weights) if w > 0]
    return max(lengths) if lengths else 0


@dataclasses.dataclass(frozen=True)
class BucketCall:
  """One batched translator call: inputs[i][r] is the slot fed to edge i of the bucket (row block r);
  outputs[i][r] is the slot its result goes to (-1: padding, discarded)."""
  bucket_key: str
  inputs: tuple[tuple[int, ...], ...]
  outputs: tuple[tuple[int, ...], ...]


@dataclasses.dataclass(frozen=True)
class LossPlan:
  layout: EdgeLayout
  settings: LossSettings
  supervised: tuple[Edge, ...]
  cycles: tuple[Path, ...]
  starts: tuple[str, ...]
  start_slot: tuple[tuple[str, int], ...]
  pair_slot: tuple[tuple[str, int], ...]
  slot_dims: tuple[int, ...]
  levels: tuple[tuple[BucketCall, ...], ...]
  supervised_out: tuple[int, ...]    # slot of f_e(x_src) per supervised edge
  cycle_out: tuple[int, ...]         # slot of the reconstruction per cycle
  applications: int                  # translator applications per step (per batch row)

  @property
  def cycle_lengths(self) -> tuple[int, ...]:
    return tuple(len(c) - 1 for c in self.cycles)

  def term_names(self) -> dict[str, list[str]]:
    return {"edge_cos": [e.name for e in self.supervised],
            "infonce": [e.name for e in self.supervised],
            "cycle": [path_name(c) for c in self.cycles]}

  def forward_flops_per_row(self) -> int:
    """Matmul FLOPs of one forward pass per batch row (every application, padding excluded)."""
    from graphbridge.translators import translator_flops
    total = 0
    for level in self.levels:
      for call in level:
        bucket = self.layout.bucket_by_key[call.bucket_key]
        real = sum(1 for outs in call.outputs for s in outs if s >= 0)
        total += real * translator_flops(bucket.d_in, bucket.d_out, bucket.arch)
    return total


def build_plan(layout: EdgeLayout, settings: LossSettings,
               paired_edges: Sequence[Edge | str] = ()) -> LossPlan:
  """Plan every loss term of a step. `paired_edges`: edges that have training pairs."""
  graph = layout.graph
  paired = {graph.edge(e) for e in paired_edges}
  trainable = set(layout.trainable_edges)
  if settings.supervised_edges is None:
    supervised = tuple(e for e in graph.edges if e in paired and e in trainable)
  else:
    supervised = tuple(graph.edge(e) for e in settings.supervised_edges)
    for e in supervised:
      if e not in paired:
        raise GraphError(f"edge {e.name} is asked for a supervised loss but has no training pairs")
  if settings.edge_cos <= 0 and settings.infonce <= 0:
    supervised = ()
  cycles = graph.cycles(settings.max_cycle_length, starts=settings.cycle_starts)
  # keep cycles of a weighted length that pass through at least one trainable edge
  cycles = tuple(c for c in cycles
                 if settings.cycle_weights[len(c) - 3] > 0 and any(e in trainable for e in path_edges(c)))
  if not supervised and not cycles:
    raise GraphError("nothing to train: no trainable edge has pairs for a supervised loss and no cycle "
                     f"passes through a trainable edge ({graph.describe()})")
  starts = tuple(n for n in graph.node_names if any(c[0] == n for c in cycles))

  dims = graph.dims
  slot_dims: list[int] = []

  def new_slot(dim: int) -> int:
    slot_dims.append(dim)
    return len(slot_dims) - 1

  start_slot = {m: new_slot(dims[m]) for m in starts}
  pair_slot = {e: new_slot(dims[e.src]) for e in supervised}
  # applications per level: list of (input slot, edge, output slot)
  levels: list[list[tuple[int, Edge, int]]] = [[] for _ in range(max([len(c) - 1 for c in cycles] + [1]))]
  supervised_out = []
  for e in supervised:
    out = new_slot(dims[e.dst])
    levels[0].append((pair_slot[e], e, out))
    supervised_out.append(out)
  prefix_slot: dict[Path, int] = {(m,): s for m, s in start_slot.items()}
  cycle_out = []
  for cycle in cycles:
    for k in range(1, len(cycle)):
      prefix = cycle[:k + 1]
      if prefix not in prefix_slot:
        out = new_slot(dims[cycle[k]])
        levels[k - 1].append((prefix_slot[cycle[:k]], Edge(cycle[k - 1], cycle[k]), out))
        prefix_slot[prefix] = out
    cycle_out.append(prefix_slot[cycle])

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
  return LossPlan(layout, settings, supervised, cycles, starts, tuple(start_slot.items()),
                  tuple((e.name, s) for e, s in pair_slot.items()), tuple(slot_dims),
                  tuple(planned_levels), tuple(supervised_out), tuple(cycle_out), applications)


def initial_weights(settings: LossSettings) -> dict[str, jax.Array]:
  """Loss weights as arrays: they live in the train state, so changing them (e.g. for a
  contrastive fine-tuning phase) does not recompile the step."""
  return {"edge_cos": jnp.float32(settings.edge_cos), "infonce": jnp.float32(settings.infonce),
          "cycle": jnp.asarray(settings.cycle_weights, jnp.float32)}


def run_translators(plan: LossPlan, params: Mapping[str, PyTree], batch: Mapping, dtype) -> list:
  """Fill every slot of the plan. params: {bucket_key: stacked} (trainable and frozen)."""
  slots: list = [None] * len(plan.slot_dims)
  for m, s in plan.start_slot:
    slots[s] = batch["start"][m].astype(dtype)
  for name, s in plan.pair_slot:
    slots[s] = batch["src"][name].astype(dtype)
  for level in plan.levels:
    for call in level:
      bucket = plan.layout.bucket_by_key[call.bucket_key]
      rows = len(call.inputs[0])
      x = jnp.stack([jnp.stack([slots[s] for s in edge_inputs]) for edge_inputs in call.inputs])
      batch_size = x.shape[2]
      x = x.reshape(bucket.size, rows * batch_size, bucket.d_in)
      y = apply_bucket(bucket, params[call.bucket_key], x, dtype)
      y = y.reshape(bucket.size, rows, batch_size, bucket.d_out)
      for i, edge_outputs in enumerate(call.outputs):
        for r, s in enumerate(edge_outputs):
          if s >= 0:
            slots[s] = y[i, r]
  return slots


def _cosine_loss(pred: jax.Array, target: jax.Array) -> jax.Array:
  """pred, target: [..., B, d] -> [...] mean over B of 1 - cos."""
  return 1.0 - jnp.mean(jnp.sum(normalize(pred) * normalize(target), axis=-1), axis=-1)


def _symmetric_infonce(pred: jax.Array, target: jax.Array, labels: jax.Array,
                       inv_temperature: jax.Array) -> jax.Array:
  """pred, target: [E, B, d]; labels: [E, B] (rows with equal labels are positives).

  KL divergence from the uniform distribution over positives to the softmax, both directions: the
  usual CLIP loss when every label in the batch is distinct, and 0 at the optimum when several
  rows share a label (cross-entropy minus the targets' entropy; same gradients). Returns [E]."""
  logits = jnp.einsum("ebd,ecd->ebc", normalize(pred), normalize(target)) * inv_temperature
  positives = (labels[:, :, None] == labels[:, None, :]).astype(jnp.float32)
  n_pos = jnp.sum(positives, axis=-1)  # symmetric, so also the column counts
  targets = positives / n_pos[..., None]
  row = -jnp.sum(targets * jax.nn.log_softmax(logits, axis=-1), axis=-1) - jnp.log(n_pos)
  col = -jnp.sum(targets * jax.nn.log_softmax(logits, axis=1), axis=1) - jnp.log(n_pos)
  return 0.5 * (jnp.mean(row, axis=-1) + jnp.mean(col, axis=-1))


def _grouped(items: Sequence[tuple[int, Any, Any]]):
  """Group (index, pred, target) by feature dim so each group is one batched computation."""
  groups: dict[int, list] = {}
  for item in items:
    groups.setdefault(item[1].shape[-1], []).append(item)
  return groups.values()


def compute_terms(plan: LossPlan, slots: list, batch: Mapping, inv_temperature) -> dict[str, jax.Array]:
  """Per-term loss vectors: {"edge_cos": [n_sup], "infonce": [n_sup], "cycle": [n_cycles]}."""
  n_sup, n_cyc = len(plan.supervised), len(plan.cycles)
  edge_cos = [None] * n_sup
  infonce = [None] * n_sup
  cycle = [None] * n_cyc
  sup_items = [(i, slots[s], batch["dst"][e.name]) for i, (e, s) in
               enumerate(zip(plan.supervised, plan.supervised_out))]
  for group in _grouped(sup_items):
    idx = [g[0] for g in group]
    pred = jnp.stack([g[1] for g in group]).astype(jnp.float32)
    target = jnp.stack([g[2] for g in group]).astype(jnp.float32)
    cos = _cosine_loss(pred, target)
    labels = jnp.stack([batch["pair_label"][plan.supervised[i].name] for i in idx])
    nce = _symmetric_infonce(pred, target, labels, inv_temperature)
    for j, i in enumerate(idx):
      edge_cos[i], infonce[i] = cos[j], nce[j]
  start_of = dict(plan.start_slot)
  cyc_items = [(i, slots[s], slots[start_of[c[0]]]) for i, (c, s) in
               enumerate(zip(plan.cycles, plan.cycle_out))]
  for group in _grouped(cyc_items):
    idx = [g[0] for g in group]
    pred = jnp.stack([g[1] for g in group]).astype(jnp.float32)
    target = jnp.stack([g[2] for g in group]).astype(jnp.float32)
    cos = _cosine_loss(pred, target)
    for j, i in enumerate(idx):
      cycle[i] = cos[j]
  stack = lambda xs: jnp.stack(xs) if xs else jnp.zeros((0,), jnp.float32)
  return {"edge_cos": stack(edge_cos), "infonce": stack(infonce), "cycle": stack(cycle)}


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
  if len(plan.supervised):
    total += weights["edge_cos"] * jnp.mean(terms["edge_cos"])
    total += weights["infonce"] * jnp.mean(terms["infonce"])
  cycle_by_length = jnp.zeros((n_lengths,), jnp.float32)
  if len(plan.cycles):
    cycle_by_length = jnp.asarray(_length_matrix(plan.cycle_lengths, n_lengths)) @ terms["cycle"]
    total += jnp.sum(weights["cycle"] * cycle_by_length)
  return total, cycle_by_length


def inverse_temperature(plan: LossPlan, params: Mapping[str, PyTree]) -> jax.Array:
  if plan.settings.learn_temperature:
    return jnp.minimum(jnp.exp(params["globals"]["log_inv_temperature"]), 100.0)  # CLIP's clamp
  return jnp.float32(1.0 / plan.settings.temperature)


def loss_fn(plan: LossPlan, params: Mapping[str, PyTree], frozen: Mapping[str, PyTree], batch: Mapping,
            weights: Mapping[str, jax.Array], dtype):
  """Scalar loss and aux metrics. params: {"edges": {bucket: ...}, "globals": {...}} (trainable)."""
  all_edges = {**frozen, **params["edges"]}
  slots = run_translators(plan, all_edges, batch, dtype)
  inv_t = inverse_temperature(plan, params)
  terms = compute_terms(plan, slots, batch, inv_t)
  total, cycle_by_length = total_loss(plan, terms, weights)
  return total, {"terms": terms, "cycle_by_length": cycle_by_length, "inv_temperature": inv_t}


def check_supervised_available(plan: LossPlan, pair_edges: Sequence[str]) -> None:
  missing = [e.name for e in plan.supervised if e.name not in pair_edges]
  if missing:
    raise GraphError(f"supervised edges without pairs: {', '.join(missing)}")
