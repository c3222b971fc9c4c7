"""Graft audio onto a trained image+text graph of the embedded digits set. Two runs:

  python launch/graft.py --base --config=configs/graft_audio.py --workdir=/tmp/gb_base
  python launch/graft.py --from_workdir=/tmp/gb_base --config=configs/graft_audio.py
  --workdir=/tmp/gb_graft

The first trains image<->text only (the data without graft.modality); the second restores those
edges frozen, adds audio->text and text->audio, trains only them and reports audio<->image
retrieval, zero-shot through the frozen text->image and image->text edges. The new edges use the
old run's translator architecture. See docs/grafting.md.

Shrunk for tests (a few seconds): --config=configs/graft_audio.py:tiny
Other data: --config.data.path=FILE.npz --config.graft.modality=depth
--config.graft.connect_to=image,text
"""

import ml_collections

from graphbridge import defaults


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = defaults.base_config()
  c.data.name = "digits"
  c.graft = ml_collections.ConfigDict()
  c.graft.modality = "audio"  # the node to add (must be in the data, not in the old graph)
  c.graft.connect_to = "text"  # old nodes to join it to, both directions ("" = every old node the
  # data pairs it with)
  c.graft.base_modalities = ""  # --base only: "" = every modality of the data but graft.modality
  # zero-shot audio<->image through the frozen edges, translated all the way into the gallery's
  # space
  # (the report's default route meets in text: audio->text<-image); dropped for --base
  c.eval.paths = "audio->text->image,image->text->audio"
  if arg == "tiny":
    defaults.shrink_for_tests(c)
  elif arg not in (None, ""):
    raise ValueError(f"configs/graft_audio.py: unknown variant {arg!r} (choices: 'tiny')")
  return c
