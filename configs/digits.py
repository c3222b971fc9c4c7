"""Translator graph on the embedded tri-modal digits set (image / audio / text).

Pairs are class-level and only image<->text and audio<->text, so image<->audio retrieval is
zero-shot through the text pivot. Run:

  python launch/train.py --config=configs/digits.py --workdir=/tmp/gb

Shrunk for tests (a few seconds): --config=configs/digits.py:tiny
Any field can be overridden from flags, e.g. --config.train.steps=1000 --config.strategy=pivot
--config.loss.cycle_weights='(0.5,0.25)'. Every field, its default and choices: docs/config.md.
"""

import ml_collections

from graphbridge import defaults


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = defaults.base_config()
  c.data.name = "digits"
  if arg == "tiny":
    defaults.shrink_for_tests(c)
  elif arg not in (None, ""):
    raise ValueError(f"configs/digits.py: unknown variant {arg!r} (choices: 'tiny')")
  return c
