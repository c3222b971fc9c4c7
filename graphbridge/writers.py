"""Metric writers (the CLU `metric_writers` interface, kept small): JSONL always, TensorBoard
event files when tensorboardX is installed (`pip install graphbridge[tensorboard]`).

  writer = writers.for_run(workdir, config, jsonl)   # jsonl: train.MetricWriter
  writer.write_scalars(step, {"loss/total": 0.4, "lr": 1e-3})
  writer.close()

TensorBoard: `tensorboard --logdir WORKDIR/tensorboard`. Process 0 writes; other processes of a
multi-host run get writers that do nothing.
"""

from __future__ import annotations

import json
import os
from typing import Callable, Mapping, Protocol, Sequence

TENSORBOARD_DIR = "tensorboard"


class MetricWriter(Protocol):
  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None: ...
  def flush(self) -> None: ...
  def close(self) -> None: ...


class JsonlWriter:
  """Adapts train.MetricWriter (one JSON object per logged step in metrics.jsonl)."""

  def __init__(self, jsonl):
    self.jsonl = jsonl

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    self.jsonl.write(step, scalars)

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass


class TensorBoardWriter:
  """Scalars as TensorBoard events under `logdir` (tensorboardX: no TensorFlow needed)."""

  def __init__(self, logdir: str):
    from tensorboardX import SummaryWriter  # ImportError when the extra is not installed
    self.logdir = logdir
    self._writer = SummaryWriter(logdir=logdir)

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    for key, value in scalars.items():
      if isinstance(value, (int, float)) and value == value:  # NaN (e.g. no rate yet) is left out
        self._writer.add_scalar(tensorboard_tag(key), float(value), global_step=int(step))

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


def tensorboard_tag(key: str) -> str:
  """TensorBoard tags allow [A-Za-z0-9_./-]: 'grad_norm/image->text' -> 'grad_norm/image_to_text'."""
  return key.replace("->", "_to_").replace("<-", "_from_")


class MultiWriter:
  def __init__(self, writers: Sequence[MetricWriter]):
    self.writers = list(writers)

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    for w in self.writers:
      w.write_scalars(step, scalars)

  def write(self, step: int, scalars: Mapping[str, float]) -> None:  # train.MetricWriter's name
    self.write_scalars(step, scalars)

  def flush(self) -> None:
    for w in self.writers:
      w.flush()

  def close(self) -> None:
    for w in self.writers:
      w.close()


def tensorboard_available() -> bool:
  try:
    import tensorboardX  # noqa: F401
  except ImportError:
    return False
  return True


def read_metrics(path: str) -> list[dict]:
  """The rows of a run's metrics.jsonl ([] when there is none)."""
  if not os.path.exists(path):
    return []
  rows = []
  with open(path) as f:
    for line in f:
      try:
        rows.append(json.loads(line))
      except ValueError:  # blank, or torn by a kill
        continue
  return rows


def log_process0(msg: str) -> None:
  """The library's default log: print on process 0 only (multi-host runs print once), flushed."""
  import jax
  if jax.process_index() == 0:
    print(msg, flush=True)


def for_run(workdir: str | None, config, jsonl, log: Callable[[str], None] = print) -> MultiWriter:
  """JSONL (`jsonl`, a train.MetricWriter) plus TensorBoard events in workdir/tensorboard when
  config.train.tensorboard is on (default) and tensorboardX is installed; a note, not an error,
  when it is not."""
  import jax
  writers: list[MetricWriter] = [JsonlWriter(jsonl)]
  wanted = bool(config.get("train", {}).get("tensorboard", True))
  if workdir and wanted and jax.process_index() == 0:
    if tensorboard_available():
      writers.append(TensorBoardWriter(os.path.join(workdir, TENSORBOARD_DIR)))
    else:
      log("note: no TensorBoard events (tensorboardX is not installed: pip install graphbridge[tensorboard]); "
          "metrics go to metrics.jsonl")
  return MultiWriter(writers)


def read_tensorboard_scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
  """{tag: [(step, value), ...]} from the event files in `logdir` (for tests and notebooks; needs
  tensorboardX's protobufs only)."""
  from tensorboardX.proto import event_pb2
  import struct
  out: dict[str, list[tuple[int, float]]] = {}
  for name in sorted(os.listdir(logdir)):
    if "tfevents" not in name:
      continue
    with open(os.path.join(logdir, name), "rb") as f:
      data = f.read()
    pos = 0
    while pos + 12 <= len(data):  # TFRecord: len u64, crc u32, payload, crc u32
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      payload = data[pos + 12:pos + 12 + length]
      pos += 12 + length + 4
      event = event_pb2.Event()
      event.ParseFromString(payload)
      for value in event.summary.value:
        out.setdefault(value.tag, []).append((int(event.step), float(value.simple_value)))
  return out


def format_eta(seconds: float) -> str:
  """'1h02m', '3m05s', '42s'."""
  if not seconds == seconds or seconds < 0:
    return "?"
  s = int(round(seconds))
  if s >= 3600:
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"
  if s >= 60:
    return f"{s // 60}m{s % 60:02d}s"
  return f"{s}s"
