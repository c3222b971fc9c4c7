"""The training loop's progress line: a smoothed rate and ETA that one slow interval (a checkpoint
save, a validation) moves less than it moves that interval's own rate."""

from __future__ import annotations

import pytest

from graphbridge.training import loop


def test_rate_is_per_interval_and_the_line_is_smoothed(monkeypatch):
  clock = iter(
    [0.0, 1.0, 1.0, 2.0, 3.0, 13.0, 14.0, 15.0]
  )  # init, compiled, then one time per rate()
  monkeypatch.setattr(loop.time, "perf_counter", lambda: next(clock))
  speed = loop.Speed(0)
  speed.compiled(1)  # compile took 1 s; t_last = 1.0
  assert speed.compile_seconds == 1.0
  assert speed.rate(11) == pytest.approx(10.0)  # 10 steps in 1 s
  assert speed.text(10.0, 11, 111) == "10.0 steps/s, eta 10s"
  assert speed.rate(21) == pytest.approx(10.0)
  slow = speed.rate(31)  # 10 steps in 10 s (a save): the interval's rate drops to 1/s
  assert slow == pytest.approx(1.0)
  # the line: seconds per step 0.7 * 0.1 + 0.3 * 1.0 = 0.37 -> 2.7 steps/s, eta 80 * 0.37 s
  assert speed.text(slow, 31, 111) == "2.7 steps/s, eta 30s"
  assert speed.rate(31) != speed.rate(31)  # no step since: NaN, nothing changed


def test_first_line_after_compiling_says_so():
  speed = loop.Speed(0)
  speed.compiled(1)
  assert speed.text(speed.rate(1), 1, 10).startswith("compiled in ")
