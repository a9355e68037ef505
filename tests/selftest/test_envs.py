"""Self-tests of the per-candidate environment cache: reuse, atomic readiness, LRU eviction."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from gemma2_regress.builds import envs


def _builder(size: int, calls: list[str]):
    def build(d: Path) -> envs.Env:
        calls.append(d.name)
        (d / "blob").write_bytes(b"x" * size)
        return envs.Env("/usr/bin/python3", [str(d)], {"size": size})

    return build


def _age(cache: envs.EnvCache, key: str, seconds_ago: float) -> None:
    t = time.time() - seconds_ago
    os.utime(cache.dir(key) / envs.READY, (t, t))


def test_reuse_and_hit(tmp_path):
    cache, calls = envs.EnvCache(tmp_path, 10**6), []
    env, hit, _ = cache.get("a", _builder(100, calls))
    env2, hit2, _ = cache.get("a", _builder(100, calls))
    assert (hit, hit2) == (False, True) and calls == ["a"]
    assert env2.pythonpath == env.pythonpath and env2.info["size"] == 100


def test_failed_or_half_built_envs_are_rebuilt(tmp_path):
    cache, calls = envs.EnvCache(tmp_path, 10**6), []

    def broken(d: Path) -> envs.Env:
        (d / "partial").write_text("x")
        raise envs.BuildError("pip failed")

    with pytest.raises(envs.BuildError):
        cache.get("b", broken)
    assert not cache.dir("b").exists()
    cache.dir("c").mkdir()  # an interrupted build: no ready.json
    (cache.dir("c") / "junk").write_text("x")
    _, hit, _ = cache.get("c", _builder(10, calls))
    assert not hit and calls == ["c"] and not (cache.dir("c") / "junk").exists()


def test_lru_eviction_keeps_recent_and_current(tmp_path):
    cache, calls = envs.EnvCache(tmp_path, 2500), []
    cache.get("one", _builder(1000, calls))
    _age(cache, "one", 300)
    cache.get("two", _builder(1000, calls))
    _age(cache, "two", 200)
    cache.get("one", _builder(1000, calls))  # a hit: "one" is now the most recently used
    cache.get("three", _builder(1000, calls))  # 3000 bytes > 2500: the LRU one ("two") goes
    assert cache.ready("one") and cache.ready("three") and not cache.ready("two")
    assert calls == ["one", "two", "three"]
    big = envs.EnvCache(tmp_path, 10)
    big.get("four", _builder(1000, calls))  # over the limit alone: the one just built is kept
    assert big.ready("four") and [p.name for _, p in big.entries()] == ["four"]


def test_hard_links_count_as_a_share(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "f").write_bytes(b"y" * 1000)
    os.link(tmp_path / "a" / "f", tmp_path / "b" / "f")
    assert envs.tree_size(tmp_path / "a") == 500 and envs.tree_size(tmp_path) == 1000


def test_env_puts_its_paths_first():
    env = envs.Env("/x/python", ["/overlay"])
    out = env.environ({"A": "1"}, base={"PYTHONPATH": "/repo", "VIRTUAL_ENV": "/v"})
    assert (
        out["PYTHONPATH"] == os.pathsep.join(["/overlay", "/repo"])
        and out["A"] == "1"
        and "VIRTUAL_ENV" not in out
    )
