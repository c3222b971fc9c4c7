"""DMVAE (Lee & Pavlovic 2021) as a registered strategy. The model, its step, checkpoints, aligner
and grafting live in graphbridge/dmvae.py; it is not a translator graph, so it has no stages and
trains and reports itself (Strategy.run). See docs/dmvae.md."""

from __future__ import annotations

from graphbridge.config_check import ConfigError
from graphbridge.strategies.base import Strategy


def stages(config, dataset):
  raise ConfigError("strategy 'dmvae' trains per-modality encoders and decoders, not translator stages "
                    "(graphbridge/dmvae.py; strategies.run_strategy runs it)")


def run(config, dataset, workdir, log=print):
  from graphbridge import dmvae
  return dmvae.run_strategy(config, dataset, workdir, log=log)


def describe(config, dataset) -> list[str]:
  from graphbridge import dmvae
  return dmvae.describe(config, dataset)


STRATEGY = Strategy("dmvae", stages, run=run, describe=describe,
                    summary="private-shared multimodal VAE: product-of-experts shared latent, cross-reconstruction")
