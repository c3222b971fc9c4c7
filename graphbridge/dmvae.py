"""DMVAE: the private-shared disentangled multimodal VAE (Lee & Pavlovic, CVPR-W 2021) as a strategy.

Per modality m an encoder MLP gives Gaussian posteriors over a private latent z_p^m [private_dim]
and a shared latent z_s [shared_dim]; a decoder MLP maps (z_p^m, z_s) back to m's embedding.

Shared posterior of a row: the product of Gaussian experts of the modalities present in it and a
N(0, I) prior expert (product_of_experts; a mask says which experts are present). Loss, per row
(mean over the rows of each group, summed over groups):

* paired rows (one pair of every train pair set, both modalities present): the joint ELBO with the
  product-of-experts shared latent, plus one ELBO per present modality a whose shared latent is
  a's alone and reconstructs *every* present modality m (m's own private latent; m != a is the
  cross-reconstruction "decode b from a's shared latent" that makes the shared space common);
* unpaired rows (any train row of one modality): the unimodal ELBO. This is how DMVAE uses data
  that has no partner; it also makes rows with missing modalities train.

Reconstruction likelihood. The embeddings are L2-normalised, i.e. points on the unit sphere, so
the decoder output is normalised too and scored with a von Mises-Fisher likelihood
p(x | z) = C_d(kappa) exp(kappa mu(z)^T x). With kappa fixed, C_d is a constant and the negative
log-likelihood is kappa * (1 - cos(mu(z), x)) + const. (A Gaussian on the normalised vectors gives
the same term: ||x - mu||^2 / (2 sigma^2) = (1 - cos) / sigma^2.) A Gaussian on raw coordinates
would spend capacity on the norm, which carries no information here. kappa weighs
reconstruction against the KL terms; `dmvae.kappa = 0` takes kappa = d for each modality (the
Gaussian reading with sigma^2 = 1/d, the per-coordinate variance of a random unit vector), so
wider embeddings are not automatically under-weighted. It is a config value, not fitted to
evaluation data.

Parameters are a dict keyed by module name ("enc:image", "dec:image"), trained by one jitted
optax step; each module is its own Orbax item (checkpoint.Checkpoints.save_items), so a new
modality is grafted by training its encoder and decoder against the frozen others, whose items
are copied byte for byte.

Retrieval (DMVAEAligner): in the shared latent (route `a->shared<-b`: posterior means of
q(z_s | x_a) and q(z_s | x_b), compared by cosine), and by translation (route `a->shared->b`:
a's shared posterior mean decoded as b with b's prior-mean private latent 0, compared with b's
embeddings).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
import zlib
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from graphbridge import checkpoint as ckpt_lib
from graphbridge import config_check
from graphbridge import data as data_lib
from graphbridge.graph import GraphError
from graphbridge.translators import Translator, TranslatorArch

PyTree = Any
SHARED = "shared"            # the shared latent's name in routes (a->shared<-b, a->shared->b)
ENC, DEC = "enc", "dec"
LOGVAR_CLIP = 8.0            # posterior log-variances are clipped to [-8, 8] for stable exp()
KIND = "dmvae"               # meta["kind"] of a DMVAE checkpoint


class DMVAEError(ValueError):
  """A DMVAE setting or checkpoint that cannot be used; the message says why."""


def module_name(kind: str, modality: str) -> str:
  """'enc', 'image' -> 'enc:image' (the key in the parameter dict)."""
  return f"{kind}:{modality}"


def item_name(module: str) -> str:
  """'enc:image' -> 'module.enc.image' (its Orbax item in a checkpoint step)."""
  kind, _, modality = module.partition(":")
  return f"module.{kind}.{modality}"


# ---- the model --------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class DMVAESpec:
  """Static structure: modalities and embedding dims, latent sizes, MLP architecture, kappa."""
  dims: tuple[tuple[str, int], ...]
  shared_dim: int = 32
  private_dim: int = 16
  arch: TranslatorArch = TranslatorArch(hidden=(256,), layer_norm=True)
  kappa: float = 0.0       # 0: kappa = each modality's embedding dim

  def __post_init__(self):
    if self.shared_dim <= 0 or self.private_dim < 0:
      raise DMVAEError(f"dmvae: shared_dim must be > 0 and private_dim >= 0, got {self.shared_dim}, "
                       f"{self.private_dim}")
    if self.kappa < 0:
      raise DMVAEError(f"dmvae.kappa must be >= 0 (0 = the embedding dim), got {self.kappa}")
    if SHARED in self.names:
      raise DMVAEError(f"a modality may not be called {SHARED!r}: the name is the shared latent's in routes")

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(m for m, _ in self.dims)

  def dim(self, modality: str) -> int:
    for m, d in self.dims:
      if m == modality:
        return d
    raise GraphError(f"modality {modality!r} is not in the model (modalities: {', '.join(self.names)})")

  def kappa_for(self, modality: str) -> float:
    return float(self.kappa) if self.kappa > 0 else float(self.dim(modality))

  def modules(self, modalities: Sequence[str] | None = None) -> list[str]:
    return [module_name(k, m) for m in (modalities or self.names) for k in (ENC, DEC)]

  def with_modalities(self, dims: Mapping[str, int]) -> "DMVAESpec":
    return dataclasses.replace(self, dims=tuple(dims.items()))

  def to_dict(self) -> dict:
    return {"dims": [list(d) for d in self.dims], "shared_dim": self.shared_dim,
            "private_dim": self.private_dim, "arch": self.arch.to_dict(), "kappa": self.kappa}

  @classmethod
  def from_dict(cls, data: Mapping) -> "DMVAESpec":
    return cls(dims=tuple((str(m), int(d)) for m, d in data["dims"]), shared_dim=int(data["shared_dim"]),
               private_dim=int(data["private_dim"]), arch=TranslatorArch.from_dict(data["arch"]),
               kappa=float(data["kappa"]))


def spec_from_config(config, dims: Mapping[str, int]) -> DMVAESpec:
  model, cfg = config.model, config.dmvae
  arch = TranslatorArch(hidden=tuple(model.hidden), activation=model.activation,
                        layer_norm=bool(model.layer_norm), residual=False)
  return DMVAESpec(dims=tuple(dims.items()), shared_dim=int(cfg.shared_dim), private_dim=int(cfg.private_dim),
                   arch=arch, kappa=float(cfg.kappa))


def _encoder(spec: DMVAESpec) -> Translator:
  return Translator(2 * (spec.private_dim + spec.shared_dim), spec.arch)


def _decoder(spec: DMVAESpec, modality: str) -> Translator:
  return Translator(spec.dim(modality), spec.arch)


def init_params(spec: DMVAESpec, seed: int, modalities: Sequence[str] | None = None) -> dict:
  """{'enc:m': params, 'dec:m': params} for `modalities` (default: all), from `seed`.

  Each module's key is folded from its name, so adding a modality leaves the others' draws unchanged."""
  out = {}
  base = jax.random.PRNGKey(int(seed))
  for m in modalities or spec.names:
    for kind in (ENC, DEC):
      name = module_name(kind, m)
      key = jax.random.fold_in(base, _stable_int(name))
      if kind == ENC:
        out[name] = _encoder(spec).init(key, jnp.zeros((1, spec.dim(m))))["params"]
      else:
        out[name] = _decoder(spec, m).init(key, jnp.zeros((1, spec.private_dim + spec.shared_dim)))["params"]
  return out


def _stable_int(name: str) -> int:
  return zlib.crc32(name.encode()) & 0x7FFFFFFF


def encode(spec: DMVAESpec, params: Mapping, modality: str, x: jax.Array):
  """x: [B, d_m] -> (mu_p, logvar_p) [B, private_dim] and (mu_s, logvar_s) [B, shared_dim]."""
  out = _encoder(spec).apply({"params": params[module_name(ENC, modality)]}, x)
  p, s = spec.private_dim, spec.shared_dim
  clip = lambda v: jnp.clip(v, -LOGVAR_CLIP, LOGVAR_CLIP)
  return (out[:, :p], clip(out[:, p:2 * p])), (out[:, 2 * p:2 * p + s], clip(out[:, 2 * p + s:]))


def decode(spec: DMVAESpec, params: Mapping, modality: str, z_private: jax.Array, z_shared: jax.Array):
  """(z_p [B, private_dim], z_s [B, shared_dim]) -> [B, d_m], L2-normalised (the vMF mean direction)."""
  y = _decoder(spec, modality).apply({"params": params[module_name(DEC, modality)]},
                                     jnp.concatenate([z_private, z_shared], axis=-1))
  return y / jnp.sqrt(jnp.maximum(jnp.sum(y * y, axis=-1, keepdims=True), 1e-12))


def product_of_experts(mu: jax.Array, logvar: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Product of Gaussian experts and a N(0, I) prior expert.

  mu, logvar: [E, B, D] (E experts); mask: [E, B] (1 = expert present). Returns (mu, logvar) [B, D]:
  precision = 1 + sum_e mask_e / var_e, mean = sum_e mask_e mu_e / var_e / precision."""
  precision = jnp.exp(-logvar) * mask[..., None]
  total = 1.0 + jnp.sum(precision, axis=0)
  mean = jnp.sum(precision * mu, axis=0) / total
  return mean, -jnp.log(total)


def gaussian_kl(mu: jax.Array, logvar: jax.Array) -> jax.Array:
  """KL(N(mu, exp(logvar)) || N(0, I)) summed over the last axis: [..., D] -> [...]."""
  return 0.5 * jnp.sum(jnp.exp(logvar) + mu * mu - 1.0 - logvar, axis=-1)


def vmf_nll(x_hat: jax.Array, x: jax.Array, kappa: float) -> jax.Array:
  """kappa * (1 - cos(x_hat, x)): the vMF negative log-likelihood up to a constant. [B, d] -> [B]."""
  x = x / jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-12))
  return kappa * (1.0 - jnp.sum(x_hat * x, axis=-1))


def _sample(key, mu, logvar):
  return mu + jnp.exp(0.5 * logvar) * jax.random.normal(key, mu.shape, mu.dtype)


def row_losses(spec: DMVAESpec, params: Mapping, xs: Mapping[str, jax.Array],
               present: Mapping[str, jax.Array], key: jax.Array, cross_weight: float = 1.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Negative DMVAE ELBO per row for rows that hold some of the modalities in `xs`.

  xs: {m: [B, d_m]} (any values where m is missing); present: {m: [B]} 1.0 / 0.0. A row with one
  present modality gets the unimodal ELBO; with several, the joint (product-of-experts) ELBO plus
  one ELBO per present modality's own shared latent reconstructing every present modality.
  Each encoder and decoder is applied once (the shared latents are stacked), so the program stays
  small however many terms there are. Returns (loss [B], {"recon", "cross", "kl": [B]})."""
  names = list(xs)
  n = len(names)
  keys = jax.random.split(key, n + 1)
  enc = {m: encode(spec, params, m, xs[m]) for m in names}
  mask = jnp.stack([present[m].astype(jnp.float32) for m in names])               # [M, B]
  z_private = {m: _sample(keys[i], *enc[m][0]) for i, m in enumerate(names)}
  kl_private = sum(mask[i] * gaussian_kl(*enc[m][0]) for i, m in enumerate(names))
  mu_s = jnp.stack([enc[m][1][0] for m in names])                                  # [M, B, S]
  logvar_s = jnp.stack([enc[m][1][1] for m in names])
  # shared posteriors: row 0 the joint product of experts, row 1 + i modality i's own (with the prior)
  joint_mu, joint_logvar = product_of_experts(mu_s, logvar_s, mask)
  own_mu, own_logvar = jax.vmap(lambda mu, lv, mk: product_of_experts(mu[None], lv[None], mk[None]))(
      mu_s, logvar_s, mask)
  post_mu = jnp.concatenate([joint_mu[None], own_mu])                              # [1 + M, B, S]
  post_logvar = jnp.concatenate([joint_logvar[None], own_logvar])
  z_shared = _sample(keys[-1], post_mu, post_logvar)
  kl_shared = gaussian_kl(post_mu, post_logvar)                                    # [1 + M, B]
  # nll[i, j]: modality i decoded from shared latent j (0 = joint, 1 + k = modality k's own)
  nll = []
  for i, m in enumerate(names):
    zp = jnp.broadcast_to(z_private[m], (n + 1,) + z_private[m].shape)
    y = decode(spec, params, m, zp.reshape(-1, zp.shape[-1]), z_shared.reshape(-1, z_shared.shape[-1]))
    x = jnp.broadcast_to(xs[m], (n + 1,) + xs[m].shape).reshape(-1, xs[m].shape[-1])
    nll.append(mask[i] * vmf_nll(y, x, spec.kappa_for(m)).reshape(n + 1, -1))
  nll = jnp.stack(nll)                                                             # [M, 1 + M, B]
  n_present = jnp.sum(mask, axis=0)
  # the joint ELBO of a row with one modality equals its unimodal one: counted once
  joint = (n_present >= 2).astype(jnp.float32) if n > 1 else jnp.zeros_like(n_present)
  own = nll[jnp.arange(n), 1 + jnp.arange(n)]                                      # [M, B] self terms
  from_source = jnp.sum(nll[:, 1:], axis=0)                                        # [M, B] all targets
  recon = joint * jnp.sum(nll[:, 0], axis=0) + jnp.sum(mask * own, axis=0)
  cross = jnp.sum(mask * (from_source - own), axis=0)
  kl = joint * (kl_private + kl_shared[0]) + jnp.sum(mask * (kl_private[None] + kl_shared[1:]), axis=0)
  loss = recon + cross_weight * cross + kl
  return loss, {"recon": recon, "cross": cross, "kl": kl}


# ---- batches -----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Group:
  """One kind of training row: a pair set (two modalities) or one modality's unpaired rows."""
  modalities: tuple[str, ...]
  key: str           # name in the sampler arrays: "pairs:a:b" or "rows:m"
  weight: float


def training_groups(dataset: data_lib.Dataset, trainable: Sequence[str], unpaired_weight: float,
                    log: Callable[[str], None] = print) -> list[Group]:
  """Every train pair set that touches a trainable modality, then each trainable modality's rows."""
  groups = []
  for a, b in dataset.pairs:
    if a not in trainable and b not in trainable:
      continue
    if len(dataset.pairs_for(a, b)) == 0:
      log(f"dmvae: pair set {a}<->{b} has no pair with both rows in the train split; skipped")
      continue
    groups.append(Group((a, b), f"pairs:{a}:{b}", 1.0))
  for m in trainable:
    if unpaired_weight > 0 and int(dataset.modalities[m].train.sum()):
      groups.append(Group((m,), f"rows:{m}", float(unpaired_weight)))
  if not groups:
    raise DMVAEError(f"dmvae: nothing to train on for {', '.join(trainable)} (no train pairs or rows)")
  return groups


def sampler_arrays(dataset: data_lib.Dataset, groups: Sequence[Group]) -> dict:
  """{"emb": {m: [N_m, d_m]}, "index": {group key: [P, k] rows}} as numpy."""
  used = sorted({m for g in groups for m in g.modalities})
  emb = {m: np.asarray(dataset.modalities[m].emb, np.float32) for m in used}
  index = {}
  for g in groups:
    if len(g.modalities) == 2:
      index[g.key] = dataset.pairs_for(*g.modalities).astype(np.int32)
    else:
      index[g.key] = np.nonzero(dataset.modalities[g.modalities[0]].train)[0].astype(np.int32)[:, None]
  return {"emb": emb, "index": index}


# ---- training ----------------------------------------------------------------------------------

def make_loss_fn(spec: DMVAESpec, groups: Sequence[Group], batch_size: int, cross_weight: float):
  """loss(trainable, frozen, arrays, key) -> (scalar, metrics).

  batch_size rows of every group are sampled inside and put into one batch of rows with presence
  masks (a modality missing from a group's rows is masked), so each module runs once per step."""
  names = sorted({m for g in groups for m in g.modalities}, key=spec.names.index)

  def loss_fn(trainable, frozen, arrays, key):
    params = {**frozen, **trainable}
    k_rows, k_model = jax.random.split(key)
    xs = {m: [] for m in names}
    present = {m: [] for m in names}
    for i, g in enumerate(groups):  # a trace-time loop: one fused program
      index = arrays["index"][g.key]
      pick = index[jax.random.randint(jax.random.fold_in(k_rows, i), (batch_size,), 0, index.shape[0])]
      for m in names:
        if m in g.modalities:
          xs[m].append(arrays["emb"][m][pick[:, g.modalities.index(m)]])
          present[m].append(jnp.ones((batch_size,), jnp.float32))
        else:
          xs[m].append(jnp.zeros((batch_size, arrays["emb"][m].shape[1]), arrays["emb"][m].dtype))
          present[m].append(jnp.zeros((batch_size,), jnp.float32))
    xs = {m: jnp.concatenate(v) for m, v in xs.items()}
    present = {m: jnp.concatenate(v) for m, v in present.items()}
    loss, parts = row_losses(spec, params, xs, present, k_model, cross_weight)
    weights = jnp.repeat(jnp.asarray([g.weight for g in groups], jnp.float32), batch_size)
    # mean over each group's rows, summed over groups (weighted)
    metrics = {f"loss/{k}": jnp.sum(weights * v) / batch_size for k, v in parts.items()}
    for i, g in enumerate(groups):
      metrics[f"loss/group/{'+'.join(g.modalities)}"] = jnp.mean(loss[i * batch_size:(i + 1) * batch_size])
    total = jnp.sum(weights * loss) / batch_size
    metrics["loss/total"] = total
    return total, metrics
  return loss_fn


def make_step(spec: DMVAESpec, tx: optax.GradientTransformation, groups: Sequence[Group], batch_size: int,
              cross_weight: float) -> Callable:
  """One jitted, donated step: state {"params", "opt", "step", "key"} -> (state, metrics).

  A step whose loss or gradients are not finite is not applied (metrics["nonfinite"] = 1)."""
  loss_fn = make_loss_fn(spec, groups, batch_size, cross_weight)

  def step(state, frozen, arrays):
    key = jax.random.fold_in(state["key"], state["step"])
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], frozen, arrays, key)
    updates, opt = tx.update(grads, state["opt"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    finite = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(grads))
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    metrics["nonfinite"] = 1.0 - finite.astype(jnp.float32)
    metrics["grad_norm"] = optax.tree.norm(grads)
    return {"params": keep(params, state["params"]), "opt": keep(opt, state["opt"]),
            "step": state["step"] + 1, "key": state["key"]}, metrics

  return jax.jit(step, donate_argnums=0)


def _optimizer_key(config) -> str:
  """What train.make_optimizer reads, as a hashable key (runs that share it share one compiled step)."""
  return json.dumps({"optim": config.optim.to_dict(), "train_steps": int(config.train.steps),
                     "finetune": config.finetune.to_dict()}, sort_keys=True)


@functools.lru_cache(maxsize=8)
def _cached_step(spec: DMVAESpec, groups: tuple[Group, ...], batch_size: int, cross_weight: float,
                 optimizer_key: str) -> Callable:
  """make_step for a config's optimizer; seeds and repeated runs (compare, tests) compile once."""
  from graphbridge import train as train_lib
  config = ml_collections.ConfigDict(json.loads(optimizer_key))
  config.train = ml_collections.ConfigDict({"steps": config.train_steps})
  return make_step(spec, train_lib.make_optimizer(config), groups, batch_size, cross_weight)


def _split_by_module(tree: PyTree, modules: Sequence[str]) -> tuple[dict, dict]:
  """({module: nested dict of its leaves}, nested dict of the other leaves) of a params/opt tree."""
  per, shared = {}, {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    keys = [ckpt_lib._key_str(k) for k in path]
    if np.size(leaf) == 0:
      continue
    hit = next((i for i, k in enumerate(keys) if k in modules), None)
    if hit is None:
      ckpt_lib._set_nested(shared, keys or ["value"], np.asarray(leaf))
    else:
      rest = keys[:hit] + keys[hit + 1:]
      ckpt_lib._set_nested(per.setdefault(keys[hit], {}), rest or ["value"], np.asarray(leaf))
  return per, shared


def _merge_by_module(template: PyTree, per: Mapping, shared: Mapping, modules: Sequence[str]) -> PyTree:
  leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(template)
  leaves = []
  for path, leaf in leaves_with_path:
    keys = [ckpt_lib._key_str(k) for k in path]
    if np.size(leaf) == 0:
      leaves.append(np.asarray(leaf))
      continue
    hit = next((i for i, k in enumerate(keys) if k in modules), None)
    try:
      value = (np.asarray(ckpt_lib._get_nested(shared, keys or ["value"])) if hit is None else
               np.asarray(ckpt_lib._get_nested(per[keys[hit]], keys[:hit] + keys[hit + 1:] or ["value"])))
    except KeyError as exc:
      raise ckpt_lib.CheckpointMismatchError(
          f"dmvae checkpoint lacks {'/'.join(keys)} ({exc}); it was written for another model or optimizer"
      ) from None
    if value.shape != np.shape(leaf):
      raise ckpt_lib.CheckpointMismatchError(
          f"dmvae checkpoint array {'/'.join(keys)} has shape {value.shape}, expected {np.shape(leaf)} "
          "(another model size?)")
    leaves.append(value.astype(np.asarray(leaf).dtype))
  return jax.tree_util.tree_unflatten(treedef, leaves)


def _state_items(state: Mapping, modules: Sequence[str]) -> tuple[dict, dict]:
  host = jax.device_get(state)
  opt_per, opt_shared = _split_by_module(host["opt"], modules)
  items = {}
  for m in modules:  # Orbax cannot store empty subtrees: "opt" only where the optimizer keeps rows
    items[item_name(m)] = {"params": jax.tree.map(np.asarray, host["params"][m])}
    if opt_per.get(m):
      items[item_name(m)]["opt"] = opt_per[m]
  train = {"step": np.asarray(host["step"]), "key": np.asarray(host["key"])}
  if opt_shared:
    train["opt"] = opt_shared
  return items, train


def _restore_state(checkpoints: ckpt_lib.Checkpoints, step: int, template: Mapping,
                   modules: Sequence[str]) -> dict:
  per = {m: checkpoints.restore_item(step, item_name(m)) for m in modules}
  train = checkpoints.restore_train(step)
  params = _merge_by_module({m: template["params"][m] for m in modules},
                            {m: per[m]["params"] for m in modules}, {}, modules)
  opt = _merge_by_module(template["opt"], {m: per[m].get("opt", {}) for m in modules}, train.get("opt", {}),
                         modules)
  return {"params": params, "opt": opt, "step": jnp.asarray(train["step"], jnp.int32),
          "key": jnp.asarray(train["key"], template["key"].dtype)}


def _meta(spec: DMVAESpec, config, dataset: data_lib.Dataset, trainable: Sequence[str],
          frozen: Sequence[str]) -> dict:
  return {"kind": KIND, "spec": spec.to_dict(), "trainable": list(trainable), "frozen": list(frozen),
          "config": json.loads(config.to_json_best_effort()),
          "data": {"source": dataset.source, "fingerprint": dataset.fingerprint()}}


@dataclasses.dataclass
class DMVAEResult:
  """A trained DMVAE (also what strategies.StrategyRun's `results` hold for this strategy)."""
  spec: DMVAESpec
  params: dict                 # every module, trainable and frozen
  state: dict                  # {"step": ...}
  steps_run: int
  seconds: float
  compile_seconds: float
  final_metrics: dict
  trainable: tuple[str, ...]   # module names trained in this run


def train(config: ml_collections.ConfigDict, workdir: str | None, dataset: data_lib.Dataset,
          log: Callable[[str], None] = print, frozen_params: Mapping[str, PyTree] | None = None,
          frozen_from: str | None = None, spec: DMVAESpec | None = None) -> DMVAEResult:
  """Train a DMVAE on `dataset` (checkpoints and metrics.jsonl under workdir; None: neither).

  frozen_params: {module: params} held fixed (grafting); only the other modalities' encoders and
  decoders train, on the pair sets and rows that involve them. frozen_from: the step directory the
  frozen modules' items are copied from, byte for byte, into every checkpoint. Resumes from the
  latest complete checkpoint in workdir."""
  from graphbridge import train as train_lib
  spec = spec or spec_from_config(config, dataset.dims)
  frozen = {k: jax.tree.map(jnp.asarray, v) for k, v in (frozen_params or {}).items()}
  frozen_modalities = sorted({k.partition(":")[2] for k in frozen})
  trainable_modalities = [m for m in spec.names if m not in frozen_modalities]
  if not trainable_modalities:
    raise DMVAEError("dmvae: every modality is frozen; nothing to train")
  modules = spec.modules(trainable_modalities)
  cfg = config.dmvae
  groups = training_groups(dataset, trainable_modalities, float(cfg.unpaired_weight), log)
  tx = train_lib.make_optimizer(config)
  seed = int(config.seed)
  params = init_params(spec, seed, trainable_modalities)
  state = {"params": params, "opt": tx.init(params), "step": jnp.asarray(0, jnp.int32),
           "key": jax.random.PRNGKey(seed + 1)}
  n_total = int(config.train.steps)
  checkpoints = None
  start = 0
  if workdir:
    os.makedirs(workdir, exist_ok=True)
    checkpoints = ckpt_lib.Checkpoints(os.path.join(workdir, "checkpoints"),
                                       max_to_keep=int(config.train.get("keep_checkpoints", 2)))
    step = checkpoints.latest_complete_step()
    if step is not None:
      meta = checkpoints.restore_meta(step)
      if meta.get("kind") != KIND or meta.get("spec") != spec.to_dict():
        raise ckpt_lib.CheckpointMismatchError(
            f"{checkpoints.directory} holds a checkpoint of another model ({meta.get('kind', 'graph')}, "
            f"{meta.get('spec')}); use a new --workdir")
      state, start = _restore_state(checkpoints, step, state, modules), step
      log(f"resumed from checkpoint step {start} in {checkpoints.directory}")
  arrays = jax.device_put(sampler_arrays(dataset, groups))
  step_fn = _cached_step(spec, tuple(groups), int(config.data.batch_size), float(cfg.cross_weight),
                         _optimizer_key(config))
  writer = train_lib.MetricWriter(os.path.join(workdir, "metrics.jsonl") if workdir else None)
  lr_at = train_lib.learning_rate_schedule(config)
  log(f"dmvae: modalities {', '.join(f'{m}[{d}]' for m, d in spec.dims)}; shared {spec.shared_dim}, private "
      f"{spec.private_dim}; kappa {', '.join(f'{m} {spec.kappa_for(m):g}' for m in spec.names)}; training "
      f"{', '.join(modules)}" + (f" (frozen: {', '.join(sorted(frozen))})" if frozen else "")
      + f"; groups {', '.join('+'.join(g.modalities) for g in groups)}; {start}/{n_total} steps done")
  log_every = max(int(config.train.log_every), 1)
  print_every = max(int(config.train.get("print_every", log_every)), 1)
  ckpt_every = int(config.train.checkpoint_every)
  copy = {item_name(m): frozen_from for m in frozen} if frozen_from else None
  meta = _meta(spec, config, dataset, modules, sorted(frozen))
  values, compile_seconds = {}, 0.0
  t_start = t_last = time.perf_counter()
  last = start
  try:
    for step in range(start, n_total):
      state, metrics = step_fn(state, frozen, arrays)
      done = step + 1
      if step == start:
        jax.block_until_ready(state["step"])
        compile_seconds = time.perf_counter() - t_start
        t_last, last = time.perf_counter(), done
      if done % log_every == 0 or done == n_total:
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not np.isfinite(values["loss/total"]):
          raise train_lib.NonFiniteError(f"dmvae: loss is {values['loss/total']} at step {done} "
                                         "(lower optim.lr; docs/dmvae.md)")
        now = time.perf_counter()
        rate = (done - last) / max(now - t_last, 1e-9) if done > last else float("nan")
        t_last, last = now, done
        values["lr"] = float(lr_at(step))
        writer.write(done, {**values, "steps_per_sec": rate})
        if done % print_every == 0 or done == n_total:
          log(f"step {done}/{n_total}  loss {values['loss/total']:.3f}  recon {values['loss/recon']:.3f}  "
              f"cross {values['loss/cross']:.3f}  kl {values['loss/kl']:.3f}  lr {values['lr']:.2e}")
      if checkpoints and ((ckpt_every > 0 and done % ckpt_every == 0) or done == n_total):
        items, train_item = _state_items(state, modules)
        checkpoints.save_items(done, items, train_item, meta, copy_items_from=copy)
  finally:
    if checkpoints:
      checkpoints.close()
  params = {**{k: v for k, v in frozen.items()}, **state["params"]}
  return DMVAEResult(spec, params, {"step": int(state["step"])}, max(n_total - start, 0),
                     time.perf_counter() - t_start, compile_seconds, values, tuple(modules))


# ---- restoring ---------------------------------------------------------------------------------

def is_dmvae_workdir(workdir: str) -> bool:
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    return False
  checkpoints = ckpt_lib.Checkpoints(directory, max_to_keep=None, async_save=False, read_only=True)
  step = checkpoints.latest_complete_step()
  return step is not None and checkpoints.restore_meta(step).get("kind") == KIND


@dataclasses.dataclass
class LoadedDMVAE:
  spec: DMVAESpec
  params: dict
  step: int
  step_dir: str
  meta: dict


def load(workdir: str, step: int | None = None) -> LoadedDMVAE:
  """The parameters of every module of a trained DMVAE workdir (newest complete step by default)."""
  checkpoints = ckpt_lib.Checkpoints(os.path.join(workdir, "checkpoints"), max_to_keep=None, async_save=False,
                                     read_only=True)
  step = checkpoints.latest_complete_step() if step is None else step
  if step is None:
    raise ckpt_lib.CheckpointError(f"no complete checkpoint in {workdir}/checkpoints")
  meta = checkpoints.check_complete(step)
  if meta.get("kind") != KIND:
    raise ckpt_lib.CheckpointMismatchError(f"{workdir} step {step} is not a DMVAE checkpoint "
                                           f"(kind {meta.get('kind', 'graph')!r})")
  spec = DMVAESpec.from_dict(meta["spec"])
  params = {}
  for m in spec.modules():
    tree = checkpoints.restore_item(step, item_name(m))["params"]
    template = init_params(spec, 0, [m.partition(":")[2]])[m]
    params[m] = jax.tree.map(jnp.asarray, _merge_by_module({"p": template}, {"p": tree}, {}, ["p"])["p"])
  return LoadedDMVAE(spec, params, step, checkpoints.step_dir(step), meta)


# ---- retrieval ---------------------------------------------------------------------------------

CHUNK = 1024  # rows per jitted call; inputs padded to it so a new row count never recompiles


@functools.cache
def _jitted(spec: DMVAESpec, what: str, query: str, gallery: str):
  if what == "shared":
    def fn(params, x):
      (_, _), (mu, logvar) = encode(spec, params, query, x)
      return product_of_experts(mu[None], logvar[None], jnp.ones((1, x.shape[0])))[0]
  else:
    def fn(params, x):
      (_, _), (mu, logvar) = encode(spec, params, query, x)
      z_shared = product_of_experts(mu[None], logvar[None], jnp.ones((1, x.shape[0])))[0]
      return decode(spec, params, gallery, jnp.zeros((x.shape[0], spec.private_dim)), z_shared)
  return jax.jit(fn)


def _run_chunked(fn, params, x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float32)
  parts = []
  for lo in range(0, max(len(x), 1), CHUNK):
    block = x[lo:lo + CHUNK]
    padded = np.zeros((CHUNK, x.shape[1]), np.float32)
    padded[:len(block)] = block
    parts.append(np.asarray(fn(params, jnp.asarray(padded)), np.float32)[:len(block)])
  return np.concatenate(parts)


def _normalize(z: np.ndarray) -> np.ndarray:
  return (z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-8)).astype(np.float32)


@dataclasses.dataclass
class DMVAEAligner:
  """Evaluation's view of a DMVAE (evaluate.Aligner).

  Routes: `a->shared<-b` compares the shared posterior means of both sides (cosine);
  `a->shared->b` decodes a's shared posterior mean as b (private latent = its prior mean, 0) and
  compares it with b's embeddings. `mode` picks the default route ("shared" or "translate")."""
  spec: DMVAESpec
  params: Mapping
  name: str = "dmvae"
  mode: str = "shared"

  def __post_init__(self):
    if self.mode not in ("shared", "translate"):
      raise DMVAEError(f"DMVAEAligner mode {self.mode!r}: choose 'shared' or 'translate'")

  def default_route(self, query: str, gallery: str) -> str | None:
    if query not in self.spec.names or gallery not in self.spec.names:
      return None
    return f"{query}->{SHARED}<-{gallery}" if self.mode == "shared" else f"{query}->{SHARED}->{gallery}"

  def translation_routes(self, modalities: Sequence[str]) -> tuple[str, ...]:
    return tuple(f"{q}->{SHARED}->{g}" for q in modalities for g in modalities
                 if q != g and q in self.spec.names and g in self.spec.names)

  def route_ends(self, route: str) -> tuple[str, str]:
    return self._parse(route)[1:]

  def _parse(self, route: str) -> tuple[str, str, str]:
    text = route.replace(" ", "")
    for sep, kind in ((f"->{SHARED}<-", "shared"), (f"->{SHARED}->", "translate")):
      if sep in text:
        query, gallery = text.split(sep)
        for m in (query, gallery):
          self.spec.dim(m)
        return kind, query, gallery
    raise GraphError(f"dmvae route {route!r}: expected 'a->{SHARED}<-b' (compare in the shared latent) or "
                     f"'a->{SHARED}->b' (translate a into b)")

  def shared_mean(self, modality: str, x: np.ndarray) -> np.ndarray:
    """x: [n, d_m] -> [n, shared_dim] posterior means of q(z_s | x) (with the prior expert)."""
    return _run_chunked(_jitted(self.spec, "shared", modality, modality), self.params, x)

  def translate(self, query: str, gallery: str, x: np.ndarray) -> np.ndarray:
    """x: [n, d_query] -> [n, d_gallery], L2-normalised."""
    return _run_chunked(_jitted(self.spec, "translate", query, gallery), self.params, x)

  def encode(self, query, gallery, route, xq, xg):
    kind, q, g = self._parse(route)
    if (q, g) != (query, gallery):
      raise GraphError(f"route {route} does not join {query} (query) and {gallery} (gallery)")
    if kind == "shared":
      return _normalize(self.shared_mean(q, xq)), _normalize(self.shared_mean(g, xg))
    return self.translate(q, g, xq), _normalize(np.asarray(xg, np.float32))


# ---- the strategy ------------------------------------------------------------------------------

@dataclasses.dataclass
class DMVAERun:
  """Duck-types strategies.StrategyRun; `aligners` holds both retrieval views for comparisons."""
  strategy: str
  aligner: DMVAEAligner
  init_aligner: DMVAEAligner
  results: list
  seconds: float

  @property
  def result(self) -> DMVAEResult:
    return self.results[-1]

  def report(self, config, dataset: data_lib.Dataset, workdir: str | None, log: Callable[[str], None] = print,
             plots: bool = True) -> dict:
    """report.{json,md} of this run (report_run); experiment.train_and_evaluate calls it."""
    return report_run(self, config, dataset, workdir, log=log, plots=plots)

  @property
  def aligners(self) -> list[DMVAEAligner]:
    return [self.aligner, dataclasses.replace(self.aligner, name=f"{self.aligner.name}-translate",
                                              mode="translate")]


def run_strategy(config: ml_collections.ConfigDict, dataset: data_lib.Dataset, workdir: str | None,
                 log: Callable[[str], None] = print) -> DMVAERun:
  t0 = time.perf_counter()
  result = train(config, workdir, dataset, log=log)
  init = init_params(result.spec, int(config.seed))
  return DMVAERun(KIND, DMVAEAligner(result.spec, result.params), DMVAEAligner(result.spec, init), [result],
                  time.perf_counter() - t0)


def describe(config: ml_collections.ConfigDict, dataset: data_lib.Dataset) -> list[str]:
  """The plan for the dry run: modules, latent sizes, kappa and training groups (nothing built)."""
  spec = spec_from_config(config, dataset.dims)
  groups = training_groups(dataset, spec.names, float(config.dmvae.unpaired_weight), log=lambda _: None)
  n_rows = len(groups) * int(config.data.batch_size)
  return [f"dmvae: modules {', '.join(spec.modules())}; shared latent {spec.shared_dim}, private "
          f"{spec.private_dim}, MLP hidden {spec.arch.hidden}",
          f"dmvae: kappa {', '.join(f'{m} {spec.kappa_for(m):g}' for m in spec.names)}; cross_weight "
          f"{float(config.dmvae.cross_weight):g}, unpaired_weight {float(config.dmvae.unpaired_weight):g}",
          f"dmvae: groups {', '.join('+'.join(g.modalities) for g in groups)}; {n_rows} rows per step"]


def graph_summary(spec: DMVAESpec) -> dict:
  """The report header's "graph": modalities plus the shared latent; encoders m->shared, decoders back."""
  return {"nodes": [*[list(d) for d in spec.dims], [SHARED, spec.shared_dim]],
          "edges": [e for m in spec.names for e in (f"{m}->{SHARED}", f"{SHARED}->{m}")]}


def report_run(run: DMVAERun, config, dataset: data_lib.Dataset, workdir: str | None,
               log: Callable[[str], None] = print, plots: bool = True, before: DMVAEAligner | None = None,
               metrics_dir: str | None = None) -> dict:
  """report.{json,md}: default routes compare in the shared latent; the translation routes
  a->shared->b are added as named routes (rows with named_route=True)."""
  from graphbridge import report as report_lib
  from graphbridge import writers as writers_lib
  result = run.result
  options = report_lib.EvalOptions.from_config(config)
  extra = run.aligner.translation_routes(dataset.names) + tuple(options.extra_routes)
  options = dataclasses.replace(options, extra_routes=extra)
  header = {"graph": graph_summary(result.spec), "step": int(result.state["step"]), "strategy": KIND,
            "dmvae": {**result.spec.to_dict(), "trained_modules": list(result.trainable)},
            "timing": {"train_seconds": sum(r.seconds for r in run.results),
                       "compile_seconds": sum(r.compile_seconds for r in run.results),
                       "steps": sum(r.steps_run for r in run.results)},
            "final_losses": result.final_metrics}
  metrics_dir = metrics_dir or workdir
  metrics_rows = writers_lib.read_metrics(os.path.join(metrics_dir, "metrics.jsonl")) if metrics_dir else []
  return report_lib.run_report(run.aligner, dataset, workdir or None, before or run.init_aligner, options,
                               header, metrics_rows, plots=plots, log=log)


def evaluate_workdir(workdir: str, data: str | None = None, paths: Sequence[str] = (),
                     split: str | None = None, out: str | None = None, step: int | None = None, plots: bool = True,
                     log: Callable[[str], None] = print, plot_dpi: int | None = None,
                     plot_formats: Sequence[str] | None = None) -> dict:
  """report.evaluate_workdir for a DMVAE run: restore every module and write the report."""
  loaded = load(workdir, step)
  config = ml_collections.ConfigDict(loaded.meta["config"])
  source = data or config.data.get("path") or config.data.get("name") or loaded.meta["data"]["source"]
  dataset = data_lib.load_named(source)
  for m, d in loaded.spec.dims:
    if dataset.dims.get(m) != d:
      raise DMVAEError(f"{source}: modality {m} has dim {dataset.dims.get(m)}, the DMVAE in {workdir} "
                       f"expects {d}")
  if loaded.meta["data"].get("fingerprint") != dataset.fingerprint():
    log(f"note: {dataset.source} is not the data this run was trained on; evaluating anyway")
  if split:
    config.eval.split = split
  if plot_dpi:
    config.eval.plot_dpi = int(plot_dpi)
  if plot_formats:
    config.eval.plot_formats = ",".join(plot_formats)
  config.eval.paths = ",".join(paths) if paths else config.eval.get("paths", "")
  result = DMVAEResult(loaded.spec, loaded.params, {"step": loaded.step}, 0, 0.0, 0.0, {}, ())
  run = DMVAERun(KIND, DMVAEAligner(loaded.spec, loaded.params),
                 DMVAEAligner(loaded.spec, init_params(loaded.spec, int(config.seed))), [result], 0.0)
  log(f"run: {workdir} step {loaded.step}; data: {dataset.source}\n{dataset.summary()}")
  return report_run(run, config, dataset, out or workdir, log=log, plots=plots, metrics_dir=workdir)


# ---- grafting ----------------------------------------------------------------------------------

@dataclasses.dataclass
class DMVAEGraft:
  result: DMVAEResult
  old_step: int
  item_digests: dict[str, str]   # {old module: sha256 of its item}, equal in the old and new checkpoint
  report: dict | None


def module_digest(step_dir: str, module: str) -> str:
  """sha256 over the relative paths and bytes of every file of a module's checkpoint item."""
  return ckpt_lib.item_digest(os.path.join(step_dir, item_name(module)))


def graft(config: ml_collections.ConfigDict, from_workdir: str, workdir: str, dataset: data_lib.Dataset,
          log: Callable[[str], None] = print, report: bool = False, plots: bool = False) -> DMVAEGraft:
  """Add the modalities of `dataset` that the DMVAE in from_workdir lacks: their encoders and
  decoders train against the frozen old modules (same latent sizes, architecture and kappa as the
  old run), whose checkpoint items are copied byte for byte. Checks the copies before returning."""
  old = load(from_workdir)
  new = [m for m in dataset.names if m not in old.spec.names]
  missing = [m for m in old.spec.names if m not in dataset.modalities]
  if missing:
    raise DMVAEError(f"dmvae graft: the data lacks the old modalities {', '.join(missing)} (it has "
                     f"{', '.join(dataset.names)})")
  for m, d in old.spec.dims:
    if dataset.dims[m] != d:
      raise DMVAEError(f"dmvae graft: {m} has dim {dataset.dims[m]} in the data, {d} in {from_workdir}")
  if not new:
    raise DMVAEError(f"dmvae graft: every modality of the data is already in {from_workdir} "
                     f"({', '.join(old.spec.names)}); nothing to graft")
  spec = old.spec.with_modalities({**dict(old.spec.dims), **{m: dataset.dims[m] for m in new}})
  log(f"dmvae graft: new {', '.join(new)} against frozen {', '.join(old.spec.names)} (step {old.step})")
  result = train(config, workdir, dataset, log=log, frozen_params=old.params, frozen_from=old.step_dir,
                 spec=spec)
  grafted = load(workdir)
  digests = {}
  for m in old.spec.modules():
    before, after = module_digest(old.step_dir, m), module_digest(grafted.step_dir, m)
    if before != after:
      raise ckpt_lib.CheckpointError(f"dmvae graft: frozen module {m} changed in {grafted.step_dir}")
    digests[m] = after
  summary = None
  if report:
    run = DMVAERun(KIND, DMVAEAligner(spec, result.params), DMVAEAligner(spec, {
        **old.params, **init_params(spec, int(config.seed), new)}), [result], result.seconds)
    summary = report_run(run, config, dataset, workdir, log=log, plots=plots)
  return DMVAEGraft(result, old.step, digests, summary)
