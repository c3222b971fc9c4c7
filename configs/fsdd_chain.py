"""Translator graph on `fsdd_chain`: 4 audio feature views of the FSDD recordings, paired along a
chain.

Views mfcc, mel, spec, wave of the same 3,000 recordings, instance-level pairs on the chain
mfcc-mel-spec-wave, each edge on its own disjoint slice of 300 train recordings; FSDD's split (takes
0-4 test). See graphbridge/datasets/fsdd_chain/README.md (CC BY-SA 4.0). Default training settings:
this file differs from configs/digits.py only in the data. Run:

  python launch/train.py --config=configs/fsdd_chain.py --workdir=/tmp/gb

Shrunk for tests (a few seconds): --config=configs/fsdd_chain.py:tiny
Any field can be overridden from flags, e.g. --config.train.steps=1000 --config.strategy=pivot
--config.loss.cycle_weights='(0.5,0.25)'. Every field, its default and choices: docs/config.md.
"""

import ml_collections

from graphbridge import defaults


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = defaults.base_config()
  c.data.name = "fsdd_chain"
  if arg == "tiny":
    defaults.shrink_for_tests(c)
  elif arg not in (None, ""):
    raise ValueError(f"configs/fsdd_chain.py: unknown variant {arg!r} (choices: 'tiny')")
  return c
