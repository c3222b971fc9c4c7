"""C-MCR: Connecting Multi-modal Contrastive Representations (Wang et al., NeurIPS 2023).

Two contrastive spaces share a modality (e.g. an image-text space and an audio-text space share
text). Projectors f_a: space_a -> common and f_b: space_b -> common connect them, trained on the
shared modality only, with

* inter-space alignment: InfoNCE between f_a(t_a) and f_b(t_b), the shared rows in both spaces;
* memory-based semantic enhancement: for each shared row, a pseudo embedding of the non-shared
  modality is read from a memory bank of that modality's (unpaired) rows in the same space,
  softmax(t_a . M_a / tau_mem) M_a, giving pseudo (a, b) pairs aligned by a second InfoNCE;
* Gaussian-noise semantic enhancement: every embedding gets N(0, noise_std^2) noise (then
  re-normalisation) before its projector, so the projectors learn regions, not points;
* intra-space alignment: 1 - cos between f_a(t_a) and f_a(pseudo a) (and likewise in b), which
  closes the modality gap inside each space so alignment learnt on the shared modality transfers.

As a strategy: stage 1 builds the two contrastive spaces CLIP-style from the raw embeddings, then
frozen; stage 2 trains the connecting projectors with `CMCRObjective`, which has the interface of
`objectives.LossPlan`, so it runs through the same jitted step, optimizer, NaN guard and per-edge
checkpoints.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from graphbridge.core.errors import GraphError
from graphbridge.data.positives import resolve_positives
from graphbridge.model import objectives as objectives_lib
from graphbridge.model.losses import cosine_loss, symmetric_infonce
from graphbridge.model.translators import EdgeLayout, apply_edge, normalize
from graphbridge.strategies.base import pair_partners
from graphbridge.strategies.translator import Stage, TranslatorStrategy, build_graph, meet_objective


@dataclasses.dataclass(frozen=True)
class CMCRSettings:
  shared: str  # modality present in both spaces (e.g. text)
  mod_a: str  # the other modality of space a (e.g. image)
  mod_b: str  # the other modality of space b (e.g. audio)
  space_a: str = "space_a"
  space_b: str = "space_b"
  common: str = "common"
  temperature: float = 0.07
  memory_temperature: float = 0.05
  noise_std: float = 0.04
  memory_size: int = 1024
  inter_weight: float = 1.0
  pseudo_weight: float = 1.0
  intra_weight: float = 0.5
  seed: int = 0


@dataclasses.dataclass(frozen=True)
class CMCRObjective:
  layout: EdgeLayout
  settings: CMCRSettings
  label_positives: bool = True

  def _edge(self, src: str, dst: str) -> str:
    return self.layout.graph.edge(f"{src}->{dst}").name

  def term_names(self) -> dict[str, list[str]]:
    s = self.settings
    return {
      "inter": [f"{s.shared} across spaces", f"pseudo {s.mod_a}-{s.mod_b}"],
      "intra": [f"{s.shared}~{s.mod_a} in {s.space_a}", f"{s.shared}~{s.mod_b} in {s.space_b}"],
    }

  def describe(self) -> str:
    s = self.settings
    return (
      f"C-MCR connecting {s.space_a} ({s.mod_a}, {s.shared}) and {s.space_b} ({s.mod_b}, "
      f"{s.shared}) through {s.common}; memory {s.memory_size}, noise std {s.noise_std}"
    )

  def initial_weights(self) -> dict[str, jax.Array]:
    s = self.settings
    return {
      "inter": jnp.float32(s.inter_weight),
      "pseudo": jnp.float32(s.pseudo_weight),
      "intra": jnp.float32(s.intra_weight),
    }

  def initial_globals(self) -> dict:
    return {}

  def sampler_arrays(self, dataset, infonce_positives="label") -> dict:
    s = self.settings
    rng = np.random.default_rng(s.seed)
    shared = dataset.modalities[s.shared]
    rows = np.nonzero(shared.train)[0].astype(np.int32)
    label = all(
      resolve_positives(infonce_positives, s.shared, m) == "label" for m in (s.mod_a, s.mod_b)
    )
    labels = shared.labels if (shared.labels is not None and label) else None
    out = {
      "shared_emb": shared.emb,
      "shared_rows": rows,
      "shared_labels": (labels if labels is not None else np.arange(len(shared))).astype(np.int32),
    }
    for side, modality in (("memory_a", s.mod_a), ("memory_b", s.mod_b)):
      train_rows = np.nonzero(dataset.modalities[modality].train)[0]
      pick = rng.choice(train_rows, size=min(s.memory_size, len(train_rows)), replace=False)
      out[side] = dataset.modalities[modality].emb[np.sort(pick)]  # a fixed bank of unpaired rows
    return out

  def sample(self, arrays: Mapping, key, batch_size: int) -> dict:
    pick = arrays["shared_rows"][
      jax.random.randint(key, (batch_size,), 0, arrays["shared_rows"].shape[0])
    ]
    return {
      "shared": jnp.take(arrays["shared_emb"], pick, axis=0),
      "label": jnp.take(arrays["shared_labels"], pick),
      "memory_a": arrays["memory_a"],
      "memory_b": arrays["memory_b"],
    }

  def loss(self, params, frozen, batch, weights, key, dtype):
    s = self.settings
    edges = {**frozen, **params["edges"]}
    apply = lambda src, dst, x: normalize(
      apply_edge(self.layout, edges, self._edge(src, dst), x, dtype)
    )
    t_a, t_b = (
      apply(s.shared, s.space_a, batch["shared"]),
      apply(s.shared, s.space_b, batch["shared"]),
    )
    bank_a, bank_b = (
      apply(s.mod_a, s.space_a, batch["memory_a"]),
      apply(s.mod_b, s.space_b, batch["memory_b"]),
    )
    # memory-based enhancement: cross-modal consistent pseudo embeddings from the banks
    pseudo_a = normalize(jax.nn.softmax(t_a @ bank_a.T / s.memory_temperature, axis=-1) @ bank_a)
    pseudo_b = normalize(jax.nn.softmax(t_b @ bank_b.T / s.memory_temperature, axis=-1) @ bank_b)
    keys = jax.random.split(key, 4)
    noisy = lambda x, k: normalize(x + s.noise_std * jax.random.normal(k, x.shape, x.dtype))
    n = batch["shared"].shape[0]
    z_a = normalize(
      apply_edge(
        self.layout,
        edges,
        self._edge(s.space_a, s.common),
        jnp.concatenate([noisy(t_a, keys[0]), noisy(pseudo_a, keys[1])]),
        dtype,
      )
    )
    z_b = normalize(
      apply_edge(
        self.layout,
        edges,
        self._edge(s.space_b, s.common),
        jnp.concatenate([noisy(t_b, keys[2]), noisy(pseudo_b, keys[3])]),
        dtype,
      )
    )
    za_t, za_p, zb_t, zb_p = z_a[:n], z_a[n:], z_b[:n], z_b[n:]
    labels = batch["label"][None]
    inv_t = jnp.float32(1.0 / s.temperature)
    inter = jnp.concatenate(
      [
        symmetric_infonce(za_t[None], zb_t[None], labels, inv_t),
        symmetric_infonce(za_p[None], zb_p[None], labels, inv_t),
      ]
    )
    intra = cosine_loss(jnp.stack([za_t, zb_t]), jnp.stack([za_p, zb_p]))
    total = (
      weights["inter"] * inter[0]
      + weights["pseudo"] * inter[1]
      + weights["intra"] * jnp.mean(intra)
    )
    return total, {"terms": {"inter": inter, "intra": intra}}


# ---- the strategy ----


def cmcr_roles(config, dataset) -> tuple[str, str, str]:
  """(shared, mod_a, mod_b): the shared modality and the other modality of each space."""
  shared = config.cmcr.shared or next(
    (m for m in dataset.names if len(pair_partners(dataset, m)) == 2), ""
  )
  partners = pair_partners(dataset, shared) if shared in dataset.modalities else []
  if len(partners) != 2:
    pair_sets = ", ".join(dataset.pair_names)
    raise GraphError(
      "C-MCR connects two spaces that share one modality: it needs a modality "
      f"paired with exactly two others (pair sets: {pair_sets}); set cmcr.shared"
    )
  return shared, partners[0], partners[1]


def cmcr_settings(config, dataset) -> CMCRSettings:
  shared, mod_a, mod_b = cmcr_roles(config, dataset)
  c = config.cmcr
  return CMCRSettings(
    shared=shared,
    mod_a=mod_a,
    mod_b=mod_b,
    space_a=f"space_{mod_a}",
    space_b=f"space_{mod_b}",
    common="common",
    temperature=float(c.temperature),
    memory_temperature=float(c.memory_temperature),
    noise_std=float(c.noise_std),
    memory_size=int(c.memory_size),
    inter_weight=float(c.inter_weight),
    pseudo_weight=float(c.pseudo_weight),
    intra_weight=float(c.intra_weight),
    seed=int(config.seed),
  )


def stages(config, dataset) -> list[Stage]:
  s = cmcr_settings(config, dataset)
  dim, common_dim = int(config.cmcr.dim), int(config.cmcr.common_dim)
  space_edges = [
    f"{s.mod_a}->{s.space_a}",
    f"{s.shared}->{s.space_a}",
    f"{s.mod_b}->{s.space_b}",
    f"{s.shared}->{s.space_b}",
  ]
  spaces = {s.space_a: dim, s.space_b: dim}
  contrastive = {"loss.edge_cos": 0.0, "loss.infonce": 1.0, "finetune.steps": 0}
  stage1_steps = int(config.cmcr.stage1_steps)
  terms = (
    objectives_lib.meet_term(s.mod_a, s.shared, s.space_a),
    objectives_lib.meet_term(s.mod_b, s.shared, s.space_b),
  )
  first = Stage(
    "C-MCR stage 1: the two contrastive spaces",
    build_graph(dataset, space_edges, spaces),
    {**contrastive, **({"train.steps": stage1_steps} if stage1_steps > 0 else {})},
    objective=meet_objective(terms),
    subdir="stage1",
  )
  label_positives = config.loss.infonce_positives != "pair"  # resolved per data (sampler_arrays)
  connectors = [f"{s.space_a}->{s.common}", f"{s.space_b}->{s.common}"]
  second = Stage(
    "C-MCR stage 2: connecting the spaces (stage-1 projectors frozen)",
    build_graph(dataset, space_edges + connectors, {**spaces, s.common: common_dim}),
    contrastive,
    freeze_stages=(0,),
    objective=lambda layout, ds, cfg: CMCRObjective(layout, s, label_positives),
  )
  return [first, second]


STRATEGY = TranslatorStrategy(
  "cmcr", stages, summary="C-MCR: connect two contrastive spaces through a common one"
)
