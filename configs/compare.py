"""Every strategy (graph, pivot, pairwise, cmcr, dmvae: compare.strategies) with post-hoc centering
and the linear baselines (ridge, CCA), 3 seeds, on the embedded digits set: the comparison table of
zero-shot image<->audio retrieval (docs/strategies.md). Run:

  python launch/compare.py --config=configs/compare.py --workdir=/tmp/gb_compare

Other data: --config.data.path=FILE.npz. Fewer strategies: --config.compare.strategies=graph,pivot
Shrunk for tests: --config=configs/compare.py:tiny. Every field: docs/config.md.
"""

import ml_collections

from graphbridge import defaults


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = defaults.base_config()
  c.data.name = "digits"
  if arg == "tiny":
    defaults.shrink_for_tests(c)
  elif arg not in (None, ""):
    raise ValueError(f"configs/compare.py: unknown variant {arg!r} (choices: 'tiny')")
  return c
