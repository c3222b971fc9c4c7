"""Every ```python and ```bash / ```sh block of README.md, docs/*.md and examples/README.md runs and
succeeds (tests/doc_blocks.py says how blocks are found, marked and run), and the pages stay
current: docs/config.md is what its generator prints, no page names an issue or a module that no
longer exists, README.md stays short and names the test command CI runs.

Before a block runs, the harness makes these changes (and no others):

- a config by name or file (`--config=digits`, `--config=configs/digits.py`; also npz, dmvae,
  graft_audio, compare, mv6, mv8, fsdd_chain) runs its `:tiny` variant (30 steps, small
  translators);
- `launch/compare.py` / `graphbridge-compare` also get `--config.compare.seeds=1` and, unless the
  command names them, `--config.compare.strategies=graph,pivot`;
- train, graft and evaluate commands outside README.md get `--noplots` (tests/test_figures.py and
  tests/test_plots.py test the figures; README's main job still draws them);
- paths under `/tmp/` (workdirs, files) move under this run's temporary folder;
- `pip install ...` is not run: each extra it names must exist in setup.py, and a quoted wheel glob
  (which the shell would not expand) fails. This check covers skipped blocks too.

Python blocks are written tiny already (`"digits:tiny"`), with a comment on the real run. Blocks run
in a working folder holding links to the repository's top-level entries, so `launch/...`,
`configs/...` and `examples/...` resolve and files a block writes stay out of the repository. All
blocks share one JAX compilation cache, and a page that uses a workdir another page trains (RECIPES)
gets it trained first, so pages also run alone (`pytest tests/test_docs.py -k api`).
"""

from __future__ import annotations

import ast
import concurrent.futures
import glob
import importlib
import json
import os
import re
import subprocess
import sys
import time

import pytest

from conftest import REPO_ROOT

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import doc_blocks  # noqa: E402

PAGES = (
  ["README.md"]
  + sorted(
    os.path.relpath(p, REPO_ROOT) for p in glob.glob(os.path.join(REPO_ROOT, "docs", "*.md"))
  )
  + ["examples/README.md"]
)
TINY_CONFIGS = "digits|npz|graft_audio|dmvae|compare|mv6|mv8|fsdd_chain"
CONFIG_FLAG = re.compile(rf"(--config=(?:configs/)?(?:{TINY_CONFIGS})(?:\.py)?)(?=[\s'\";&|)]|$)")
COMPARE = re.compile(r"(launch/compare\.py|graphbridge-compare)\b")
WRITES_FIGURES = re.compile(
  r"(launch/(train|graft|evaluate)\.py|graphbridge-(train|graft|evaluate))\b"
)
PIP_INSTALL = re.compile(r"\bpip install ([^&;|\n#]*)")
# workdirs a page may use without training them: (the page that trains it, the command)
RECIPES = {
  "gb": ("README.md", "python launch/train.py --config=configs/digits.py:tiny --workdir={tmp}/gb"),
  "gb_base": (
    "docs/grafting.md",
    "python launch/graft.py --base --config=configs/graft_audio.py:tiny --workdir={tmp}/gb_base",
  ),
}


def setup_extras() -> set[str]:
  """The keys of extras_require in setup.py."""
  with open(os.path.join(REPO_ROOT, "setup.py")) as f:
    tree = ast.parse(f.read())
  for node in ast.walk(tree):
    if isinstance(node, ast.keyword) and node.arg == "extras_require":
      return {ast.literal_eval(k) for k in node.value.keys}
  raise AssertionError("setup.py has no extras_require")


def check_pip_install(args: str, where: str) -> None:
  """What a documented `pip install ARGS` asks for exists (the harness never installs)."""
  extras = setup_extras()
  for arg in args.split():
    if arg.startswith(("'", '"')) and "*" in arg:
      raise AssertionError(
        f"{where}: pip install {arg}: a quoted glob is not expanded by the shell"
      )
    bare = arg.strip("'\"")
    ours = bare.startswith((".[", "graphbridge[", "graphbridge-")) or (
      bare.endswith("]") and ".whl[" in bare
    )
    if ours and "[" in bare:
      for extra in bare[bare.index("[") + 1 : -1].split(","):
        assert extra in extras, f"{where}: pip install {arg}: no extra {extra!r} in setup.py"


def substitute(block: doc_blocks.Block, tmp: str) -> str:
  """The block as the harness runs it (the table in this module's docstring)."""
  if block.language == "bash":  # also where skipped: what it asks pip for must exist
    for args in PIP_INSTALL.findall(block.code.replace("\\\n", " ")):
      check_pip_install(args, block.where)
  code = block.code.replace("/tmp/", f"{tmp}/")
  if block.language == "python" or block.skip:
    return code
  code = code.replace("\\\n", " ")  # one line per command
  lines = []
  for line in code.splitlines():
    command, hash_, comment = line.partition(" #")
    command = PIP_INSTALL.sub("true ", command)
    command = CONFIG_FLAG.sub(r"\1:tiny", command)
    if WRITES_FIGURES.search(command) and "--noplots" not in command and block.page != "README.md":
      command = command.rstrip() + " --noplots"
    if COMPARE.search(command):
      command = command.rstrip() + " --config.compare.seeds=1"
      if "--config.compare.strategies" not in command:
        command += " --config.compare.strategies=graph,pivot"
    lines.append(command + hash_ + comment)
  return "\n".join(lines) + "\n"


def page_blocks(page: str) -> list[doc_blocks.Block]:
  with open(os.path.join(REPO_ROOT, page)) as f:
    return doc_blocks.blocks(page, f.read())


def tmp_names(page: str) -> set[str]:
  """The /tmp/<name> entries the page's runnable blocks use, plus the RECIPES workdirs it names."""
  code = " ".join(b.code for b in page_blocks(page) if not b.skip)
  names = set(re.findall(r"/tmp/([\w.-]+)", code))
  return names


def components(pages: list[str]) -> list[list[str]]:
  """Pages joined when they share a /tmp name (a workdir one trains and another reads): each group
  runs in PAGES order, groups run side by side."""
  groups: list[tuple[set[str], list[str]]] = []
  for page in pages:
    names = tmp_names(page)
    joined = [g for g in groups if g[0] & names]
    merged = (set(names), [page])
    for g in joined:
      merged[0].update(g[0])
      merged[1].extend(g[1])
      groups.remove(g)
    groups.append(merged)
  return [sorted(g[1], key=PAGES.index) for g in groups]


def _link_repository(work: str) -> None:
  os.makedirs(work)
  for entry in os.listdir(REPO_ROOT):
    if not entry.startswith("."):
      os.symlink(os.path.join(REPO_ROOT, entry), os.path.join(work, entry))


def run_page(page: str, root: str, tmp: str, env: dict) -> tuple[int, str, float]:
  """(exit status, output, seconds) of one page's blocks, RECIPES workdirs prepared first."""
  start = time.perf_counter()
  work = os.path.join(root, "work", page.replace("/", "_"))
  _link_repository(work)
  names = tmp_names(page)
  for name, (owner, command) in RECIPES.items():
    if owner != page and name in names and not os.path.isdir(os.path.join(tmp, name)):
      done = subprocess.run(
        ["bash", "-c", command.format(tmp=tmp)],
        cwd=work,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
      )
      if done.returncode:
        return done.returncode, f"preparing /tmp/{name}:\n{done.stderr[-4000:]}", 0.0
  spec = {
    "page": page,
    "cwd": work,
    "env": env,
    "blocks": [{**vars(b), "code": substitute(b, tmp)} for b in page_blocks(page)],
  }
  spec_path = os.path.join(root, page.replace("/", "_") + ".json")
  with open(spec_path, "w") as f:
    json.dump(spec, f)
  done = subprocess.run(
    [sys.executable, os.path.join(REPO_ROOT, "tests", "doc_blocks.py"), spec_path],
    env={**os.environ, **env},
    capture_output=True,
    text=True,
  )
  return done.returncode, done.stdout + done.stderr[-4000:], time.perf_counter() - start


@pytest.fixture(scope="module")
def page_results(request, tmp_path_factory):
  """Every selected page run once: groups of pages that share workdirs side by side, on
  GRAPHBRIDGE_DOCTEST_WORKERS processes (default 2; compiling is single-threaded)."""
  selected = [
    item.callspec.params["page"]
    for item in request.session.items
    if item.originalname == "test_page_blocks_run"
  ]
  pages = [p for p in PAGES if p in selected and page_blocks(p)]
  root = str(tmp_path_factory.mktemp("docs"))
  tmp, cache = os.path.join(root, "tmp"), os.path.join(root, "jax_cache")
  os.makedirs(tmp)
  env = {
    "PYTHONPATH": os.pathsep.join(filter(None, [REPO_ROOT, os.environ.get("PYTHONPATH")])),
    "MPLBACKEND": "Agg",
    # one compilation cache for every block: a program compiled once is read back after
    "JAX_COMPILATION_CACHE_DIR": cache,
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "GRAPHBRIDGE_COMPILE_CACHE": cache,
  }
  results: dict[str, tuple[int, str, float]] = {}

  def run_group(group: list[str]) -> None:
    for page in group:
      results[page] = run_page(page, root, tmp, env)

  start = time.perf_counter()
  groups = sorted(components(pages), key=len, reverse=True)
  workers = int(os.environ.get("GRAPHBRIDGE_DOCTEST_WORKERS", "2"))
  with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
    list(pool.map(run_group, groups))
  print(
    f"\ndoc blocks: {len(pages)} pages in {time.perf_counter() - start:.1f}s wall, groups {groups}"
  )
  return results


@pytest.mark.parametrize("page", PAGES)
def test_page_blocks_run(page, page_results):
  if page not in page_results:
    pytest.skip(f"{page} has no python or shell blocks")
  rc, output, seconds = page_results[page]
  log = [line for line in output.splitlines() if line.startswith(("OK ", "SKIP", "CPU"))]
  print(f"\n{page}: {seconds:.1f}s\n" + "\n".join(log))
  assert rc == 0, output[-12000:]


def test_config_reference_is_generated():
  """docs/config.md is exactly what `python -m graphbridge.runs.config_reference` prints."""
  config_reference = importlib.import_module("graphbridge.runs.config_reference")
  with open(os.path.join(REPO_ROOT, "docs", "config.md")) as f:
    assert f.read() == config_reference.markdown(), (
      "docs/config.md is stale: python -m graphbridge.runs.config_reference > docs/config.md"
    )


def _doc_texts() -> dict[str, str]:
  texts = {}
  for page in PAGES:
    with open(os.path.join(REPO_ROOT, page)) as f:
      texts[page] = f.read()
  return texts


def test_pages_name_no_issue_numbers():
  for page, text in _doc_texts().items():
    for n, line in enumerate(text.splitlines(), 1):
      assert not re.search(r"issue #|#1[0-9]", line), f"{page}:{n}: {line}"


def test_named_modules_and_files_exist():
  """Every `graphbridge.x.y` and `graphbridge/x/y.py` a page names is there (renames leave none)."""
  for page, text in _doc_texts().items():
    for ref in sorted(set(re.findall(r"(?<![\w./-])graphbridge[./][A-Za-z_][\w./]*", text))):
      ref = ref.rstrip("./")
      if "/" in ref:
        assert os.path.exists(os.path.join(REPO_ROOT, ref)), f"{page}: no file {ref}"
        continue
      parts = ref.split(".")
      for i in range(len(parts), 0, -1):
        try:
          obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
          continue
        for attr in parts[i:]:
          assert hasattr(obj, attr), f"{page}: {ref}: {'.'.join(parts[:i])} has no {attr}"
          obj = getattr(obj, attr)
        break


def test_relative_links_resolve():
  for page, text in _doc_texts().items():
    prose = re.sub(r"`[^`\n]*`", "", doc_blocks.FENCE.sub("", text))  # links live in prose
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", prose):
      if "://" in target:
        continue
      path = os.path.normpath(os.path.join(REPO_ROOT, os.path.dirname(page), target))
      assert os.path.exists(path), f"{page}: link to {target}, no such file"


def test_readme_is_short_and_names_the_ci_test_command():
  with open(os.path.join(REPO_ROOT, "README.md")) as f:
    readme = f.read()
  assert len(readme.splitlines()) <= 150
  with open(os.path.join(REPO_ROOT, ".ci", "run")) as f:
    ci_test_command = f.read().strip().splitlines()[-1]
  assert ci_test_command in readme, f"README.md should give CI's test command {ci_test_command!r}"


def _docstring(relpath: str) -> str:
  with open(os.path.join(REPO_ROOT, relpath)) as f:
    return ast.get_docstring(ast.parse(f.read())) or ""


def test_help_and_configs_point_to_the_docs():
  """--help prints each console script's docstring: the config reference is named there; the
  compare config lists the strategies its default runs."""
  for cli in ("train", "graft", "compare", "evaluate"):
    assert "docs/config.md" in _docstring(f"graphbridge/cli/{cli}.py"), cli
  defaults = importlib.import_module("graphbridge.defaults")
  strategies = next(f.default for f in defaults.FIELDS if f.key == "compare.strategies")
  compare_doc = _docstring("configs/compare.py")
  for name in strategies.split(","):
    assert name in compare_doc, f"configs/compare.py's docstring does not list {name}"


def test_every_example_runs_from_examples_readme():
  run = " ".join(b.code for b in page_blocks("examples/README.md") if not b.skip)
  for path in sorted(glob.glob(os.path.join(REPO_ROOT, "examples", "*.py"))):
    assert f"examples/{os.path.basename(path)}" in run, f"{path} is not run by examples/README.md"


def test_markers_and_substitutions():
  text = (
    "```python\nx = 1\n```\n<!-- doctest: skip (needs a GPU) -->\n\n```sh\nnvidia-smi\n```\n"
    "<!-- doctest: requires torch -->\n```python\nimport torch\n```\n```text\nout\n```\n"
  )
  got = doc_blocks.blocks("p.md", text)
  assert [(b.language, b.skip, b.requires) for b in got] == [
    ("python", "", ""),
    ("bash", "needs a GPU", ""),
    ("python", "", "torch"),
  ]
  with pytest.raises(ValueError, match="needs a reason"):
    doc_blocks.blocks("p.md", "<!-- doctest: skip -->\n```sh\ntrue\n```\n")
  with pytest.raises(ValueError, match="unreadable marker"):
    doc_blocks.blocks("p.md", "<!-- doctest: skp (x) -->\n```sh\ntrue\n```\n")
  block = doc_blocks.Block(
    "p.md",
    1,
    "bash",
    "pip install -e .[plots] && python launch/train.py --config=configs/digits.py "
    "--workdir=/tmp/gb  # note\npython launch/compare.py --config=compare --workdir=/tmp/c\n",
  )
  assert substitute(block, "/T").splitlines() == [
    "true && python launch/train.py --config=configs/digits.py:tiny --workdir=/T/gb --noplots"
    " # note",
    "python launch/compare.py --config=compare:tiny --workdir=/T/c --config.compare.seeds=1 "
    "--config.compare.strategies=graph,pivot",
  ]
  with pytest.raises(AssertionError, match="quoted glob"):
    check_pip_install('"graphbridge-*.whl[plots]"', "p.md")
  with pytest.raises(AssertionError, match="no extra 'gpu'"):
    check_pip_install(".[gpu]", "p.md")
