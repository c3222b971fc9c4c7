"""Orbax checkpoints with one item per edge.

A step directory holds:
  meta              JSON: graph, translator architectures, frozen edges, item list, config, data
                    fingerprint
  train             step, RNG key, loss weights, health record, and optimizer leaves shared by all
                    edges (e.g. Adam's step count)
  edge.<src>.<dst>  {"params": the edge's translator params, "opt": the edge's rows of every
                    per-parameter optimizer leaf (Adam's mu and nu)}

Edges are independent items (items.py splits a state into them), so a subset can be restored
(e.g. to graft a new modality onto a trained graph) and an item's files can be copied unchanged
into a new checkpoint.

Integrity: when a step's write completes (Orbax's async write done, grafted items copied), and
before Orbax renames its temporary folder into place, a manifest `<step>/sha256.json` records a
sha256 per item (over its files' relative paths and bytes). So a step that exists has its manifest,
and a restore verifies every item it reads against it: a flipped bit is `CheckpointCorruptError`
naming step and item, never silently changed parameters. A step of this format (meta
"format_version" >= 2) without a manifest is incomplete; steps of format 1 (written before the
manifest was part of the write) restore unverified.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import signal
import sys
from typing import Any, Callable, Iterable, Mapping
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging as absl_logging
from graphbridge.training.items import (  # noqa: F401 (re-exported)
  edge_from_item_name,
  edge_item_name,
  edge_locator,
  merge_by_edge,
  merge_items,
  module_locator,
  split_by_edge,
  split_items,
)
from graphbridge.core.errors import (
  CheckpointCorruptError,
  CheckpointError,
  CheckpointMismatchError,
  CheckpointWriteError,
)


class _DropItemMetadataNotes(logging.Filter):
  """Orbax warns once per item that a step's item has no _CHECKPOINT_METADATA file when it
  restores items of a composite checkpoint one by one; those files are written only at the step
  level, and our own manifest (sha256.json) is what verifies a step."""

  def filter(self, record: logging.LogRecord) -> bool:
    return "Metadata file does not exist" not in str(record.msg)


logging.getLogger("absl").addFilter(_DropItemMetadataNotes())


PyTree = Any


META, TRAIN = "meta", "train"


# 2: the manifest is written inside the step's write (before the step appears), so a step without
# one is incomplete. 1: the manifest came at the next save (older workdirs), or not at all.
FORMAT_VERSION = 2
MANIFEST_REQUIRED_FROM = 2


MANIFEST = "sha256.json"


TMP_SUFFIX = ".orbax-checkpoint-tmp"  # Orbax writes <step><TMP_SUFFIX>, then renames it to <step>


_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EACCES, errno.EPERM)


def _disk_error(exc: BaseException) -> OSError | None:
  """The disk problem (full, quota, read-only, I/O, permissions) behind exc: an OSError in its
  cause/context chain, or a tensorstore error (ValueError) whose text carries the OS error."""
  seen = set()
  while exc is not None and id(exc) not in seen:
    seen.add(id(exc))
    if isinstance(exc, OSError) and exc.errno in _DISK_ERRNOS:
      return exc
    text = str(exc)
    for code in _DISK_ERRNOS:
      if os.strerror(code) in text or f"os_error_code='{code}'" in text:
        return OSError(code, os.strerror(code))
    exc = exc.__cause__ or exc.__context__
  return None


def item_digest(directory: str) -> str:
  """sha256 over the relative paths and bytes of every file under an item's directory."""
  h = hashlib.sha256()
  for dirpath, dirnames, filenames in os.walk(directory):
    dirnames.sort()
    for name in sorted(filenames):
      path = os.path.join(dirpath, name)
      h.update(os.path.relpath(path, directory).encode() + b"\0")
      with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
          h.update(chunk)
  return h.hexdigest()


@contextlib.contextmanager
def _orbax_errors_only():
  """Orbax warns for every item read on its own ("Metadata file does not exist": an item of a
  step has no step metadata of its own); a restore prints nothing but errors."""
  logger = absl_logging.get_absl_logger()
  before = logger.level
  logger.setLevel(max(before, logging.ERROR))
  try:
    yield
  finally:
    logger.setLevel(before)


def _numpy_restore_args(metadata_tree) -> ocp.args.PyTreeRestore:
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata_tree)
  return ocp.args.PyTreeRestore(restore_args=restore_args)


class Checkpoints:
  """Per-edge Orbax checkpoints in `directory` (steps as sub-directories)."""

  def __init__(
    self,
    directory: str,
    max_to_keep: int | None = 3,
    async_save: bool = True,
    read_only: bool = False,
  ):
    self.directory = os.path.abspath(directory)
    if read_only and not os.path.isdir(self.directory):
      raise CheckpointError(f"no checkpoint directory at {self.directory}")
    async_save = async_save and not read_only
    options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep,
      create=not read_only,
      enable_async_checkpointing=async_save,
      read_only=read_only,
      # the manifest (and a graft's copied items) go into the step's folder when its files are
      # written, before Orbax renames it into place: a step never appears without them
      async_options=ocp.AsyncOptions(post_finalization_callback=self._on_written)
      if async_save
      else None,
    )
    self._async = async_save
    self._in_flight: tuple[int, dict] | None = None  # the step being written, its copied items
    self._failed: CheckpointWriteError | None = None  # the disk error already reported
    try:
      # a read-only manager warns that it is read-only, twice, each time it is opened
      with _orbax_errors_only() if read_only else contextlib.nullcontext():
        self._manager = ocp.CheckpointManager(self.directory, options=options)
    except Exception as exc:  # e.g. the folder cannot be created
      self._manager = None
      raise self._write_error(-1, exc) from exc

  # -- steps --
  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  # -- save --
  def save(
    self,
    step: int,
    edge_items: Mapping[str, Mapping],
    train_item: Mapping,
    meta: Mapping,
    copy_items_from: Mapping[str, str] | None = None,
  ) -> None:
    """Save one step. edge_items: {edge_name: {"params":..., "opt":...}}.

    copy_items_from: {edge_name: step_dir} of items to copy byte for byte from an existing
    checkpoint instead of writing them (used by grafting: frozen edges stay identical)."""
    self.save_items(
      step,
      {edge_item_name(e): tree for e, tree in edge_items.items()},
      train_item,
      meta,
      {edge_item_name(e): d for e, d in (copy_items_from or {}).items()},
    )

  def save_items(
    self,
    step: int,
    items: Mapping[str, Mapping],
    train_item: Mapping,
    meta: Mapping,
    copy_items_from: Mapping[str, str] | None = None,
  ) -> None:
    """Save one step of named items ({item name: tree}; models other than translator graphs, e.g.
    DMVAE's "module.enc.image"). copy_items_from: {item name: step_dir} copied byte for byte. The
    step's manifest (sha256 per item) is written as part of the write, before the step appears
    under its name. A disk error (full, read-only) is CheckpointWriteError; earlier steps stay."""
    self._finish_pending()
    copy_items_from = dict(copy_items_from or {})
    items = {name: ocp.args.StandardSave(dict(tree)) for name, tree in items.items()}
    all_items = sorted(list(items) + list(copy_items_from))
    meta = {**meta, "items": all_items, "format_version": FORMAT_VERSION, "step": int(step)}
    items[TRAIN] = ocp.args.StandardSave(dict(train_item))
    items[META] = ocp.args.JsonSave(meta)
    self._in_flight = (int(step), copy_items_from)
    try:
      if os.environ.get("GRAPHBRIDGE_FAIL_SAVE") == str(step):  # fault injection for tests
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.step_dir(step))
      self._manager.save(step, args=ocp.args.Composite(**items), force=True)
      if not self._async:  # written and renamed already: complete it in place
        self._on_written()
    except Exception as exc:
      raise self._write_error(step, exc) from exc
    if os.environ.get("GRAPHBRIDGE_KILL_DURING_SAVE") == str(step):  # fault injection for tests
      os.kill(os.getpid(), 9)
    if os.environ.get("GRAPHBRIDGE_INTERRUPT_DURING_SAVE") == str(step):  # Ctrl-C, for tests
      os.kill(os.getpid(), signal.SIGINT)

  def _on_written(self) -> None:
    """The step in flight is written (Orbax calls this on its background thread, before renaming
    the step's temporary folder into place): copy a graft's items into it, then its manifest."""
    if self._in_flight is None or jax.process_index() != 0:  # one writer on a shared file system
      return
    step, copy_items_from = self._in_flight
    folder = self._writing_dir(step)
    for name, src_dir in copy_items_from.items():
      target = os.path.join(folder, name)
      if not os.path.isdir(target):
        shutil.copytree(os.path.join(src_dir, name), target)
    self._write_manifest_in(folder, step)

  def _writing_dir(self, step: int) -> str:
    """Where step's files are while it is written: Orbax's temporary folder (the newest, should an
    interrupted run have left one), or the step's own where there is none (a file system whose
    steps are committed in place)."""
    prefix = f"{step}{TMP_SUFFIX}"
    temporary = [
      os.path.join(self.directory, name)
      for name in os.listdir(self.directory)
      if name.startswith(prefix) and os.path.isdir(os.path.join(self.directory, name))
    ]
    return max(temporary, key=os.path.getmtime) if temporary else self.step_dir(step)

  def _write_error(self, step: int, exc: BaseException) -> BaseException:
    """CheckpointWriteError for a disk problem (the half-written step removed), else exc itself."""
    disk = _disk_error(exc)
    if disk is None:
      return exc
    if self._failed is not None:  # already reported; the same failure surfacing again
      return self._failed
    self._discard_partial(step)
    try:
      kept = [s for s in self._manager.all_steps() if s != step] if self._manager else []
    except Exception:  # noqa: BLE001  (a listing must not hide the write error)
      kept = []
    where = f"; steps saved before are intact: {', '.join(map(str, sorted(kept)))}" if kept else ""
    what = f"checkpoint step {step} to" if step >= 0 else "the checkpoint folder"
    self._failed = CheckpointWriteError(
      f"could not write {what} {self.directory}: {disk.strerror or disk}{where}"
    )
    return self._failed

  def _discard_partial(self, step: int) -> None:
    """Remove the temporary folders of steps that failed to write (Orbax's
    <step>.orbax-checkpoint-tmp*; never a finished step), freeing the space they took."""
    if jax.process_index() != 0 or not os.path.isdir(self.directory):
      return
    for name in os.listdir(self.directory):
      if ".orbax-checkpoint-tmp" in name:
        shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)

  def _finish_pending(self) -> None:
    """Wait for the step in flight (its manifest is written as part of it)."""
    if self._in_flight is None:
      return
    step = self._in_flight[0]
    try:
      self._manager.wait_until_finished()
    except Exception as exc:
      raise self._write_error(step, exc) from exc
    finally:
      self._in_flight = None

  def write_manifest(self, step: int) -> dict[str, str]:
    """Record {item: sha256} of a finished step as <step>/sha256.json (atomically)."""
    return self._write_manifest_in(self.step_dir(step), step)

  @staticmethod
  def _write_manifest_in(step_dir: str, step: int) -> dict[str, str]:
    digests = {
      name: item_digest(os.path.join(step_dir, name))
      for name in sorted(os.listdir(step_dir))
      if os.path.isdir(os.path.join(step_dir, name))
    }
    path = os.path.join(step_dir, MANIFEST)
    with open(path + ".tmp", "w") as f:
      json.dump({"step": int(step), "sha256": digests}, f, indent=1, sort_keys=True)
      f.flush()
      os.fsync(f.fileno())
    os.replace(path + ".tmp", path)
    return digests

  def step_format(self, step: int) -> int:
    """The format_version a step's meta records (1 where it records none: the oldest steps;
    FORMAT_VERSION where the meta cannot be read, which restoring it reports)."""
    try:
      with open(os.path.join(self.step_dir(step), META, "metadata")) as f:
        return int(json.load(f).get("format_version", 1))
    except (OSError, ValueError, TypeError, AttributeError):
      return FORMAT_VERSION

  def manifest(self, step: int) -> dict[str, str] | None:
    """{item: sha256} recorded for `step`, or None for a step of format 1 without one (written
    before the manifest was part of a step's write). A step of a later format without one is
    incomplete: CheckpointCorruptError."""
    path = os.path.join(self.step_dir(step), MANIFEST)
    if not os.path.exists(path):
      if self.step_format(step) >= MANIFEST_REQUIRED_FROM:
        raise CheckpointCorruptError(
          f"checkpoint step {step} is incomplete: it has no checksum manifest {MANIFEST} (its "
          "write never finished, or the file was removed), so its files cannot be verified",
          step,
          MANIFEST,
        )
      return None
    try:
      with open(path) as f:
        return dict(json.load(f)["sha256"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
      raise CheckpointCorruptError(
        f"checkpoint step {step}: its checksum manifest {MANIFEST} is corrupt "
        f"({type(exc).__name__})",
        step,
        MANIFEST,
      ) from None

  def verify(self, step: int, items: Iterable[str]) -> None:
    """CheckpointCorruptError naming step and item if an item's files differ from the manifest."""
    recorded = self.manifest(step)
    if recorded is None:
      return
    for name in items:
      if name not in recorded:
        raise CheckpointCorruptError(
          f"checkpoint step {step}: item {name!r} is not in its checksum manifest", step, name
        )
      directory = os.path.join(self.step_dir(step), name)
      if not os.path.isdir(directory):
        raise CheckpointCorruptError(
          f"checkpoint step {step} is incomplete: missing item(s) {name}", step, name
        )
      if item_digest(directory) != recorded[name]:
        raise CheckpointCorruptError(
          f"checkpoint step {step}: item {name!r} is corrupt (sha256 differs from the one recorded "
          "at save; its files were changed or damaged on disk)",
          step,
          name,
        )

  def quarantine(self, step: int) -> str:
    """Move a damaged step out of the way (to <directory>_damaged/<step>), keeping its files, so
    training can write that step again. Returns the new location."""
    if (
      jax.process_index() != 0
    ):  # one writer on a shared file system; others only re-read the steps
      self._manager.reload()
      return ""
    target_root = self.directory.rstrip("/") + "_damaged"
    os.makedirs(target_root, exist_ok=True)
    target = os.path.join(target_root, str(step))
    suffix = 1
    while os.path.exists(target):
      target, suffix = os.path.join(target_root, f"{step}.{suffix}"), suffix + 1
    shutil.move(self.step_dir(step), target)
    self._manager.reload()
    return target

  def set_aside_damaged(self, newest_good: int | None, log: Callable[[str], None]) -> None:
    """Move every step newer than newest_good (every step, if None) to <directory>_damaged/, each
    with a line in `log`: a fallback's damaged steps make way for the steps written again."""
    for damaged in [s for s in self.all_steps() if newest_good is None or s > newest_good]:
      log(f"moved damaged checkpoint step {damaged} to {self.quarantine(damaged)}")

  def close(self) -> None:
    """Finish every save (manifests included) and release the manager. A write error already
    raised by save() is not raised a second time (the caller is handling it)."""
    raised_before = self._failed
    error = None
    try:
      self._finish_pending()
      self._manager.wait_until_finished()
    except Exception as exc:  # noqa: BLE001
      error = self._write_error(max(self.all_steps(), default=0), exc)
    try:
      self._manager.close()
    except Exception as exc:  # noqa: BLE001
      if error is None and self._failed is None:
        error = exc
    if error is not None and not (raised_before is not None and error is raised_before):
      raise error

  # -- restore --
  def restore_meta(self, step: int, verify: bool = False) -> dict:
    """The step's meta item (JSON); verify: check it against the manifest first."""
    path = os.path.join(self.step_dir(step), META, "metadata")
    if verify and os.path.isdir(os.path.dirname(path)):
      self.verify(step, [META])
    try:
      with open(path) as f:
        return json.load(f)
    except FileNotFoundError:
      raise CheckpointCorruptError(
        f"checkpoint step {step} in {self.directory} has no metadata item "
        f"(incomplete or not a graphbridge checkpoint)",
        step,
        META,
      ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
      raise CheckpointCorruptError(
        f"checkpoint step {step}: metadata is corrupt ({exc})", step, META
      ) from None

  def check_complete(self, step: int) -> dict:
    """Meta of a step whose every listed item is present and whose meta matches its checksum;
    CheckpointCorruptError otherwise."""
    meta = self.restore_meta(step, verify=True)
    missing = [
      i
      for i in meta.get("items", []) + [TRAIN]
      if not os.path.isdir(os.path.join(self.step_dir(step), i))
    ]
    if missing:
      raise CheckpointCorruptError(
        f"checkpoint step {step} is incomplete: missing item(s) {', '.join(missing)}",
        step,
        missing[0],
      )
    return meta

  def latest_complete_step(self, log: Callable[[str], None] = logging.warning) -> int | None:
    """Newest step that passes check_complete (older ones are tried in turn; each step skipped is
    one line in `log`)."""
    problems = []
    for step in reversed(self.all_steps()):
      try:
        self.check_complete(step)
      except CheckpointError as exc:
        problems.append(str(exc))
        continue
      for problem in problems:
        log(skipped_line(problem, step))
      return step
    return None

  def check_step(self, step: int) -> None:
    """CheckpointError unless `step` is one of the saved steps (naming them)."""
    steps = self.all_steps()
    if step not in steps:
      raise CheckpointError(
        f"no step {step} in {self.directory} (steps: {', '.join(map(str, steps)) or 'none'})"
      )

  def newest_usable(
    self,
    restore: Callable[[int], Any],
    step: int | None = None,
    log: Callable[[str], None] = logging.warning,
  ) -> tuple[Any, int | None, list[str]]:
    """(restore(s), s, problems) for `step`, or for the newest step whose restore succeeds.

    Without an explicit step, a step whose restore raises CheckpointCorruptError (incomplete,
    checksum mismatch, unreadable) is skipped with one line in `log` naming it and what is wrong,
    and the next older one is tried; (None, None, problems) if none works. An explicit step (one
    that does not exist: CheckpointError naming the steps there are), and any other
    CheckpointError (another graph, config or loss plan: CheckpointMismatchError), always raise:
    no older step would be right either."""
    if step is not None:
      self.check_step(step)
    candidates = [step] if step is not None else list(reversed(self.all_steps()))
    problems: list[str] = []
    for candidate in candidates:
      try:
        found = restore(candidate)
      except CheckpointCorruptError as exc:
        if step is not None:
          raise
        problems.append(" ".join(str(exc).split()))
        continue
      for problem in problems:
        log(skipped_line(problem, candidate))
      return found, candidate, problems
    return None, None, problems

  def _restore_item(self, step: int, name: str) -> dict:
    directory = os.path.join(self.step_dir(step), name)
    if not os.path.isdir(directory):
      raise CheckpointCorruptError(
        f"checkpoint step {step} has no item {name!r} (items: "
        f"{', '.join(sorted(os.listdir(self.step_dir(step))))})",
        step,
        name,
      )
    self.verify(step, [name])
    try:
      with _orbax_errors_only(), ocp.PyTreeCheckpointer() as checkpointer:
        metadata = checkpointer.metadata(directory)
        metadata = getattr(metadata, "item_metadata", metadata)  # StepMetadata in newer orbax
        tree = getattr(metadata, "tree", metadata)
        return checkpointer.restore(directory, args=_numpy_restore_args(tree))
    except CheckpointError:
      raise
    except Exception as exc:  # orbax/tensorstore raise many types for damaged files
      raise CheckpointCorruptError(
        f"checkpoint step {step}: item {name!r} is corrupt or unreadable "
        f"({type(exc).__name__}: {str(exc)[:300]})",
        step,
        name,
      ) from exc

  def restore_edges(self, step: int, edges: Iterable[str] | None = None) -> dict[str, dict]:
    """{edge_name: {"params":..., "opt":...}} as numpy, for `edges` (default: all saved edges)."""
    meta = self.restore_meta(step)
    saved = [edge_from_item_name(i).name for i in meta["items"]]
    wanted = saved if edges is None else list(edges)
    for e in wanted:
      if e not in saved:
        raise CheckpointMismatchError(
          f"checkpoint step {step} has no edge {e} (saved edges: "
          f"{', '.join(saved)}); it was written for another graph"
        )
    return {e: self._restore_item(step, edge_item_name(e)) for e in wanted}

  def restore_item(self, step: int, name: str) -> dict:
    """One named item of a step as numpy (see save_items)."""
    return self._restore_item(step, name)

  def restore_train(self, step: int) -> dict:
    return self._restore_item(step, TRAIN)


def warn(message: str) -> None:
  """The default `log` of a restore: one line on stderr (process 0), whatever the levels of absl
  or logging say, so a fallback to an older step is never silent."""
  if jax.process_index() == 0:
    print(message, file=sys.stderr, flush=True)


def skipped_line(problem: str, used: int) -> str:
  """The line a fallback prints for a damaged step it skips: what is wrong, and the step used."""
  return f"{problem}; skipped it, using checkpoint step {used} (the newest that verifies)"


def read_workdir(workdir: str):
  """(workdir/checkpoints, a read-only Checkpoints over it); CheckpointError if it is missing."""
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    raise CheckpointError(f"no checkpoints in {workdir!r} (expected {directory}); train first")
  return directory, Checkpoints(directory, max_to_keep=None, async_save=False, read_only=True)
