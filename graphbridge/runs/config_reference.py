"""docs/config.md, generated from the one declaration of the config (defaults.FIELDS).

  python -m graphbridge.runs.config_reference > docs/config.md

tests/test_docs.py fails when docs/config.md differs from what this prints, so the reference
cannot drift from the code.
"""

from __future__ import annotations

from graphbridge import defaults
from graphbridge.strategies import registry as strategies

HEADER = """# Config reference

Every field a run reads: its default, what it does, and what it may be. Generated from
`graphbridge/defaults.py` by `python -m graphbridge.runs.config_reference` (a test checks it is
current). Override any field on the command line (`--config.train.steps=1000`) or in Python
(`graphbridge.config("digits", **{"train.steps": 1000})`); a typo fails before anything runs, naming
the closest field.
"""


def _value(v) -> str:
  return f"`{v!r}`" if not isinstance(v, str) else (f"`{v!r}`" if v else '`""`')


def _allowed(field: defaults.Field) -> str:
  if field.key == "strategy":
    return (
      "registered: "
      + ", ".join(f"`{n}`" for n in strategies.names())
      + ", or `package.module[:ATTR]`"
    )
  if field.choices:
    return "one of " + ", ".join(f"`{c}`" if c else '`""`' for c in field.choices)
  if field.items:
    return "comma-separated, each of " + ", ".join(f"`{c}`" for c in field.items)
  return field.must


def _row(field: defaults.Field) -> str:
  doc = field.doc.replace("|", "\\|")
  return (
    f"| `{field.key}` | {_value(field.default)} | {doc} | {_allowed(field).replace('|', '/')} |"
  )


def markdown() -> str:
  parts = [HEADER]
  by_section: dict[str, list[defaults.Field]] = {}
  for field in defaults.FIELDS:
    section = field.key.split(".")[0] if "." in field.key else ""
    by_section.setdefault(section, []).append(field)
  for section, title in defaults.SECTIONS.items():
    if section not in by_section:
      continue
    parts.append(f"\n## {title}\n\n| field | default | meaning | allowed |\n|---|---|---|---|\n")
    parts.append("\n".join(_row(f) for f in by_section[section]) + "\n")
  parts.append(
    "\n## The graft block (configs/graft_audio.py; launch/graft.py)\n\n"
    "| field | default | meaning | allowed |\n|---|---|---|---|\n"
  )
  parts.append("\n".join(_row(f) for f in defaults.GRAFT_FIELDS) + "\n")
  return "".join(parts)


if __name__ == "__main__":
  print(markdown(), end="")
