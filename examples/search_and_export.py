"""Search a gallery as the report ranks it, build an index once for many queries, and export the
translators for use without JAX (NumPy here; docs/api.md loads them into PyTorch).

  python examples/search_and_export.py [ROOT]   # ROOT: where the workdirs go (/tmp/gb_examples)

Tiny settings (seconds). For the real run use "digits" instead of "digits:tiny".
"""

# %%
import os
import sys

import numpy as np

import graphbridge
from graphbridge.model import export

root = sys.argv[1] if len(sys.argv) > 1 else "/tmp/gb_examples"
run = graphbridge.fit("digits:tiny", os.path.join(root, "digits"), plots=False)

# %% Raw embeddings in, the k best gallery rows out, along the report's route (image->text<-audio)
ds = run.dataset()
images, audio = ds.modalities["image"].emb[:8], ds.modalities["audio"].emb
scores, idx = run.search(images, "image", "audio", k=5, gallery=audio)  # [8, 5] each, best first
print("route:", run.default_route("image", "audio"))
print("best audio rows of image 0:", idx[0], np.round(scores[0], 3))

# %% Many query batches against one gallery: encode it once
index = run.index(audio, "audio", "image")
scores_again, idx_again = index.search(images, k=5)
assert (idx_again == idx).all()

# %% Export every translator as arrays + JSON; apply them with NumPy alone
files = run.export(os.path.join(root, "export"))
print("exported:", files)
exported = export.load(os.path.join(root, "export"))
z_numpy = exported.apply(images, "image->text")
z_jax = run.translate(images, "image->text")
print("NumPy export vs run.translate, max difference:", float(np.abs(z_numpy - z_jax).max()))
