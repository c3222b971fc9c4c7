"""Bring your own embeddings: train and evaluate on any file in graphbridge's data format.

The file (a .npz, or a folder of .npy files) holds per modality m: m_emb [N_m, d_m] (required),
m_label, m_id, m_train, m_test (optional), and pairs_a__b [P, 2] for every pair set; see
docs/data.md. Graph nodes are the modalities in the file; edges default to both
directions of every pair set. Run:

  python launch/train.py --config=configs/npz.py --config.data.path=/data/mine.npz
  --workdir=/tmp/gb_mine
  python launch/evaluate.py --workdir=/tmp/gb_mine --paths='image->text->audio'   # report again,
  other routes

Shrunk for tests (a few seconds): --config=configs/npz.py:tiny
Any field can be overridden from flags, e.g. --config.strategy=pivot --config.train.steps=2000
--config.graph.extra_edges='image->audio' --config.eval.paths='image->text->audio'.
Every field, its default and choices: docs/config.md.
"""

import ml_collections

from graphbridge import defaults

# data.path is required. Runs read `data.path or data.name`, so with no path the name is what gets
# opened, and the error names the missing flag ("data path '<no data: ...>' does not exist").
MISSING_PATH = (
  "<no data: add --config.data.path=FILE.npz, your embeddings in the format of docs/data.md>"
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = defaults.base_config()
  c.data.name = MISSING_PATH
  c.data.path = ""
  if arg == "tiny":
    defaults.shrink_for_tests(c)
  elif arg not in (None, ""):
    raise ValueError(f"configs/npz.py: unknown variant {arg!r} (choices: 'tiny')")
  return c
