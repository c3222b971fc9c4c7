"""Graft a new modality onto a trained graph: old edges frozen and copied byte for byte, \
only the new edges trained, then the report. See graphbridge/cli/graft.py and docs/grafting.md.

  python launch/graft.py --from_workdir=/tmp/gb_base --config=configs/graft_audio.py
  --workdir=/tmp/gb_graft
"""

from graphbridge.cli.graft import main

if __name__ == "__main__":
  main()
