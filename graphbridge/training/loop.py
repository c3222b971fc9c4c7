"""The training loop every model shares: translator graphs (trainer.py), DMVAE, any strategy's own.

A model supplies its jitted step and how to read, print and save its state; the loop owns the
rest: the step counter, compile time, the logging and checkpoint cadence, the rate and ETA of the
progress line, metrics.jsonl / TensorBoard, and closing everything when a step raises.

  result = loop.run(state, start, loop.Cadence.from_config(config, total), step,
                    values=..., line=..., writer=writers.for_run(workdir, config), log=log,
                    save=...)
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from typing import Any, Callable, Mapping, Sequence

import jax

from graphbridge.core.errors import DeviceMemoryError, RunInterrupted
from graphbridge.training.writers import MetricWriter, format_eta

State = Any


@dataclasses.dataclass(frozen=True)
class Cadence:
  """When the loop logs (metrics.jsonl), prints (console) and checkpoints; the last step always
  does all three. checkpoint_every 0: only the last step."""

  total: int
  log_every: int = 10
  print_every: int = 50
  checkpoint_every: int = 0

  @classmethod
  def from_config(cls, config, total: int) -> "Cadence":
    train = config.train
    return cls(
      int(total),
      max(int(train.log_every), 1),
      max(int(train.print_every), 1),
      int(train.checkpoint_every),
    )

  def logs(self, done: int) -> bool:
    return done % self.log_every == 0 or done == self.total

  def prints(self, done: int) -> bool:
    return done % self.print_every == 0 or done == self.total

  def saves(self, done: int) -> bool:
    return (self.checkpoint_every > 0 and done % self.checkpoint_every == 0) or done == self.total


@dataclasses.dataclass
class LoopResult:
  state: State
  metrics: Any  # the last step's raw metrics (None if no step ran)
  values: dict  # the last logged values
  steps_run: int
  seconds: float  # the loop's wall time, compilation included
  compile_seconds: float  # the first step's (compilation and one step)


class Speed:
  """Steps per second between log points, and the progress line's rate and ETA, smoothed: an
  exponential average of the seconds per step over log intervals (SMOOTHING of the newest), so an
  interval that also saved a checkpoint or validated moves the line less than it moves the
  interval's own rate (metrics.jsonl keeps that one)."""

  SMOOTHING = 0.3

  def __init__(self, start: int):
    self.t_start = self.t_last = time.perf_counter()
    self.last = start
    self.compile_seconds = 0.0
    self.seconds_per_step = float("nan")

  def compiled(self, done: int) -> None:
    """The first step finished (compiled and ran): rates count from here."""
    self.compile_seconds = time.perf_counter() - self.t_start
    self.t_last, self.last = time.perf_counter(), done

  def rate(self, done: int) -> float:
    """Steps/s since the previous call (NaN right after compiling: no step timed yet)."""
    now = time.perf_counter()
    if done <= self.last:
      return float("nan")
    per_step = max(now - self.t_last, 1e-9) / (done - self.last)
    self.t_last, self.last = now, done
    a = self.SMOOTHING
    s = self.seconds_per_step
    self.seconds_per_step = per_step if s != s else (1 - a) * s + a * per_step
    return 1.0 / per_step

  def text(self, rate: float, done: int, total: int) -> str:
    if rate != rate:
      return f"compiled in {self.compile_seconds:.1f}s"
    smooth = 1.0 / self.seconds_per_step
    return f"{smooth:.1f} steps/s, eta {format_eta((total - done) * self.seconds_per_step)}"


# After Ctrl-C, how long closing (a checkpoint write in flight) may take before the loop stops
# waiting; the steps saved before stay intact, and an unfinished write never appears as a step.
INTERRUPT_WAIT_SECONDS = 30.0


class StopRequest:
  """Ctrl-C (SIGINT) while the loop runs: the first asks it to stop once the step or checkpoint
  write in progress is done (nothing is raised inside the step, so nothing can swallow it, as a
  garbage-collection callback would a KeyboardInterrupt); a second stops at once. Installed only
  in the main thread, and for the loop's life."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self) -> "StopRequest":
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGINT, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGINT, self._previous)
      self._previous = None

  def _handle(self, signum, frame) -> None:
    if self.requested:
      raise KeyboardInterrupt
    self.requested = True
    os.write(2, b"\ninterrupted: stopping after the current step (Ctrl-C again stops at once)\n")


def _memory_error(exc: BaseException, done: int) -> DeviceMemoryError | None:
  """DeviceMemoryError for XLA's RESOURCE_EXHAUSTED (a 40-line allocator report) at a step."""
  text = str(exc)
  if "RESOURCE_EXHAUSTED" not in text:
    return None
  first = next((line.strip() for line in text.splitlines() if line.strip()), text)
  return DeviceMemoryError(
    f"step {done} needs more device memory than there is ({first[:200]}); lower data.batch_size "
    "(each loss term compares every pair of a batch: memory grows with its square) or the model"
  )


def _close_within(fn: Callable[[], None], seconds: float, log: Callable[[str], None]) -> None:
  """fn() on a helper thread, waited for at most `seconds` (a save stuck after Ctrl-C must not
  hold the process); its error, if any, is logged rather than raised over the interruption."""
  failed = []

  def target():
    try:
      fn()
    except BaseException as exc:  # noqa: BLE001
      failed.append(exc)

  thread = threading.Thread(target=target, name="close-after-interrupt", daemon=True)
  thread.start()
  thread.join(seconds)
  if thread.is_alive():
    log(
      f"a checkpoint write was still running {seconds:.0f}s after the interruption; not waiting "
      "for it (it never appears as a step; the steps saved before are intact)"
    )
  elif failed:
    log(f"while stopping: {type(failed[0]).__name__}: {failed[0]}")


def run(
  state: State,
  start: int,
  cadence: Cadence,
  step: Callable[[State, int], tuple[State, Any]],
  *,
  values: Callable[[int, State, Any], dict],
  line: Callable[[Mapping], str],
  writer: MetricWriter,
  log: Callable[[str], None],
  save: Callable[[int, State], None] | None = None,
  before_step: Callable[[int, State], State] | None = None,
  at_end: Callable[[State], State] | None = None,
  close: Sequence[Callable[[], None]] = (),
  early_stop: Callable[[int, State], bool] | None = None,
) -> LoopResult:
  """Steps start .. cadence.total - 1 (0-based) of `step(state, i) -> (state, metrics)`.

  values(done, state, metrics): the numbers logged after `done` steps (raise there on a non-finite
    loss); "steps_per_sec" is added. line(values): the progress line's text between the step count
    and the speed; a validation score ("val/mAP") is always printed.
  save(done, state): a checkpoint, at the cadence's steps. before_step(i, state): e.g. a loss-weight
    phase switch. at_end(state): after the last step, before its checkpoint (e.g. keep the best
    validated params). close: run when the loop ends, also on errors (writer closed too).
    early_stop(done, state): after each step; True ends the run there (early stopping): at_end
    runs and the last checkpoint is saved as step cadence.total, so the run reads as finished
    (at_end is expected to set the state's step counter to match). Ctrl-C: RunInterrupted after
    the step (StopRequest)."""
  metrics, logged = None, {}
  steps_run = max(cadence.total - start, 0)
  speed = Speed(start)
  saved = start  # the last step checkpointed (handed to save(), or resumed from); 0: none
  stop = StopRequest()
  interrupted = False
  try:
    stop.__enter__()
    for i in range(start, cadence.total):
      if before_step is not None:
        state = before_step(i, state)
      done = i + 1
      try:
        state, metrics = step(state, i)
        if i == start:
          jax.block_until_ready(state["step"])
      except Exception as exc:  # noqa: BLE001  (re-raised unless the device ran out of memory)
        raise _memory_error(exc, done) or exc
      if i == start:
        speed.compiled(done)
      if cadence.logs(done):
        logged = values(done, state, metrics)
        rate = speed.rate(done)
        writer.write_scalars(done, {**logged, "steps_per_sec": rate})
        if cadence.prints(done) or "val/mAP" in logged:
          val = (
            f"  val mAP {logged['val/mAP']:.3f} (best {logged['val/best_mAP']:.3f} at "
            f"{int(logged['val/best_step'])})"
            if "val/mAP" in logged
            else ""
          )
          log(
            f"step {done}/{cadence.total}  {line(logged)}{val}  "
            f"{speed.text(rate, done, cadence.total)}"
          )
      stopped = done < cadence.total and early_stop is not None and early_stop(done, state)
      if (done == cadence.total or stopped) and at_end is not None:
        state = at_end(state)
      if save is not None and (cadence.saves(done) or stopped):
        save(cadence.total if stopped else done, state)
        saved = cadence.total if stopped else done
      if stopped:
        steps_run = done - start
        break
      if stop.requested and done < cadence.total:
        interrupted = True
        raise RunInterrupted(done, cadence.total, saved if save is not None else None)
  except KeyboardInterrupt:
    interrupted = True
    raise
  finally:  # also on errors: saves in flight finish, so the last good checkpoint stays usable
    stop.__exit__()  # from here a Ctrl-C interrupts closing itself
    writer.close()
    for fn in close:
      if interrupted:
        _close_within(fn, INTERRUPT_WAIT_SECONDS, log)
      else:
        fn()
  return LoopResult(
    state,
    metrics,
    logged,
    steps_run,
    time.perf_counter() - speed.t_start,
    speed.compile_seconds,
  )
