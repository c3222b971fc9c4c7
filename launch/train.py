"""Train a translator graph, evaluate it and write the report. See graphbridge/cli/train.py.

python launch/train.py --config=configs/digits.py --workdir=/tmp/gb
"""

from graphbridge.cli.train import main

if __name__ == "__main__":
  main()
