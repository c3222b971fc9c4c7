"""Probe graphbridge as a careless or hostile user would: damaged checkpoints, changed configs on
resume, bad config values, broken data files, a locked workdir, a full disk.

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
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

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
  trainer_lib.train(small_config(), finished, dataset=dataset, log=quiet)
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
  os.remove(os.path.join(w, "checkpoints", "20", checkpoint_lib.MANIFEST))
  expect_ok(
    "manifest removed (a step from before manifests): loads unverified",
    lambda: trained_lib.load_trained(w),
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

  counts = {s: sum(r["status"] == s for r in RESULTS) for s in ("handled", "weak", "bad")}
  print(
    f"\ntried {len(RESULTS)}  handled {counts['handled']}  weak {counts['weak']}  "
    f"bad {counts['bad']}  ({time.perf_counter() - t0:.0f}s)"
  )
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"tried": len(RESULTS), **counts, "cases": RESULTS}, f, indent=1)
  shutil.rmtree(tmp, ignore_errors=True)


def cli(name, script, argv, pattern, protect: str | None = None):
  """handled: exit 2, `pattern` on stderr's first lines, a hint, no traceback, `protect`
  unchanged."""
  before = digest(protect) if protect else None
  proc = subprocess.run(
    [sys.executable, os.path.join(ROOT, "launch", script), *argv],
    capture_output=True,
    text=True,
    cwd=ROOT,
    env={**os.environ, "PYTHONPATH": ROOT},
    timeout=600,
  )
  err = [
    line
    for line in proc.stderr.splitlines()
    if not re.match(r"^(WARNING|INFO):absl|^[IW]\d{4} ", line)
  ]
  changed = protect is not None and digest(protect) != before
  if changed:
    record(name, "bad", "saved files changed")
  elif (
    proc.returncode == 2
    and re.search(pattern, "\n".join(err))
    and "Traceback" not in proc.stderr
    and any(line.startswith("hint: ") for line in err)
  ):
    record(name, "handled", f"exit 2: {err[0]}")
  elif proc.returncode != 0 and "Traceback" not in proc.stderr:
    record(name, "weak", f"exit {proc.returncode}: {err[:1]}")
  else:
    record(name, "bad", f"exit {proc.returncode}: {proc.stderr[-300:]}")


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
