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
import time
from typing import Any, Callable, Mapping, Sequence

import jax

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
  """Steps per second between log points, and the ETA of the progress line."""

  def __init__(self, start: int):
    self.t_start = self.t_last = time.perf_counter()
    self.last = start
    self.compile_seconds = 0.0

  def compiled(self, done: int) -> None:
    """The first step finished (compiled and ran): rates count from here."""
    self.compile_seconds = time.perf_counter() - self.t_start
    self.t_last, self.last = time.perf_counter(), done

  def rate(self, done: int) -> float:
    """Steps/s since the previous call (NaN right after compiling: no step timed yet)."""
    now = time.perf_counter()
    rate = (done - self.last) / max(now - self.t_last, 1e-9) if done > self.last else float("nan")
    self.t_last, self.last = now, done
    return rate

  def text(self, rate: float, done: int, total: int) -> str:
    if rate != rate:
      return f"compiled in {self.compile_seconds:.1f}s"
    return f"{rate:.1f} steps/s, eta {format_eta((total - done) / rate)}"


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
  stop: Callable[[int, State], bool] | None = None,
) -> LoopResult:
  """Steps start .. cadence.total - 1 (0-based) of `step(state, i) -> (state, metrics)`.

  values(done, state, metrics): the numbers logged after `done` steps (raise there on a non-finite
    loss); "steps_per_sec" is added. line(values): the progress line's text between the step count
    and the speed; a validation score ("val/mAP") is always printed.
  save(done, state): a checkpoint, at the cadence's steps. before_step(i, state): e.g. a loss-weight
    phase switch. at_end(state): after the last step, before its checkpoint (e.g. keep the best
    validated params). close: run when the loop ends, also on errors (writer closed too).
    stop(done, state): after each step; True ends the run there (early stopping): at_end runs and
    the last checkpoint is saved as step cadence.total, so the run reads as finished (at_end is
    expected to set the state's step counter to match)."""
  metrics, logged = None, {}
  steps_run = max(cadence.total - start, 0)
  speed = Speed(start)
  try:
    for i in range(start, cadence.total):
      if before_step is not None:
        state = before_step(i, state)
      state, metrics = step(state, i)
      done = i + 1
      if i == start:
        jax.block_until_ready(state["step"])
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
          speed_text = speed.text(rate, done, cadence.total)
          log(f"step {done}/{cadence.total}  {line(logged)}{val}  {speed_text}")
      stopped = done < cadence.total and stop is not None and stop(done, state)
      if (done == cadence.total or stopped) and at_end is not None:
        state = at_end(state)
      if save is not None and (cadence.saves(done) or stopped):
        save(cadence.total if stopped else done, state)
      if stopped:
        steps_run = done - start
        break
  finally:  # also on errors: saves in flight finish, so the last good checkpoint stays usable
    writer.close()
    for fn in close:
      fn()
  return LoopResult(
    state,
    metrics,
    logged,
    steps_run,
    time.perf_counter() - speed.t_start,
    speed.compile_seconds,
  )
