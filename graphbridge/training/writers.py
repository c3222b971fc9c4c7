"""Metric writers (the CLU `metric_writers` interface, kept small): JSONL always, TensorBoard
event files when tensorboardX is installed (`pip install graphbridge[tensorboard]`).

  writer = writers.for_run(workdir, config)   # metrics.jsonl (+ TensorBoard) in workdir
  writer.write_scalars(step, {"loss/total": 0.4, "lr": 1e-3})
  writer.close()

TensorBoard: `tensorboard --logdir WORKDIR/tensorboard`. Process 0 writes; other processes of a
multi-host run get writers that do nothing. Tags are the keys of metrics.jsonl, verbatim
("val/mAP/image->audio"): TensorBoard takes any string as a tag; only tensorboardX's add_scalar
rewrites characters outside [A-Za-z0-9_./-] (a rule of TF1 op names, which PyTorch's writer
dropped), so scalars are written as Summary protos. At the end of a run the report adds its final
numbers (scalars and hparams) and its figures (images) at the final step (`final_tensorboard`).
"""

from __future__ import annotations

import json
import os
import signal
import struct
from typing import Callable, Mapping, Protocol, Sequence
import jax


TENSORBOARD_DIR = "tensorboard"
METRICS_FILE = "metrics.jsonl"


class MetricWriter(Protocol):
  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None: ...
  def flush(self) -> None: ...
  def close(self) -> None: ...


class JsonlWriter:
  """Appends one JSON object per logged step to `path` (workdir/metrics.jsonl); process 0 only,
  None writes nothing."""

  def __init__(self, path: str | None):
    self.path = path if jax.process_index() == 0 else None
    if self.path:
      os.makedirs(os.path.dirname(self.path), exist_ok=True)

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    if self.path:
      with open(self.path, "a") as f:
        f.write(json.dumps({"step": int(step), **scalars}) + "\n")
    if os.environ.get("GRAPHBRIDGE_KILL_AFTER_STEP") == str(step):  # fault injection for tests
      os.kill(os.getpid(), 9)
    if os.environ.get("GRAPHBRIDGE_INTERRUPT_AFTER_STEP") == str(step):  # Ctrl-C, for tests
      os.kill(os.getpid(), signal.SIGINT)
    if (
      os.environ.get("GRAPHBRIDGE_FILL_DISK_AFTER_STEP") == str(step) and self.path
    ):  # fault injection:
      _fill_disk(os.path.dirname(self.path))  # a full disk

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass


class TensorBoardWriter:
  """Scalars, hparams and PNG images as TensorBoard events under `logdir` (tensorboardX: no
  TensorFlow needed), every tag verbatim."""

  def __init__(self, logdir: str):
    from tensorboardX import SummaryWriter  # ImportError when the extra is not installed

    self.logdir = logdir
    self._writer = SummaryWriter(logdir=logdir)

  def _add(self, values: list, step: int | None) -> None:
    from tensorboardX.proto.summary_pb2 import Summary

    if values:
      self._writer._get_file_writer().add_summary(Summary(value=values), step)

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    from tensorboardX.proto.summary_pb2 import Summary

    values = [
      Summary.Value(tag=str(key), simple_value=float(value))
      for key, value in scalars.items()
      # NaN (e.g. no rate yet) is left out; bool is an int but not a measurement
      if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
    ]
    self._add(values, int(step))

  def write_images(self, step: int, images: Mapping[str, str]) -> None:
    """{tag: path of a PNG file}: each file's bytes as an image summary (no decoding)."""
    from tensorboardX.proto.summary_pb2 import Summary

    values = []
    for tag, path in images.items():
      with open(path, "rb") as f:
        png = f.read()
      if png[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path} is not a PNG file")
      width, height = struct.unpack(">II", png[16:24])  # the IHDR chunk
      image = Summary.Image(height=height, width=width, colorspace=4, encoded_image_string=png)
      values.append(Summary.Value(tag=str(tag), image=image))
    self._add(values, int(step))

  def write_hparams(
    self, step: int, hparams: Mapping, metrics: Mapping[str, float], write_metrics: bool = True
  ) -> None:
    """The run's settings and its headline metrics for TensorBoard's HParams tab. The session is
    this logdir, so the metrics' scalars (written here unless the caller already wrote them:
    write_metrics=False) sit beside the training curves."""
    from tensorboardX.summary import hparams as hparams_summaries

    experiment, start, end = hparams_summaries(dict(hparams), dict(metrics))
    writer = self._writer._get_file_writer()
    for summary in (experiment, start, end):
      writer.add_summary(summary, int(step))
    if write_metrics:
      self.write_scalars(step, metrics)

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


def hparams_from_config(config) -> dict[str, bool | int | float | str]:
  """{"train.lr": 0.001, "model.hidden": "(512,)", ...}: every leaf of `config` (a ConfigDict or
  a nested dict), numbers, bools and strings as they are, anything else as its repr; None left
  out."""
  tree = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  out: dict[str, bool | int | float | str] = {}

  def walk(prefix: str, node) -> None:
    if isinstance(node, Mapping):
      for key, value in node.items():
        walk(f"{prefix}.{key}" if prefix else str(key), value)
    elif node is None:
      return
    elif isinstance(node, (bool, int, float, str)):
      out[prefix] = node
    else:
      out[prefix] = repr(tuple(node)) if isinstance(node, (list, tuple)) else repr(node)

  walk("", tree)
  return out


class MultiWriter:
  def __init__(self, writers: Sequence[MetricWriter]):
    self.writers = list(writers)

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    for w in self.writers:
      w.write_scalars(step, scalars)

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


def logged_at(path: str, step: int, drop: Sequence[str] = ("lr",)) -> dict:
  """The numbers metrics.jsonl at `path` holds for `step` (its last row of that step), without
  "step", "steps_per_sec", `drop` and validation scores: a finished run's final losses when this
  process trained nothing (e.g. it was killed between the last checkpoint and its report)."""
  rows = [r for r in read_metrics(path) if r.get("step") == step]
  if not rows:
    return {}
  skip = {"step", "steps_per_sec", *drop}
  return {k: v for k, v in rows[-1].items() if k not in skip and not k.startswith("val/")}


def log_process0(msg: str) -> None:
  """The library's default log: print on process 0 only (multi-host runs print once), flushed."""
  import jax

  if jax.process_index() == 0:
    print(msg, flush=True)


def for_run(workdir: str | None, config, log: Callable[[str], None] = print) -> MultiWriter:
  """workdir/metrics.jsonl (None: nothing) plus TensorBoard events in workdir/tensorboard when
  config.train.tensorboard is on (default) and tensorboardX is installed; a note, not an error,
  when it is not."""
  import jax

  writers: list[MetricWriter] = [
    JsonlWriter(os.path.join(workdir, METRICS_FILE) if workdir else None)
  ]
  wanted = bool(config.train.tensorboard)
  if workdir and wanted and jax.process_index() == 0:
    if tensorboard_available():
      writers.append(TensorBoardWriter(os.path.join(workdir, TENSORBOARD_DIR)))
    else:
      log(
        "note: no TensorBoard events (tensorboardX is not installed: "
        "pip install graphbridge[tensorboard]); metrics go to metrics.jsonl"
      )
  return MultiWriter(writers)


def final_tensorboard(workdir: str | None, config) -> TensorBoardWriter | None:
  """A writer into workdir/tensorboard for the report's final numbers and figures, where the
  training's events are; None where for_run would write none (no workdir, config.train.tensorboard
  off, tensorboardX missing, not process 0)."""
  wanted = bool(config.get("train", {}).get("tensorboard", True))
  if not workdir or not wanted or jax.process_index() != 0 or not tensorboard_available():
    return None
  return TensorBoardWriter(os.path.join(workdir, TENSORBOARD_DIR))


def _tensorboard_values(logdir: str):
  """(step, Summary.Value) of every event file in `logdir`, in file order."""
  from tensorboardX.proto import event_pb2

  for name in sorted(os.listdir(logdir)):
    if "tfevents" not in name:
      continue
    with open(os.path.join(logdir, name), "rb") as f:
      data = f.read()
    pos = 0
    while pos + 12 <= len(data):  # TFRecord: len u64, crc u32, payload, crc u32
      (length,) = struct.unpack("<Q", data[pos : pos + 8])
      payload = data[pos + 12 : pos + 12 + length]
      pos += 12 + length + 4
      event = event_pb2.Event()
      event.ParseFromString(payload)
      for value in event.summary.value:
        yield int(event.step), value


def read_tensorboard_scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
  """{tag: [(step, value), ...]} of the scalars in `logdir`'s event files (for tests and
  notebooks; needs tensorboardX's protobufs only)."""
  out: dict[str, list[tuple[int, float]]] = {}
  for step, value in _tensorboard_values(logdir):
    if value.HasField("simple_value"):
      out.setdefault(value.tag, []).append((step, float(value.simple_value)))
  return out


def read_tensorboard_images(logdir: str) -> dict[str, list[tuple[int, bytes]]]:
  """{tag: [(step, encoded PNG), ...]} of the images in `logdir`'s event files."""
  out: dict[str, list[tuple[int, bytes]]] = {}
  for step, value in _tensorboard_values(logdir):
    if value.HasField("image"):
      out.setdefault(value.tag, []).append((step, bytes(value.image.encoded_image_string)))
  return out


def read_tensorboard_hparams(logdir: str) -> dict:
  """{name: value} of the last hparams session started in `logdir` ({} if none)."""
  from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData

  out: dict = {}
  for _, value in _tensorboard_values(logdir):
    if value.tag == "_hparams_/session_start_info":
      data = HParamsPluginData.FromString(value.metadata.plugin_data.content)
      out = {
        k: getattr(v, v.WhichOneof("kind")) for k, v in data.session_start_info.hparams.items()
      }
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


def _fill_disk(directory: str) -> None:
  """Fault injection for tests: fill the file system holding `directory` (a small tmpfs)."""
  with open(os.path.join(directory, "disk_filler"), "wb") as f:
    try:
      while True:
        f.write(b"\0" * 65536)
        f.flush()
    except OSError:
      pass


def trim_metrics(path: str, step: int) -> int:
  """Drop the rows of metrics.jsonl after `step` (written after the checkpoint a run resumes
  from; the resumed run writes them again), and a torn last line; keep one row per step.
  Returns how many rows were dropped. Process 0 only; the file is replaced atomically."""
  if jax.process_index() != 0 or not os.path.exists(path):
    return 0
  with open(path) as f:
    lines = f.read().splitlines()
  kept, seen = [], set()
  for line in lines:
    try:
      row = json.loads(line)
    except ValueError:
      continue  # a line torn by a kill
    if int(row.get("step", -1)) <= step and row.get("step") not in seen:
      seen.add(row.get("step"))
      kept.append(line)
  dropped = len(lines) - len(kept)
  if dropped:
    with open(path + ".tmp", "w") as f:
      f.write("".join(line + "\n" for line in kept))
    os.replace(path + ".tmp", path)
  return dropped
