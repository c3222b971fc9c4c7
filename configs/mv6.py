"""Translator graph on `mv6`: 6 feature views of the 8x8 digit images, paired only along a tree.

Views pix, prof, dct, hog, mom, polar (dims 10..144) of the same 1,797 images; pairs are
instance-level (one image's two views) on 5 tree edges pix-dct, dct-hog, hog-polar, dct-prof,
prof-mom, each on its own disjoint slice of 120 train images, so most train rows are unpaired and 10
of the 15 view pairs are never paired (2-4 hops). See graphbridge/datasets/mv6/README.md. Default
training settings: this file differs from configs/digits.py only in the data. Run:

  python launch/train.py --config=configs/mv6.py --workdir=/tmp/gb

Shrunk for tests (a few seconds): --config=configs/mv6.py:tiny Any field can be overridden from
flags, e.g. --config.train.steps=1000 --config.strategy=pivot
--config.loss.cycle_weights='(0.5,0.25)'. Every field, its default and choices: docs/config.md.
"""

import ml_collections

from graphbridge import defaults


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = defaults.base_config()
  c.data.name = "mv6"
  if arg == "tiny":
    defaults.shrink_for_tests(c)
  elif arg not in (None, ""):
    raise ValueError(f"configs/mv6.py: unknown variant {arg!r} (choices: 'tiny')")
  return c
