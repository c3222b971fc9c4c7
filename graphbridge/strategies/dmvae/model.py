"""DMVAE: the private-shared disentangled multimodal VAE (Lee & Pavlovic, CVPR-W 2021) as a
strategy.

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
import zlib
from typing import Any, Mapping, Sequence
import jax
import jax.numpy as jnp
from graphbridge.core.errors import GraphError
from graphbridge.model.translators import Translator, TranslatorArch


PyTree = Any


SHARED = "shared"  # the shared latent's name in routes (a->shared<-b, a->shared->b)


ENC, DEC = "enc", "dec"


LOGVAR_CLIP = 8.0  # posterior log-variances are clipped to [-8, 8] for stable exp()


KIND = "dmvae"  # meta["kind"] of a DMVAE checkpoint


class DMVAEError(ValueError):
  """A DMVAE setting or checkpoint that cannot be used; the message says why."""


def module_name(kind: str, modality: str) -> str:
  """'enc', 'image' -> 'enc:image' (the key in the parameter dict)."""
  return f"{kind}:{modality}"


@dataclasses.dataclass(frozen=True)
class DMVAESpec:
  """Static structure: modalities and embedding dims, latent sizes, MLP architecture, kappa."""

  dims: tuple[tuple[str, int], ...]
  shared_dim: int = 32
  private_dim: int = 16
  arch: TranslatorArch = TranslatorArch(hidden=(256,), layer_norm=True)
  kappa: float = 0.0  # 0: kappa = each modality's embedding dim

  def __post_init__(self):
    if self.shared_dim <= 0 or self.private_dim < 0:
      raise DMVAEError(
        f"dmvae: shared_dim must be > 0 and private_dim >= 0, got {self.shared_dim}, "
        f"{self.private_dim}"
      )
    if self.kappa < 0:
      raise DMVAEError(f"dmvae.kappa must be >= 0 (0 = the embedding dim), got {self.kappa}")
    if SHARED in self.names:
      raise DMVAEError(
        f"a modality may not be called {SHARED!r}: the name is the shared latent's in routes"
      )

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(m for m, _ in self.dims)

  def dim(self, modality: str) -> int:
    for m, d in self.dims:
      if m == modality:
        return d
    raise GraphError(
      f"modality {modality!r} is not in the model (modalities: {', '.join(self.names)})"
    )

  def kappa_for(self, modality: str) -> float:
    return float(self.kappa) if self.kappa > 0 else float(self.dim(modality))

  def modules(self, modalities: Sequence[str] | None = None) -> list[str]:
    return [module_name(k, m) for m in (modalities or self.names) for k in (ENC, DEC)]

  def with_modalities(self, dims: Mapping[str, int]) -> "DMVAESpec":
    return dataclasses.replace(self, dims=tuple(dims.items()))

  def to_dict(self) -> dict:
    return {
      "dims": [list(d) for d in self.dims],
      "shared_dim": self.shared_dim,
      "private_dim": self.private_dim,
      "arch": self.arch.to_dict(),
      "kappa": self.kappa,
    }

  @classmethod
  def from_dict(cls, data: Mapping) -> "DMVAESpec":
    return cls(
      dims=tuple((str(m), int(d)) for m, d in data["dims"]),
      shared_dim=int(data["shared_dim"]),
      private_dim=int(data["private_dim"]),
      arch=TranslatorArch.from_dict(data["arch"]),
      kappa=float(data["kappa"]),
    )


def spec_from_config(config, dims: Mapping[str, int]) -> DMVAESpec:
  model, cfg = config.model, config.dmvae
  arch = TranslatorArch(
    hidden=tuple(model.hidden),
    activation=model.activation,
    layer_norm=bool(model.layer_norm),
    residual=False,
  )
  return DMVAESpec(
    dims=tuple(dims.items()),
    shared_dim=int(cfg.shared_dim),
    private_dim=int(cfg.private_dim),
    arch=arch,
    kappa=float(cfg.kappa),
  )


def _encoder(spec: DMVAESpec) -> Translator:
  return Translator(2 * (spec.private_dim + spec.shared_dim), spec.arch)


def _decoder(spec: DMVAESpec, modality: str) -> Translator:
  return Translator(spec.dim(modality), spec.arch)


def init_params(spec: DMVAESpec, seed: int, modalities: Sequence[str] | None = None) -> dict:
  """{'enc:m': params, 'dec:m': params} for `modalities` (default: all), from `seed`.

  Each module's key is folded from its name, so adding a modality leaves the others' draws
  unchanged."""
  out = {}
  base = jax.random.PRNGKey(int(seed))
  for m in modalities or spec.names:
    for kind in (ENC, DEC):
      name = module_name(kind, m)
      key = jax.random.fold_in(base, _stable_int(name))
      if kind == ENC:
        out[name] = _encoder(spec).init(key, jnp.zeros((1, spec.dim(m))))["params"]
      else:
        out[name] = _decoder(spec, m).init(key, jnp.zeros((1, spec.private_dim + spec.shared_dim)))[
          "params"
        ]
  return out


def _stable_int(name: str) -> int:
  return zlib.crc32(name.encode()) & 0x7FFFFFFF


def encode(spec: DMVAESpec, params: Mapping, modality: str, x: jax.Array):
  """x: [B, d_m] -> (mu_p, logvar_p) [B, private_dim] and (mu_s, logvar_s) [B, shared_dim]."""
  out = _encoder(spec).apply({"params": params[module_name(ENC, modality)]}, x)
  p, s = spec.private_dim, spec.shared_dim
  clip = lambda v: jnp.clip(v, -LOGVAR_CLIP, LOGVAR_CLIP)
  return (out[:, :p], clip(out[:, p : 2 * p])), (
    out[:, 2 * p : 2 * p + s],
    clip(out[:, 2 * p + s :]),
  )


def decode(
  spec: DMVAESpec, params: Mapping, modality: str, z_private: jax.Array, z_shared: jax.Array
):
  """(z_p [B, private_dim], z_s [B, shared_dim]) -> [B, d_m], L2-normalised (the vMF mean
  direction)."""
  y = _decoder(spec, modality).apply(
    {"params": params[module_name(DEC, modality)]}, jnp.concatenate([z_private, z_shared], axis=-1)
  )
  return y / jnp.sqrt(jnp.maximum(jnp.sum(y * y, axis=-1, keepdims=True), 1e-12))


def product_of_experts(
  mu: jax.Array, logvar: jax.Array, mask: jax.Array
) -> tuple[jax.Array, jax.Array]:
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
  """kappa * (1 - cos(x_hat, x)): the vMF negative log-likelihood up to a constant. [B, d] ->
  [B]."""
  x = x / jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-12))
  return kappa * (1.0 - jnp.sum(x_hat * x, axis=-1))


def _sample(key, mu, logvar):
  return mu + jnp.exp(0.5 * logvar) * jax.random.normal(key, mu.shape, mu.dtype)


def row_losses(
  spec: DMVAESpec,
  params: Mapping,
  xs: Mapping[str, jax.Array],
  present: Mapping[str, jax.Array],
  key: jax.Array,
  cross_weight: float = 1.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
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
  mask = jnp.stack([present[m].astype(jnp.float32) for m in names])  # [M, B]
  z_private = {m: _sample(keys[i], *enc[m][0]) for i, m in enumerate(names)}
  kl_private = sum(mask[i] * gaussian_kl(*enc[m][0]) for i, m in enumerate(names))
  mu_s = jnp.stack([enc[m][1][0] for m in names])  # [M, B, S]
  logvar_s = jnp.stack([enc[m][1][1] for m in names])
  # shared posteriors: row 0 the joint product of experts, row 1 + i modality i's own (with the
  # prior)
  joint_mu, joint_logvar = product_of_experts(mu_s, logvar_s, mask)
  own_mu, own_logvar = jax.vmap(
    lambda mu, lv, mk: product_of_experts(mu[None], lv[None], mk[None])
  )(mu_s, logvar_s, mask)
  post_mu = jnp.concatenate([joint_mu[None], own_mu])  # [1 + M, B, S]
  post_logvar = jnp.concatenate([joint_logvar[None], own_logvar])
  z_shared = _sample(keys[-1], post_mu, post_logvar)
  kl_shared = gaussian_kl(post_mu, post_logvar)  # [1 + M, B]
  # nll[i, j]: modality i decoded from shared latent j (0 = joint, 1 + k = modality k's own)
  nll = []
  for i, m in enumerate(names):
    zp = jnp.broadcast_to(z_private[m], (n + 1,) + z_private[m].shape)
    y = decode(
      spec, params, m, zp.reshape(-1, zp.shape[-1]), z_shared.reshape(-1, z_shared.shape[-1])
    )
    x = jnp.broadcast_to(xs[m], (n + 1,) + xs[m].shape).reshape(-1, xs[m].shape[-1])
    nll.append(mask[i] * vmf_nll(y, x, spec.kappa_for(m)).reshape(n + 1, -1))
  nll = jnp.stack(nll)  # [M, 1 + M, B]
  n_present = jnp.sum(mask, axis=0)
  # the joint ELBO of a row with one modality equals its unimodal one: counted once
  joint = (n_present >= 2).astype(jnp.float32) if n > 1 else jnp.zeros_like(n_present)
  own = nll[jnp.arange(n), 1 + jnp.arange(n)]  # [M, B] self terms
  from_source = jnp.sum(nll[:, 1:], axis=0)  # [M, B] all targets
  recon = joint * jnp.sum(nll[:, 0], axis=0) + jnp.sum(mask * own, axis=0)
  cross = jnp.sum(mask * (from_source - own), axis=0)
  kl = joint * (kl_private + kl_shared[0]) + jnp.sum(
    mask * (kl_private[None] + kl_shared[1:]), axis=0
  )
  loss = recon + cross_weight * cross + kl
  return loss, {"recon": recon, "cross": cross, "kl": kl}
