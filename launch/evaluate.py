"""Report on a trained run: retrieval, modality gap, silhouette, reconstruction, plots. See
graphbridge/cli/evaluate.py.

  python launch/evaluate.py --workdir=/tmp/gb [--data=FILE.npz] [--paths=image->text->audio]
  [--out=DIR]
"""

from graphbridge.cli.evaluate import main

if __name__ == "__main__":
  main()
