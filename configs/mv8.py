"""Translator graph on `mv8`: 8 feature views of the 8x8 digit images on a deeper tree.

The 6 views of mv6 plus lbp (local binary patterns) and rff (random Fourier features of the pixels),
paired along 7 tree edges (the mv6 tree plus polar-lbp, lbp-rff), 120 disjoint train images per
edge; never-paired view pairs are 2-6 hops apart. See graphbridge/datasets/mv8/README.md. Default
training settings: this file differs from configs/digits.py only in the data. Run:

  python launch/train.py --config=configs/mv8.py --workdir=/tmp/gb

Shrunk for tests (a few seconds): --config=configs/mv8.py:tiny Any field can be overridden from
flags, e.g. --config.train.steps=1000 --config.strategy=pivot
--config.loss.cycle_weights='(0.5,0.25)'. Every field, its default and choices: docs/config.md.
"""

import ml_collections

from graphbridge import defaults


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = defaults.base_config()
  c.data.name = "mv8"
  if arg == "tiny":
    defaults.shrink_for_tests(c)
  elif arg not in (None, ""):
    raise ValueError(f"configs/mv8.py: unknown variant {arg!r} (choices: 'tiny')")
  return c
