"""The code blocks of README.md and docs/*.md, and the driver that runs one page's blocks.

tests/test_docs.py runs every page through this file in a fresh process:

  python tests/doc_blocks.py PAGE.json

A page's ```python blocks share one namespace, top to bottom, as a notebook would run them; its
```bash / ```sh blocks run with bash (-e -o pipefail) in the same working directory, in page order
between them. Blocks of other languages (```text for output, ```toml, ...) are not run.

A block that cannot run in CI is marked on the line before it (blank lines between are allowed):

  <!-- doctest: skip (the reason) -->        never run; the reason is required
  <!-- doctest: requires torch -->          run only if `import torch` works, else skipped

Everything else must run and succeed. What the harness changes before running (tiny variants of
long runs, workdirs in a temporary folder, pip installs checked rather than run) is the table
SUBSTITUTIONS in tests/test_docs.py.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import resource
import subprocess
import sys
import time
import traceback

RUN_LANGUAGES = {"python": "python", "bash": "bash", "sh": "bash"}
FENCE = re.compile(r"^```([\w+-]*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
MARKER = re.compile(r"<!--\s*doctest:\s*(skip|requires)\s*(.*?)\s*-->\s*\Z", re.S)


@dataclasses.dataclass
class Block:
  page: str
  line: int  # 1-based line of the opening fence
  language: str  # "python" or "bash"
  code: str
  skip: str = ""  # the reason, when marked skip
  requires: str = ""  # a module that must import, when marked requires

  @property
  def where(self) -> str:
    return f"{self.page}:{self.line}"


def blocks(page: str, text: str) -> list[Block]:
  """Every fenced block of `text` in a language the harness runs, with its marker."""
  found = []
  for match in FENCE.finditer(text):
    language = RUN_LANGUAGES.get(match.group(1).lower())
    if language is None:
      continue
    before = text[: match.start()].rstrip()
    skip = requires = ""
    if before.endswith("-->"):  # a marker must be the last thing before the fence
      marker = MARKER.search(before[before.rfind("<!--") :])
      if marker and marker.group(1) == "skip":
        skip = marker.group(2).strip().strip("()").strip()
        if not skip:
          line = text.count("\n", 0, match.start()) + 1
          raise ValueError(f"{page}:{line}: skip needs a reason")
      elif marker:
        requires = marker.group(2).strip()
      elif "doctest:" in before[before.rfind("<!--") :]:
        raise ValueError(f"{page}: unreadable marker {before[before.rfind('<!--') :]!r}")
    found.append(
      Block(
        page,
        text.count("\n", 0, match.start()) + 1,
        language,
        match.group(2),
        skip=skip,
        requires=requires,
      )
    )
  return found


def _importable(name: str) -> bool:
  return importlib.util.find_spec(name) is not None


def run_page(spec: dict) -> int:
  """Run one page's blocks (spec: {"page", "cwd", "env", "blocks": [Block as dict]}); print one
  line per block, and the block and its error on failure. Returns the exit status."""
  os.chdir(spec["cwd"])
  os.environ.update(spec["env"])
  namespace: dict = {"__name__": "__doc__"}
  for item in spec["blocks"]:
    block = Block(**item)
    if block.skip:
      print(f"SKIP {block.where} ({block.skip})", flush=True)
      continue
    if block.requires and not _importable(block.requires):
      print(f"SKIP {block.where} (needs {block.requires}, not installed)", flush=True)
      continue
    start = time.perf_counter()
    if block.language == "python":
      try:
        exec(compile(block.code, block.where, "exec"), namespace)  # noqa: S102 (the documented block)
        ok, detail = True, ""
      except BaseException:  # noqa: BLE001  (reported with the block)
        ok, detail = False, traceback.format_exc()
    else:
      sys.stdout.flush()
      done = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", block.code],
        capture_output=True,
        text=True,
      )
      ok = done.returncode == 0
      detail = f"exit status {done.returncode}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    seconds = time.perf_counter() - start
    if not ok:
      print(f"FAIL {block.where} after {seconds:.1f}s\n--- block ---\n{block.code}--- error ---")
      print(detail, flush=True)
      return 1
    print(f"OK   {block.where} {block.language} {seconds:.1f}s", flush=True)
  used = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
  print(f"CPU  {sum(u.ru_utime + u.ru_stime for u in used):.1f}s", flush=True)
  return 0


if __name__ == "__main__":
  with open(sys.argv[1]) as f:
    sys.exit(run_page(json.load(f)))
