"""Your own embeddings: write a .npz in graphbridge's format, train on it, read the report.

  python examples/own_data.py [ROOT]   # ROOT: where the file and the workdir go (/tmp/gb_examples)

Small settings (the tiny variant of configs/npz.py trained for 300 steps: seconds on a CPU). For
the real run use the config "npz" and no overrides, or the command line:
  python launch/train.py --config=configs/npz.py --config.data.path=FILE --workdir=DIR
"""

# %% Where things go
import json
import os
import sys

import numpy as np

import graphbridge

root = sys.argv[1] if len(sys.argv) > 1 else "/tmp/gb_examples"
os.makedirs(root, exist_ok=True)

# %% Three modalities of 600 things, as three encoders would see them (put your embeddings here).
# Every row has an id (the thing it shows) and a split; image-text and audio-text pairs are known
# for a few train rows, image-audio pairs for none.
rng, n = np.random.default_rng(0), 600
z, ids, test = rng.normal(size=(n, 16)), np.arange(n), np.arange(n) % 5 == 0
arrays = {}
for m, d in {"image": 32, "text": 24, "audio": 20}.items():
  x = z @ rng.normal(size=(16, d)) + 0.5 * rng.normal(size=(n, d))
  arrays |= {f"{m}_emb": x, f"{m}_id": ids, f"{m}_train": ~test, f"{m}_test": test}
arrays["pairs_image__text"] = np.stack([ids[~test][:150]] * 2, 1)  # (image row, text row)
arrays["pairs_audio__text"] = np.stack([ids[~test][150:300]] * 2, 1)
path = os.path.join(root, "mine.npz")
np.savez(path, **arrays)

# %% Train and evaluate: the graph's nodes are the file's modalities, its edges both directions of
# every pair set. The report (report.md, report.json, figures) goes to the workdir.
run = graphbridge.fit(
  "npz:tiny", os.path.join(root, "own_data"), plots=False, **{"data.path": path}
)
print(run)

# %% Retrieval between never-paired modalities (2+ hops): instance level, relevant = same id
with open(os.path.join(run.workdir, "report.json")) as f:
  report = json.load(f)
for row in report["rows"]:
  if (row["hops"] or 0) >= 2:
    print(
      f"{row['query']:>5} -> {row['gallery']:<5} {row['route']:<40} {row['level']} "
      f"R@1 {row['R@1']:.3f} (chance {row['chance_R@1']:.3f})"
    )
