"""DMVAE (private-shared disentangled multimodal VAE) on the embedded tri-modal digits set.

Pairs are class-level and only image<->text and audio<->text, so image<->audio retrieval is
zero-shot: in the shared latent (route image->shared<-audio) and by translation
(image->shared->audio). Run:

  python launch/train.py --config=configs/dmvae.py --workdir=/tmp/gb_dmvae

Shrunk for tests (a few seconds): --config=configs/dmvae.py:tiny. Model and loss:
graphbridge/strategies/dmvae/ and docs/dmvae.md; settings under `dmvae` in docs/config.md, e.g.
--config.dmvae.shared_dim=64 --config.dmvae.kappa=100.
"""

import ml_collections

from graphbridge import defaults


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = defaults.base_config()
  c.data.name = "digits"
  c.strategy = "dmvae"
  if arg == "tiny":
    defaults.shrink_for_tests(c)
    c.model.hidden = (
      64,
    )  # the VAE learns its shared space more slowly than translators learn a map
    c.data.batch_size = 64
    c.optim.lr = 1e-2
  elif arg not in (None, ""):
    raise ValueError(f"configs/dmvae.py: unknown variant {arg!r} (choices: 'tiny')")
  return c
