"""The types of a config declaration: a Field and the checks its range is written with."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable


@dataclasses.dataclass(frozen=True)
class Field:
  """One config field. choices: the values it may take; items: the values each item of a
  comma-separated list may take; check(value) -> bool with `must` saying what it must be."""

  key: str
  default: Any
  doc: str
  choices: tuple | None = None
  items: tuple | None = None
  check: Callable[[Any], bool] | None = None
  must: str = ""


def _int(v) -> bool:
  return (isinstance(v, int) and not isinstance(v, bool)) or (
    isinstance(v, float) and v.is_integer()
  )


def at_least(low, integer: bool = False) -> tuple[Callable[[Any], bool], str]:
  what = f"{'an integer' if integer else 'a number'} >= {low}"
  return (lambda v: (_int(v) if integer else isinstance(v, (int, float))) and v >= low), what


def above(low) -> tuple[Callable[[Any], bool], str]:
  return (lambda v: isinstance(v, (int, float)) and v > low), f"> {low}"


def _field(key, default, doc, *, choices=None, items=None, check=None) -> Field:
  test, must = check if check is not None else (None, "")
  return Field(key, default, doc, choices, items, test, must)


POSITIVE_INT = at_least(1, integer=True)
COUNT = at_least(0, integer=True)
NON_NEGATIVE = at_least(0)
