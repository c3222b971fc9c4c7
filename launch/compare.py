"""Compare every strategy on one data set (zero-shot retrieval table and plot).

python launch/compare.py --config=configs/compare.py --workdir=/tmp/gb_compare
"""

from graphbridge.cli.compare import main

if __name__ == "__main__":
  main()
