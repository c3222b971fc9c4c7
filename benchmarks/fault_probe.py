"""Probe graphbridge as a careless or hostile user would: damaged checkpoints, changed configs on
resume, bad config values, broken data files, a locked workdir, a full disk; and (round3) the
fallback line of every entry point, the manifest's timing, the lock's file deleted, Ctrl-C, odd
workdirs and flags, the Python API's arguments, labels beyond int32.

  PYTHONPATH=. python benchmarks/fault_probe.py [--out=benchmarks/results/fault_probe.json] [-v]

Each case is classified:
  handled  the expected error class with the expected words in its message (or, where continuing is
           right, the run continued correctly), and nothing saved was lost or changed;
  weak     a user-facing error (one line in the CLIs, exit 2) but not the expected class or words;
  bad      silently accepted, saved files lost or changed, or an internal error (raw traceback).
Prints one line per case and the totals: tried / handled / weak / bad.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import hashlib
import io
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile

os.environ.setdefault(
  "XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from graphbridge.core import errors
from graphbridge.training import checkpoint as checkpoint_lib
from graphbridge.runs import validate as validate_lib
from graphbridge.data import readers as readers_lib
from graphbridge.training import trained as trained_lib
from graphbridge.training import trainer as trainer_lib
from graphbridge.training import lock as lock_lib
from graphbridge.cli import common  # noqa: E402
from tests.conftest import make_tri_modal_arrays  # noqa: E402
from tests.reliability_worker import config_for  # noqa: E402
from graphbridge.strategies import registry as strategies
from graphbridge import api  # noqa: E402
from graphbridge.evaluation import report as report_lib  # noqa: E402
from graphbridge.runs import dry_run as dry_run_lib  # noqa: E402
from graphbridge.runs import evaluate as evaluate_run  # noqa: E402
from graphbridge.runs import experiment  # noqa: E402
from graphbridge.runs import graft as graft_run  # noqa: E402
from tests.conftest import load_config_module  # noqa: E402
from tests.test_querybank import _hub_data, _Identity  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS: list[dict] = []
VERBOSE = False


def quiet(_):
  pass


def digest(root: str) -> dict[str, str]:
  out = {}
  for path in sorted(glob.glob(os.path.join(root, "**", "*"), recursive=True)):
    if os.path.isfile(path) and not path.endswith(lock_lib.LOCK_FILE):
      with open(path, "rb") as f:
        out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
  return out


def user_error(exc: BaseException) -> bool:
  return any(isinstance(exc, cls) for cls, _ in common._user_errors())


def record(name: str, status: str, detail: str) -> None:
  RESULTS.append({"case": name, "status": status, "detail": detail[:300]})
  print(f"{status:8s} {name}: {detail.splitlines()[0][:160] if detail else ''}", flush=True)


def expect_error(name, fn, cls, pattern, protect: str | None = None):
  """handled: cls with `pattern` in the message and `protect` unchanged."""
  before = digest(protect) if protect else None
  try:
    fn()
  except Exception as exc:  # noqa: BLE001
    changed = protect is not None and digest(protect) != before
    text = f"{type(exc).__name__}: {exc}"
    if changed:
      record(name, "bad", "saved files changed: " + text)
    elif isinstance(exc, cls) and re.search(pattern, str(exc)):
      record(name, "handled", text)
    elif user_error(exc):
      record(name, "weak", f"expected {cls.__name__} /{pattern}/, got " + text)
    else:
      record(name, "bad", "internal error: " + text)
    return
  changed = protect is not None and digest(protect) != before
  record(name, "bad", "accepted silently" + (" and saved files changed" if changed else ""))


def expect_ok(name, fn, check):
  """handled: fn() returns and check(result) -> (True, detail)."""
  try:
    result = fn()
  except Exception as exc:  # noqa: BLE001
    record(name, "weak" if user_error(exc) else "bad", f"refused: {type(exc).__name__}: {exc}")
    return
  ok, detail = check(result)
  record(name, "handled" if ok else "bad", detail)


# ---- fixtures ------------------------------------------------------------------------------------


def small_config(steps=20):
  c = config_for(steps)
  c.train.log_every = 5
  c.train.print_every = 10
  c.train.checkpoint_every = 10
  c.train.tensorboard = False
  return c


def flip(path, offset=None):
  with open(path, "r+b") as f:
    data = bytearray(f.read())
    i = len(data) // 2 if offset is None else min(offset, len(data) - 1)
    data[i] ^= 0x10
    f.seek(0)
    f.write(data)


def item_files(workdir, step, item):
  return sorted(
    f
    for f in glob.glob(
      os.path.join(workdir, "checkpoints", str(step), item, "**", "*"), recursive=True
    )
    if os.path.isfile(f)
  )


def main() -> None:
  global VERBOSE
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", default="")
  parser.add_argument("-v", action="store_true")
  args = parser.parse_args()
  VERBOSE = args.v
  t0 = time.perf_counter()
  tmp = tempfile.mkdtemp(prefix="gb_probe_")
  data_path = os.path.join(tmp, "tri.npz")
  arrays = make_tri_modal_arrays()
  np.savez(data_path, **arrays)
  dataset = readers_lib.load(data_path)
  finished = os.path.join(tmp, "finished")
  finished_config = small_config()
  finished_config.data.path = data_path  # the Python API's search reads the run's data
  trainer_lib.train(finished_config, finished, dataset=dataset, log=quiet)
  counter = [0]

  def copy() -> str:
    counter[0] += 1
    target = os.path.join(tmp, f"case{counter[0]}")
    shutil.copytree(finished, target)
    return target

  items = [
    "edge.image.text",
    "edge.text.image",
    "edge.audio.text",
    "edge.text.audio",
    "train",
    "meta",
  ]

  # -- checkpoint integrity --
  for item in items:
    w = copy()
    flip(max(item_files(w, 20, item), key=os.path.getsize))
    if item == "train":  # evaluation reads only edges and meta; training reads train
      expect_ok(
        f"flipped bit in {item}: resume falls back to 10, damaged step kept",
        lambda w=w: _resume(w, dataset),
        _fell_back,
      )
    else:
      expect_error(
        f"flipped bit in {item}: load step 20",
        lambda w=w: trained_lib.load_trained(w, step=20),
        errors.CheckpointCorruptError,
        rf"step 20: item '{item}' is corrupt",
        protect=w,
      )
      expect_ok(
        f"flipped bit in {item}: default load falls back",
        lambda w=w: trained_lib.load_trained(w),
        lambda r: (r.step == 10, f"step {r.step}"),
      )
  for item in items:
    w = copy()
    victim = max(item_files(w, 20, item), key=os.path.getsize)
    with open(victim, "r+b") as f:
      f.truncate(os.path.getsize(victim) // 2)
    expect_ok(
      f"truncated {item}: resume falls back to 10, damaged step kept",
      lambda w=w: _resume(w, dataset),
      lambda r: _fell_back(r),
    )
  for item in items:
    w = copy()
    shutil.rmtree(os.path.join(w, "checkpoints", "20", item))
    expect_error(
      f"missing {item}: load step 20",
      lambda w=w: trained_lib.load_trained(w, step=20),
      errors.CheckpointCorruptError,
      r"step 20",
      protect=w,
    )
  w = copy()
  for step in (10, 20):  # a workdir of the format before the manifest was part of the write
    os.remove(os.path.join(w, "checkpoints", str(step), checkpoint_lib.MANIFEST))
    _set_format(w, step, 1)
  expect_ok(
    "manifest removed from steps of format 1 (before manifests): loads unverified",
    lambda: trained_lib.load_trained(w, log=quiet),
    lambda r: (r.step == 20, f"step {r.step}"),
  )
  w = copy()
  with open(os.path.join(w, "checkpoints", "20", checkpoint_lib.MANIFEST), "w") as f:
    f.write("{not json")
  expect_error(
    "manifest corrupt",
    lambda: trained_lib.load_trained(w, step=20),
    errors.CheckpointCorruptError,
    "manifest",
    protect=w,
  )
  w = copy()
  for step in (10, 20):
    flip(max(item_files(w, step, "edge.image.text"), key=os.path.getsize))
  expect_error(
    "every step corrupt: load",
    lambda: trained_lib.load_trained(w),
    errors.CheckpointError,
    "no usable checkpoint",
    protect=w,
  )
  w = copy()
  flip(os.path.join(w, "checkpoints", "20", "meta", "metadata"), offset=3)
  expect_error(
    "flipped bit in meta JSON (still parses?)",
    lambda: trained_lib.load_trained(w, step=20),
    errors.CheckpointCorruptError,
    "corrupt",
    protect=w,
  )
  expect_error(
    "evaluate a workdir without checkpoints",
    lambda: trained_lib.load_trained(tmp),
    errors.CheckpointError,
    "no checkpoints",
    protect=None,
  )

  # -- run identity --
  changes = {
    "loss.cycle_starts=image": lambda c: setattr(c.loss, "cycle_starts", "image"),
    "loss.supervised_edges=image->text": lambda c: setattr(
      c.loss, "supervised_edges", "image->text"
    ),
    "optim.lr=0.01": lambda c: setattr(c.optim, "lr", 0.01),
    "optim.name=adamw": lambda c: setattr(c.optim, "name", "adamw"),
    "seed=7": lambda c: setattr(c, "seed", 7),
    "model.hidden=(32,)": lambda c: setattr(c.model, "hidden", (32,)),
    "model.activation=relu": lambda c: setattr(c.model, "activation", "relu"),
    "data.batch_size=8": lambda c: setattr(c.data, "batch_size", 8),
    "loss.temperature=0.1": lambda c: setattr(c.loss, "temperature", 0.1),
    "loss.edge_cos=0": lambda c: setattr(c.loss, "edge_cos", 0.0),
    "loss.cycle_weights=(0.2,0.1)": lambda c: setattr(c.loss, "cycle_weights", (0.2, 0.1)),
    "finetune.steps=5": lambda c: setattr(c.finetune, "steps", 5),
    "train.validate_every=5": lambda c: setattr(c.train, "validate_every", 5),
    "train.steps=10 (shorter)": lambda c: setattr(c.train, "steps", 10),
    "graph.extra_edges=image->audio": lambda c: setattr(c.graph, "extra_edges", "image->audio"),
    "strategy=pivot": lambda c: setattr(c, "strategy", "pivot"),
    "model.compute_dtype=bfloat16": lambda c: setattr(c.model, "compute_dtype", "bfloat16"),
  }
  for label, change in changes.items():
    w = copy()
    config = small_config()
    config.unlock()
    change(config)
    expect_error(
      f"resume with {label}",
      lambda w=w, config=config: _train_or_strategy(config, w, dataset),
      errors.CheckpointMismatchError,
      r"another run|another graph|architecture",
      protect=w,
    )
  other = dict(arrays)
  other["image_emb"] = arrays["image_emb"][::-1].copy()
  for label, arr in {
    "other rows, same dims": other,
    "other split": {
      **arrays,
      "image_test": ~arrays["image_test"],
      "image_train": ~arrays["image_train"],
    },
  }.items():
    w = copy()
    ds = readers_lib.from_arrays(arr, source="other.npz")
    expect_error(
      f"resume with other data ({label})",
      lambda w=w, ds=ds: trainer_lib.train(small_config(), w, dataset=ds, log=quiet),
      errors.RunMismatchError,
      r"data: other.npz differs",
      protect=w,
    )
  safe = {
    "train.steps=30": lambda c: None,
    "print_every=5": lambda c: setattr(c.train, "print_every", 5),
    "log_every=2": lambda c: setattr(c.train, "log_every", 2),
    "eval.ks=(1,3)": lambda c: setattr(c.eval, "ks", (1, 3)),
    "keep_checkpoints=5": lambda c: setattr(c.train, "keep_checkpoints", 5),
  }
  for label, change in safe.items():
    w = copy()
    config = small_config(30)
    change(config)
    expect_ok(
      f"resume with safe change {label}",
      lambda w=w, config=config: trainer_lib.train(config, w, dataset=dataset, log=quiet),
      lambda r: (r.steps_run == 10, f"{r.steps_run} steps run"),
    )
  w = copy()
  config = small_config(30)
  config.optim.lr = 0.001
  config.train.allow_resume_changes = True
  expect_ok(
    "resume with lr change and allow_resume_changes",
    lambda: trainer_lib.train(config, w, dataset=dataset, log=quiet),
    lambda r: (
      trained_lib.load_trained(w).meta.get("resume_changes")
      == [{"step": 20, "changes": ["optim.lr: 0.002 -> 0.001"]}],
      "recorded in meta",
    ),
  )
  w = copy()
  expect_ok(
    "rerun a finished run",
    lambda: trainer_lib.train(small_config(), w, dataset=dataset, log=quiet),
    lambda r: (
      r.steps_run == 0
      and digest(os.path.join(w, "checkpoints")) == digest(os.path.join(finished, "checkpoints")),
      "0 steps, checkpoints unchanged",
    ),
  )

  # -- lock --
  w = copy()
  hold = subprocess.Popen(
    [
      sys.executable,
      "-c",
      (
        f"import sys, time; sys.path.insert(0, {ROOT!r}); "
        "from graphbridge.training import lock as lock_lib; "
        f"lock_lib.WorkdirLock({w!r}, 'holder').__enter__(); print('held', flush=True); "
        "time.sleep(60)"
      ),
    ],
    stdout=subprocess.PIPE,
    text=True,
  )
  hold.stdout.readline()
  expect_error(
    "second run in a locked workdir",
    lambda: trainer_lib.train(small_config(30), w, dataset=dataset, log=quiet),
    errors.WorkdirLockedError,
    rf"in use by pid {hold.pid}",
    protect=w,
  )
  hold.kill()
  hold.wait()
  notes = []
  expect_ok(
    "stale lock of a killed run",
    lambda: trainer_lib.train(small_config(30), w, dataset=dataset, log=notes.append),
    lambda r: (
      any("stale lock" in n and "no longer running" in n for n in notes),
      "taken over with a note",
    ),
  )

  # -- config values --
  bad_values = {
    "train.keep_checkpoints": 0,
    "eval.ks": (0, 5),
    "seed": -1,
    "data.batch_size": 0,
    "optim.b1": 1.0,
    "optim.lr": float("nan"),
    "loss.temperature": 0.0,
    "train.validate_fraction": 0.0,
    "train.checkpoint_every": -1,
    "train.log_every": 0,
    "optim.warmup_steps": -5,
    "model.hidden": (0,),
    "finetune.lr_scale": 0.0,
    "eval.plot_dpi": 0,
    "data.prefetch": 0,
  }
  bad_values.update({"eval.max_queries": -4, "loss.cycle_weights": ("abc",), "train.steps": 0})
  for key, value in bad_values.items():
    config = small_config()
    config.unlock()
    section, _, field = key.rpartition(".")
    setattr(config[section] if section else config, field, value)
    expect_error(
      f"config {key}={value!r}",
      lambda config=config: validate_lib.validate(config),
      errors.ConfigError,
      re.escape(key),
    )
  graph_values = {
    "graph.frozen": "image->audio",
    "graph.frozen ": "image->text",
    "eval.paths": "image->audio->text",
    "loss.supervised_edges": "image->audio",
    "loss.cycle_starts": "video",
  }
  for key, value in graph_values.items():
    config = small_config()
    section, _, field = key.strip().rpartition(".")
    setattr(config[section], field, value)
    target = os.path.join(tmp, f"cfg{counter[0]}")
    counter[0] += 1
    expect_error(
      f"config {key.strip()}={value!r} (against the graph)",
      lambda config=config, target=target: trainer_lib.train(
        config, target, dataset=dataset, log=quiet
      ),
      errors.ConfigError,
      re.escape(key.strip()),
    )

  # -- data --
  files = _data_cases(tmp, arrays)
  for name, pattern in files.items():
    expect_error(
      f"data {name}",
      lambda name=name: readers_lib.load(os.path.join(tmp, "data", name)),
      errors.DataError,
      pattern,
    )
  array_cases = {
    "pairs index out of range": ({"pairs_image__text": np.array([[0, 999]])}, r"out of range"),
    "pairs float dtype": ({"pairs_image__text": np.zeros((3, 2), np.float32)}, r"must be integers"),
    "label wrong length": ({"image_label": np.zeros(3, np.int64)}, r"image_label has shape"),
    "mask not bool": ({"image_train": np.ones(48, np.int64)}, r"image_train must be a bool"),
    "unknown array name": ({"imagee_embs": np.zeros((3, 3))}, r"unrecognised array name"),
    "modality without train rows": ({"audio_train": np.zeros(48, bool)}, r"no train rows"),
    "zero row": ({"text_emb": np.zeros((24, 8), np.float32)}, r"zero norm"),
    "1-d embedding": ({"text_emb": np.zeros(24, np.float32)}, r"text_emb must be a non-empty"),
    "NaN in embedding": (
      {"image_emb": np.where(np.arange(48)[:, None] == 3, np.nan, arrays["image_emb"])},
      r"row 3 has NaN",
    ),
  }
  for label, (patch, pattern) in array_cases.items():
    expect_error(
      f"data {label}",
      lambda patch=patch: readers_lib.from_arrays({**arrays, **patch}),
      errors.DataError,
      pattern,
    )
  pairs = arrays["pairs_audio__text"]
  test_only = {
    **arrays,
    "pairs_audio__text": pairs[
      arrays["audio_test"][pairs[:, 0]] | arrays["text_test"][pairs[:, 1]]
    ],
  }
  ds = readers_lib.from_arrays(test_only, source="testpairs.npz")
  expect_error(
    "pair set of test rows only",
    lambda: trainer_lib.train(small_config(), os.path.join(tmp, "tp"), dataset=ds, log=quiet),
    errors.DataError,
    r"none of its \d+ pairs has both rows in the train split",
  )

  # -- disk --
  w = os.path.join(tmp, "disk")
  os.environ["GRAPHBRIDGE_FAIL_SAVE"] = "20"
  expect_error(
    "full disk at the save of step 20",
    lambda: trainer_lib.train(small_config(30), w, dataset=dataset, log=quiet),
    errors.CheckpointWriteError,
    r"No space left on device; steps saved before are intact: 10",
  )
  del os.environ["GRAPHBRIDGE_FAIL_SAVE"]
  expect_ok(
    "after the full disk: step 10 intact",
    lambda: trained_lib.load_trained(w),
    lambda r: (r.step == 10, f"step {r.step}"),
  )

  # -- the CLIs: one line and a hint, exit 2, no traceback --
  w = copy()
  flip(max(item_files(w, 20, "edge.text.image"), key=os.path.getsize))
  cli(
    "graphbridge-evaluate --step=20 on a corrupt step",
    "evaluate.py",
    [f"--workdir={w}", "--step=20", "--noplots"],
    r"checkpoint step 20: item 'edge.text.image' is corrupt",
    protect=w,
  )
  w = copy()
  cli(
    "graphbridge-train resume with another lr",
    "train.py",
    [
      "--config=configs/npz.py:tiny",
      f"--config.data.path={data_path}",
      f"--workdir={w}",
      "--config.train.steps=20",
      "--config.model.hidden=16,",
      "--config.data.batch_size=16",
      "--config.optim.lr=0.01",
    ],
    r"belongs to another run; resuming would change:",
    protect=w,
  )
  cli(
    "graphbridge-train on a single .npy",
    "train.py",
    [
      "--config=configs/npz.py:tiny",
      f"--config.data.path={os.path.join(tmp, 'data', 'single.npy')}",
      f"--workdir={os.path.join(tmp, 'cli_single')}",
    ],
    r"is a single array",
  )
  cli(
    "graphbridge-train keep_checkpoints=0",
    "train.py",
    [
      "--config=configs/npz.py:tiny",
      f"--config.data.path={data_path}",
      "--config.train.keep_checkpoints=0",
      f"--workdir={os.path.join(tmp, 'cli_keep')}",
    ],
    r"train.keep_checkpoints must be an integer >= 1",
  )

  round3(tmp, copy, dataset, data_path, arrays)

  counts = {s: sum(r["status"] == s for r in RESULTS) for s in ("handled", "weak", "bad")}
  print(
    f"\ntried {len(RESULTS)}  handled {counts['handled']}  weak {counts['weak']}  "
    f"bad {counts['bad']}  ({time.perf_counter() - t0:.0f}s)"
  )
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"tried": len(RESULTS), **counts, "cases": RESULTS}, f, indent=1)
  shutil.rmtree(tmp, ignore_errors=True)


def cli(
  name,
  script,
  argv,
  pattern,
  protect: str | None = None,
  rc: int = 2,
  hint: bool = True,
  said: str | None = None,
  env: dict | None = None,
  within: float | None = None,
):
  """handled: exit `rc`, `pattern` on stderr's first lines (a hint line too where `hint`), `said`
  in stdout + stderr, no traceback, `protect` unchanged, and (with `within`) the process ended
  within that many seconds of its last step line."""
  before = digest(protect) if protect else None
  t0 = time.perf_counter()
  proc = subprocess.Popen(
    [sys.executable, os.path.join(ROOT, "launch", script), *argv],
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
    cwd=ROOT,
    env={**os.environ, "PYTHONPATH": ROOT, **(env or {})},
  )
  timed = [(time.perf_counter() - t0, line.rstrip("\n")) for line in proc.stdout]
  proc.wait(timeout=600)
  output = "\n".join(line for _, line in timed)
  err = [
    line for line in output.splitlines() if not re.match(r"^(WARNING|INFO):absl|^[IW]\d{4} ", line)
  ]
  steps = [t for t, line in timed if re.match(r"^step \d+/\d+ ", line)]
  late = within is not None and steps and timed[-1][0] - steps[-1] > within
  changed = protect is not None and digest(protect) != before
  if changed:
    record(name, "bad", "saved files changed")
  elif (
    proc.returncode == rc
    and re.search(pattern, "\n".join(err))
    and (said is None or re.search(said, output))
    and "Traceback" not in output
    and (not hint or any(line.startswith("hint: ") for line in err))
    and not late
  ):
    after = f", {timed[-1][0] - steps[-1]:.1f}s after its last step line" if within else ""
    record(name, "handled", f"exit {rc}{after}: {[l for l in err if re.search(pattern, l)][:1]}")
  elif late:
    record(
      name, "bad", f"exit {proc.returncode} {timed[-1][0] - steps[-1]:.0f}s after its last step"
    )
  elif proc.returncode != 0 and "Traceback" not in output:
    record(name, "weak", f"exit {proc.returncode}: {err[-2:]}")
  else:
    record(name, "bad", f"exit {proc.returncode}: {output[-300:]}")


def _train_or_strategy(config, workdir, dataset):
  if config.strategy != "graph":
    return strategies.get(config.strategy).train(config, dataset, workdir, log=quiet)
  return trainer_lib.train(config, workdir, dataset=dataset, log=quiet)


def _resume(workdir, dataset):
  logs = []
  result = trainer_lib.train(small_config(), workdir, dataset=dataset, log=logs.append)
  return result, logs, workdir


def _fell_back(out):
  result, logs, workdir = out
  kept = os.path.isdir(os.path.join(workdir, "checkpoints_damaged", "20"))
  ok = result.steps_run == 10 and kept and trained_lib.load_trained(workdir).step == 20
  return ok, f"{result.steps_run} steps run, damaged step kept: {kept}"


def _set_format(workdir, step, version):
  path = os.path.join(workdir, "checkpoints", str(step), "meta", "metadata")
  with open(path) as f:
    meta = json.load(f)
  meta["format_version"] = version
  with open(path, "w") as f:
    json.dump(meta, f)


def _with_stderr(fn):
  """(fn(), what it printed on stderr)."""
  buffer = io.StringIO()
  with contextlib.redirect_stderr(buffer):
    result = fn()
  return result, buffer.getvalue()


def _same_training(datasets):
  config = small_config(10)
  config.loss.infonce_positives = "label"
  a, b = [trainer_lib.train(config, None, dataset=d, log=quiet) for d in datasets]
  import jax

  same = a.final_metrics == b.final_metrics and all(
    np.array_equal(np.asarray(x), np.asarray(y))
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params))
  )
  return same, f"loss {a.final_metrics['loss/total']:.6f} vs {b.final_metrics['loss/total']:.6f}"


def _hold(workdir):
  proc = subprocess.Popen(
    [
      sys.executable,
      "-c",
      (
        f"import sys, time; sys.path.insert(0, {ROOT!r}); "
        "from graphbridge.training import lock as lock_lib; "
        f"lock_lib.WorkdirLock({workdir!r}, 'holder').__enter__(); print('held', flush=True); "
        "time.sleep(120)"
      ),
    ],
    stdout=subprocess.PIPE,
    text=True,
  )
  proc.stdout.readline()
  return proc


def round3(tmp, copy, dataset, data_path, arrays) -> None:
  """The cases of the third round: silent fallbacks, the lock's file, the manifest's timing,
  signals, odd paths, the Python API, labels beyond int32."""
  edge = lambda w, step=20: max(item_files(w, step, "edge.image.text"), key=os.path.getsize)
  train_cli = [
    "--config=configs/npz.py:tiny",
    f"--config.data.path={data_path}",
    "--config.train.steps=30",
    "--config.train.checkpoint_every=10",
    "--config.train.log_every=5",
    "--config.train.print_every=5",
    "--config.model.hidden=16,",
    "--config.data.batch_size=16",
    "--config.train.tensorboard=False",
    "--noplots",
  ]

  # -- every fallback says which step and item it skipped; a newer report is never replaced --
  w = copy()
  with open(os.path.join(w, "report.json"), "w") as f:
    json.dump({"step": 20, "rows": []}, f)
  flip(edge(w))
  cli(
    "graphbridge-evaluate after a flipped bit in the newest step: said, newer report kept",
    "evaluate.py",
    [f"--workdir={w}", f"--data={data_path}", "--noplots"],
    r"reports step 20, which is damaged now .*not replacing it",
    protect=w,
    said=r"checkpoint step 20: item 'edge.image.text' is corrupt .*skipped it, using checkpoint "
    r"step 10",
  )
  lines = []
  expect_ok(
    "graphbridge-evaluate --out after a flipped bit: the report names the step it skipped",
    lambda: evaluate_run.evaluate_workdir(
      w, data_path, out=os.path.join(tmp, "r3_out"), plots=False, log=lines.append
    ),
    lambda r: (
      r["step"] == 10
      and r["skipped_steps"][0]["step"] == 20
      and sum("skipped it, using checkpoint step 10" in line for line in lines) == 1,
      f"step {r['step']}, skipped {[s['step'] for s in r.get('skipped_steps', [])]}",
    ),
  )
  expect_ok(
    "graphbridge.load after a flipped bit: one line on stderr naming step and item",
    lambda: _with_stderr(lambda: api.load(w)),
    lambda r: (
      r[0].step == 10
      and len(r[1].strip().splitlines()) == 1
      and "checkpoint step 20: item 'edge.image.text' is corrupt" in r[1],
      r[1].strip()[:200],
    ),
  )
  w = copy()
  flip(edge(w))
  logs = []
  expect_ok(
    "train resume after a flipped bit: one line naming step and item",
    lambda: trainer_lib.train(small_config(), w, dataset=dataset, log=logs.append),
    lambda r: (
      r.steps_run == 10
      and any(
        "item 'edge.image.text' is corrupt" in line and "skipped it" in line for line in logs
      ),
      f"{r.steps_run} steps run",
    ),
  )
  config = load_config_module("configs/graft_audio.py").get_config("tiny")
  config.data.path = data_path
  config.train.steps = 4
  config.train.checkpoint_every = 2
  config.model.hidden = (16,)
  base = os.path.join(tmp, "r3_base")
  graft_run.train_base(config, base, dataset=dataset, report=False, log=quiet)
  flip(edge(base, 4))
  logs = []
  expect_ok(
    "graft onto a run whose newest step is damaged: one line naming it",
    lambda: graft_run.graft(
      config, base, os.path.join(tmp, "r3_graft"), dataset=dataset, report=False, log=logs.append
    ),
    lambda r: (
      sum("checkpoint step 4: item 'edge.image.text' is corrupt" in line for line in logs) == 1,
      "said",
    ),
  )
  w = copy()
  expect_error(
    "load(step=7), a step that does not exist",
    lambda: trained_lib.load_trained(w, step=7),
    errors.CheckpointError,
    r"no step 7 in .*\(steps: 10, 20\)",
    protect=w,
  )
  cli(
    "graphbridge-evaluate --step=7",
    "evaluate.py",
    [f"--workdir={w}", "--step=7", "--noplots"],
    r"no step 7 in .*\(steps: 10, 20\)",
    protect=w,
  )

  # -- the manifest --
  w = copy()
  os.remove(os.path.join(w, "checkpoints", "20", checkpoint_lib.MANIFEST))
  flip(edge(w))
  lines = []
  expect_ok(
    "manifest deleted and a byte flipped: the step is incomplete, load falls back with a line",
    lambda: trained_lib.load_trained(w, log=lines.append),
    lambda r: (
      r.step == 10 and len(lines) == 1 and "has no checksum manifest" in lines[0],
      f"step {r.step}: {lines[:1]}",
    ),
  )
  expect_error(
    "manifest deleted: load step 20",
    lambda: trained_lib.load_trained(w, step=20),
    errors.CheckpointCorruptError,
    r"checkpoint step 20 is incomplete: it has no checksum manifest",
    protect=w,
  )
  directory = os.path.join(tmp, "r3_manifest")

  def save_and_look():
    checkpoints = checkpoint_lib.Checkpoints(directory)
    checkpoints.save_items(
      10, {"edge.a.b": {"w": np.ones((256, 64), np.float32)}}, {"rng": np.zeros(2)}, {"k": 1}
    )
    checkpoints._manager.wait_until_finished()  # the write done: no next save, no close
    there = os.path.isfile(os.path.join(checkpoints.step_dir(10), checkpoint_lib.MANIFEST))
    checkpoints.close()
    return there

  expect_ok(
    "manifest present as soon as the step's write completes",
    save_and_look,
    lambda there: (there, f"manifest there: {there}"),
  )
  w = os.path.join(tmp, "r3_kill")
  killed = subprocess.run(
    [sys.executable, os.path.join(ROOT, "tests", "reliability_worker.py"), data_path, w, "40"],
    capture_output=True,
    env={**os.environ, "PYTHONPATH": ROOT, "GRAPHBRIDGE_KILL_AFTER_STEP": "25"},
    timeout=600,
  )

  def every_step_has_its_manifest():
    steps = checkpoint_lib.Checkpoints(os.path.join(w, "checkpoints"), read_only=True)
    missing = [
      s
      for s in steps.all_steps()
      if not os.path.isfile(os.path.join(steps.step_dir(s), checkpoint_lib.MANIFEST))
    ]
    return killed.returncode, steps.all_steps(), missing

  expect_ok(
    "kill -9 at step 25: every step on disk has its manifest",
    every_step_has_its_manifest,
    lambda r: (r[0] == -9 and r[1] and not r[2], f"rc {r[0]}, steps {r[1]}, without: {r[2]}"),
  )

  # -- the lock --
  for how in ("deleted", "replaced"):
    w = copy()
    holder = _hold(w)
    path = os.path.join(w, lock_lib.LOCK_FILE)
    os.remove(path)
    if how == "replaced":
      open(path, "w").close()
    expect_error(
      f"lock file {how} while a run holds the workdir: a second run",
      lambda w=w: trainer_lib.train(small_config(30), w, dataset=dataset, log=quiet),
      errors.WorkdirLockedError,
      r"is in use by",
      protect=w,
    )
    holder.kill()
    holder.wait()
  w = os.path.join(tmp, "r3_lockdir")
  os.makedirs(os.path.join(w, lock_lib.LOCK_FILE))
  expect_error(
    ".graphbridge.lock is a directory",
    lambda: lock_lib.WorkdirLock(w).__enter__(),
    errors.WorkdirError,
    r"is a directory, not graphbridge's lock file",
  )
  a_file = os.path.join(tmp, "r3_file")
  open(a_file, "w").close()
  cli(
    "--workdir names an existing file",
    "train.py",
    [*train_cli, f"--workdir={a_file}"],
    r"is a file, not a directory",
  )
  cli("--workdir= (empty)", "train.py", [*train_cli, "--workdir="], r"--workdir is empty")
  cli(
    "no --config", "train.py", [f"--workdir={os.path.join(tmp, 'r3_x')}"], r"--config is required"
  )
  cli(
    "graphbridge-evaluate --step=abc",
    "evaluate.py",
    [f"--workdir={copy()}", "--step=abc"],
    r"flag --step=abc: invalid literal",
  )

  # -- Ctrl-C --
  w = os.path.join(tmp, "r3_int_step")
  cli(
    "Ctrl-C at a step: exit 130, where it stopped, resumable",
    "train.py",
    [*train_cli, f"--workdir={w}"],
    r"interrupted after step 15 of 30; the last checkpoint is step 10: the same command resumes",
    rc=130,
    hint=False,
    env={"GRAPHBRIDGE_INTERRUPT_AFTER_STEP": "15"},
  )
  w = os.path.join(tmp, "r3_int_save")
  cli(
    "Ctrl-C during a checkpoint write: exit 130 within 20 s, steps intact",
    "train.py",
    [*train_cli, f"--workdir={w}"],
    r"interrupted after step 20 of 30",
    rc=130,
    hint=False,
    env={"GRAPHBRIDGE_INTERRUPT_DURING_SAVE": "20"},
    within=20,
  )
  expect_ok(
    "after Ctrl-C during the write of step 20: it verifies and loads",
    lambda: trained_lib.load_trained(w, log=quiet),
    lambda r: (r.step == 20, f"step {r.step}"),
  )

  # -- resumes --
  w = copy()
  config = small_config(30)
  config.loss.cycle_starts = "image"
  config.train.allow_resume_changes = True
  expect_error(
    "allow_resume_changes with another loss plan",
    lambda: trainer_lib.train(config, w, dataset=dataset, log=quiet),
    errors.RunMismatchError,
    r"these changes cannot be resumed",
    protect=w,
  )
  w = copy()
  config = small_config()
  config.data.path = data_path
  config.optim.lr = 0.01
  expect_error(
    "--dry_run with another lr on a trained workdir",
    lambda: dry_run_lib.dry_run(config, w, log=quiet),
    errors.RunMismatchError,
    r"optim.lr: 0.002 -> 0.01",
    protect=w,
  )
  w = os.path.join(tmp, "r3_report")
  config = small_config(10)
  config.data.path = data_path
  first = experiment.train_and_evaluate(config, w, log=quiet, plots=False)
  for name in ("report.json", "report.md"):
    os.remove(os.path.join(w, name))
  expect_ok(
    "kill -9 after the final checkpoint, before the report: the rerun's final_losses",
    lambda: experiment.train_and_evaluate(config, w, log=quiet, plots=False),
    lambda r: (
      r["final_losses"] == first["final_losses"] and len(r["final_losses"]) > 0,
      f"{len(r['final_losses'])} numbers",
    ),
  )

  # -- data and config --
  path = os.path.join(tmp, "r3_notest.npz")
  notest = {k: v.copy() for k, v in arrays.items()}
  for m in ("image", "audio", "text"):
    notest[f"{m}_id"] = np.arange(len(notest[f"{m}_emb"])) % 24
  notest["audio_test"][:] = False
  np.savez(path, **notest)
  config = small_config(10)
  config.data.path = path
  expect_ok(
    "a modality without test rows (ids in the data): a report with a note",
    lambda: experiment.train_and_evaluate(
      config, os.path.join(tmp, "r3_notest"), log=quiet, plots=False
    ),
    lambda r: ("audio has no test rows" in " ".join(r.get("notes", [])), str(r.get("notes"))),
  )
  wide = dict(arrays)
  for m in ("image", "audio", "text"):
    wide[f"{m}_label"] = arrays[f"{m}_label"].astype(np.int64) * 2**32 + 7
  expect_ok(
    "labels * 2**32 + 7 with label positives: training identical to small labels",
    lambda: _same_training([readers_lib.from_arrays(a) for a in (arrays, wide)]),
    lambda r: r,
  )
  config = small_config()
  config.data.batch_size = 300_000
  expect_error(
    "data.batch_size beyond device memory",
    lambda: trainer_lib.train(config, None, dataset=dataset, log=quiet),
    errors.DeviceMemoryError,
    r"data.batch_size",
  )
  pickled = os.path.join(tmp, "r3_pickled.npz")
  np.savez(pickled, **{k: v for k, v in arrays.items() if k != "image_label"})
  with zipfile.ZipFile(pickled, "a") as z:
    z.writestr("image_label.npy", pickle.dumps(arrays["image_label"]))
  expect_error(
    "an .npz member that is a pickle",
    lambda: readers_lib.load(pickled),
    errors.DataError,
    r"'image_label' is not an array but a Python pickle",
  )
  expect_ok(
    "eval.querybank_k=100000 with 40 bank rows: the k used is recorded",
    lambda: (
      report_lib.build_report(
        _Identity(),
        _hub_data(),
        options=report_lib.EvalOptions(tables=("retrieval",), querybank_k=100000),
      ).summary
    ),
    lambda r: (
      r.get("querybank_k_used") == {"a": 40, "b": 40} and "used k=40" in r["querybank"],
      r["querybank"],
    ),
  )

  # -- the Python API --
  w = copy()
  run = api.load(w)
  x = np.random.default_rng(0).normal(size=(3, run.model.dims["image"])).astype(np.float32)
  gallery = run.gallery("audio")[0].copy()
  gallery[3] = np.nan
  api_cases = {
    "Run.translate(x, 'image->text<-audio')": (
      lambda: run.translate(x, "image->text<-audio"),
      errors.GraphError,
      r"two sides",
    ),
    "Run.translate(x, None)": (lambda: run.translate(x, None), errors.GraphError, r"route"),
    "Run.translate(complex x)": (
      lambda: run.translate(x + 1j, "image->text"),
      errors.DataError,
      r"complex values",
    ),
    "Run.search(k=None)": (
      lambda: run.search(x, "image", "audio", k=None),
      ValueError,
      r"k must be a positive integer",
    ),
    "Run.search(k=nan)": (
      lambda: run.search(x, "image", "audio", k=float("nan")),
      ValueError,
      r"k must be a positive integer",
    ),
    "Run.search with a NaN gallery row": (
      lambda: run.search(x, "image", "audio", gallery=gallery),
      errors.DataError,
      r"row 3 has NaN",
    ),
  }
  for label, (fn, cls, pattern) in api_cases.items():
    expect_error(label, fn, cls, pattern, protect=w)
  with open(os.path.join(w, "config.json"), "w") as f:
    f.write("{not json")
  expect_error(
    "graphbridge.load with a junk config.json",
    lambda: api.load(w),
    errors.DataError,
    r"config.json is not valid JSON",
  )


def _data_cases(tmp, arrays) -> dict[str, str]:
  root = os.path.join(tmp, "data")
  os.makedirs(root)
  np.savez(os.path.join(root, "ok.npz"), **arrays)
  with open(os.path.join(root, "ok.npz"), "rb") as f:
    raw = f.read()
  flipped = bytearray(raw)
  flipped[len(raw) // 3] ^= 0xFF
  for name, content in {
    "truncated.npz": raw[: len(raw) // 2],
    "flipped.npz": bytes(flipped),
    "empty.npz": b"",
    "text.npz": b"hello, not a zip file\n",
  }.items():
    with open(os.path.join(root, name), "wb") as f:
      f.write(content)
  np.save(os.path.join(root, "single.npy"), arrays["image_emb"])
  folder = os.path.join(root, "folder")
  os.makedirs(folder)
  for k, v in arrays.items():
    np.save(os.path.join(folder, f"{k}.npy"), v)
  with open(os.path.join(folder, "text_emb.npy"), "r+b") as f:
    f.truncate(100)
  os.makedirs(os.path.join(root, "empty_folder"))
  os.makedirs(os.path.join(root, "npz_in_folder"))
  shutil.copy(os.path.join(root, "ok.npz"), os.path.join(root, "npz_in_folder", "x.npz"))
  np.savez(os.path.join(root, "objects.npz"), image_emb=np.array([{"a": 1}] * 3, dtype=object))
  np.savez(
    os.path.join(root, "inf.npz"),
    **{**arrays, "audio_emb": np.where(np.arange(48)[:, None] == 7, np.inf, arrays["audio_emb"])},
  )
  return {
    "truncated.npz": r"truncated or not a .npz",
    "flipped.npz": r"array '\w+' is unreadable",
    "empty.npz": r"is empty \(0 bytes\)",
    "text.npz": r"is not a .npz file",
    "single.npy": r"is a single array",
    "folder": r"text_emb.npy is not a readable .npy file",
    "empty_folder": r"holds no .npy files",
    "npz_in_folder": r"it holds x.npz: pass that file",
    "objects.npz": r"Python objects",
    "inf.npz": r"row 7 has inf",
    "missing.npz": r"does not exist",
  }


if __name__ == "__main__":
  main()
