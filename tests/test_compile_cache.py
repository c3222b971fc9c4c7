"""The persistent compilation cache: on by default in a folder the environment can move, off with
one setting, a folder the user gave JAX kept, and a second process of the same program reads it
instead of compiling."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import pytest

from conftest import REPO_ROOT
from graphbridge.training import compile_cache


def test_folder_from_setting_environment_and_default(monkeypatch, tmp_path):
  monkeypatch.delenv(compile_cache.ENV, raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert compile_cache.folder() == str(tmp_path / "xdg" / "graphbridge" / "jax")
  monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "env"))
  assert compile_cache.folder() == str(tmp_path / "env")
  assert compile_cache.folder(str(tmp_path / "arg")) == str(tmp_path / "arg")
  for off in ("off", "OFF", "none", "0", "false"):
    assert compile_cache.folder(off) is None
  monkeypatch.setenv(compile_cache.ENV, "off")
  assert compile_cache.folder() is None


@pytest.fixture
def no_cache():
  """JAX without a cache folder for the test (earlier tests' entry points may have set one),
  restored afterwards."""
  before, ours = jax.config.jax_compilation_cache_dir, dict(compile_cache._ours)
  jax.config.update("jax_compilation_cache_dir", None)
  compile_cache._ours.clear()
  yield
  jax.config.update("jax_compilation_cache_dir", before)
  compile_cache._ours.clear()
  compile_cache._ours.update(ours)
  compile_cache._reset()


def test_enable_points_jax_at_the_folder_and_off_undoes_it(tmp_path, no_cache):
  where = compile_cache.enable(str(tmp_path / "cache"))
  assert where == str(tmp_path / "cache") and os.path.isdir(where)
  assert jax.config.jax_compilation_cache_dir == where
  jax.jit(lambda x: x * 3.0 + 1.0)(jax.numpy.ones(7)).block_until_ready()
  assert os.listdir(where), "a compiled program was not written to the cache"
  assert compile_cache.enable("off") is None
  assert jax.config.jax_compilation_cache_dir is None
  jax.config.update("jax_compilation_cache_dir", str(tmp_path / "users"))  # the user's own
  assert compile_cache.enable(str(tmp_path / "ours")) == str(tmp_path / "users")
  assert not os.path.exists(tmp_path / "ours")


def test_an_uncreatable_folder_warns_and_runs_without_cache(tmp_path, no_cache):
  blocker = tmp_path / "file"
  blocker.write_text("not a folder")
  assert compile_cache.enable(str(blocker / "cache")) is None
  assert jax.config.jax_compilation_cache_dir is None


_PROGRAM = """
import sys
import jax, jax.numpy as jnp
from jax import monitoring
from graphbridge.training import compile_cache
events = []
monitoring.register_event_listener(lambda name, **kw: events.append(name))
compile_cache.enable(sys.argv[1])
jax.jit(lambda x: jnp.tanh(x @ x.T).sum(axis=0)).lower(jnp.ones((64, 32))).compile()
count = lambda what: sum(e.endswith(what) for e in events)
print(count("/cache_hits"), count("/cache_misses"))
"""


def test_a_second_process_reads_the_cache(tmp_path):
  """The first process misses and writes; the second, same program, only hits."""
  cache = str(tmp_path / "cache")
  env = dict(os.environ, PYTHONPATH=REPO_ROOT)
  counts = []
  for _ in range(2):
    done = subprocess.run(
      [sys.executable, "-c", _PROGRAM, cache],
      check=True,
      env=env,
      timeout=300,
      capture_output=True,
      text=True,
    )
    counts.append(tuple(int(v) for v in done.stdout.split()[-2:]))
  (hits0, misses0), (hits1, misses1) = counts
  assert hits0 == 0 and misses0 >= 1 and os.listdir(cache)
  assert hits1 >= 1 and misses1 == 0
