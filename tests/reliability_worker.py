"""Subprocess worker for tests/test_reliability.py: train a tiny graph into a workdir.

  python tests/reliability_worker.py DATA.npz WORKDIR STEPS

Fault injection through the environment (see train.MetricWriter / checkpoint.Checkpoints.save):
GRAPHBRIDGE_KILL_AFTER_STEP=N kills the process with SIGKILL after logging step N;
GRAPHBRIDGE_KILL_DURING_SAVE=N kills it while the checkpoint of step N is being written.
"""

import os
import sys

os.environ.setdefault(
  "XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from graphbridge.data import readers as readers_lib
from graphbridge.training import trainer as trainer_lib
from tests.conftest import load_config_module  # noqa: E402


def config_for(steps: int):
  c = load_config_module("configs/npz.py").get_config("tiny")
  c.train.steps = steps
  c.train.log_every = 5
  c.train.checkpoint_every = 10
  c.train.keep_checkpoints = 3
  c.model.hidden = (16,)
  c.data.batch_size = 16
  return c


if __name__ == "__main__":
  data_path, workdir, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
  trainer_lib.train(
    config_for(steps),
    workdir,
    dataset=readers_lib.load(data_path),
    log=lambda m: print(m, flush=True),
  )
  print("finished", flush=True)
