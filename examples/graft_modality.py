"""Graft a modality onto a trained graph: audio onto an image+text run, training only the new
edges (audio->text, text->audio); the old edges stay frozen, byte for byte.

  python examples/graft_modality.py [ROOT]   # ROOT: where the workdirs go (/tmp/gb_examples)

Tiny settings (seconds). For the real run use the config "graft_audio" instead of
"graft_audio:tiny" (docs/grafting.md has the command-line form and the measured results).
"""

# %%
import os
import sys

import jax
import numpy as np

import graphbridge
from graphbridge.runs import graft

root = sys.argv[1] if len(sys.argv) > 1 else "/tmp/gb_examples"
config = graphbridge.config("graft_audio:tiny")  # graft.modality="audio", graft.connect_to="text"

# %% The run to graft onto: the digits data without audio (image and text only)
base_dir = os.path.join(root, "graft_base")
graft.train_base(config, base_dir, plots=False, log=lambda msg: None)
base = graphbridge.load(base_dir)
print(base)

# %% Graft audio onto text in a new workdir; the base run is only read
grafted = base.graft(config, os.path.join(root, "graft_audio"), log=lambda msg: None)
print(grafted)

# %% The old edges are the base run's, unchanged
for edge, params in base.edge_params().items():
  same = jax.tree.map(np.array_equal, params, grafted.edge_params(edge))
  print(f"{edge}: frozen, identical: {all(jax.tree.leaves(same))}")

# %% Audio is now searchable against images it was never paired with, through the frozen edges
print("audio -> image scored along", grafted.default_route("audio", "image"))
scores, idx = grafted.search(None, "audio", "image", k=5)  # the run's own test rows, as the report
print("top-5 image rows of the first audio query:", idx[0])
