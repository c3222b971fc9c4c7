"""The registry of strategies: the field's methods, selected by name (config.strategy).

Built in, each one module here (imported the first time its name is used):

* graph     translators on the edges of the data's pair graph, cycles, pseudo-pairs (graph.py)
* pivot     ImageBind / VIP-ANT binding into one pivot modality (pivot.py)
* pairwise  CLIP-style projection of every modality into one shared space (pairwise.py)
* cmcr      C-MCR: two contrastive spaces connected through a common one (cmcr.py)
* dmvae     the private-shared disentangled multimodal VAE, not a translator graph (dmvae/)

A strategy of your own is `register(MyStrategy())` from your code, or a config naming its module
(`strategy="my_pkg.my_strategy"`, whose STRATEGY it is); docs/extending.md.
"""

from __future__ import annotations

from graphbridge.core.errors import ConfigError
from graphbridge.core.registry import Registry
from graphbridge.strategies.base import Strategy
from graphbridge.training import trained as trained_lib

BUILTIN = ("graph", "pivot", "pairwise", "cmcr", "dmvae")


def _check(item) -> None:
  if not isinstance(item, Strategy):
    raise TypeError(f"a strategy must be a strategies.Strategy, got {type(item).__name__}")


REGISTRY = Registry(
  "strategy",
  ConfigError,
  attr="STRATEGY",
  builtins={name: f"graphbridge.strategies.{name}" for name in BUILTIN},
  check=_check,
)
register, unregister, names, get = (
  REGISTRY.register,
  REGISTRY.unregister,
  REGISTRY.names,
  REGISTRY.get,
)


def for_workdir(workdir: str) -> Strategy:
  """The strategy that trained the run in `workdir`, read from its newest checkpoint's meta."""
  return get(trained_lib.strategy_name(trained_lib.workdir_meta(workdir)))
