"""Each pytest process writes torch's cache artifacts as it goes, for a compile cache that travels.

A pytest plugin (registered from conftest with ``pytest_plugins``), inert unless
``GEMMA2_REGRESS_COMPILE_ARTIFACTS`` names a folder (``builds.offline tier --pack-cache portable`` sets
it). Then after every test during which ``torch.compile`` missed or hit a cache (the FX-graph or
AOTAutograd counters of ``costs.compile_counters`` moved), the process writes all its artifacts so far to
``<folder>/<xdist worker id or "main">.bin`` (``builds.portable_cache.save``, whole or not at all):
a worker stopped by a time bound keeps what its finished tests compiled. An xdist controller runs no
test, so writes nothing. It never imports torch.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gemma2_regress.builds import portable_cache
from gemma2_regress.plugins.costs import CACHE_KEYS, compile_counters


def _cache_counts() -> tuple[float, ...]:
    # The cache hit and miss counters only: Dynamo's timers restart at every torch._dynamo.reset()
    # (plugins.fresh_dynamo), so a test that compiled nothing would look as if it had.
    counts = compile_counters()
    return tuple(counts[k] for k in CACHE_KEYS)


class _Saver:
    def __init__(self, folder: Path, name: str) -> None:
        self.folder, self.name, self.seen = folder, name, _cache_counts()

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logfinish(self) -> None:
        now = _cache_counts()
        if now != self.seen:
            self.seen = now
            portable_cache.save(self.folder, self.name)


def pytest_configure(config: pytest.Config) -> None:
    folder = os.environ.get(portable_cache.ENV)
    if not folder:
        return
    name = getattr(config, "workerinput", {}).get("workerid", "main")
    config.pluginmanager.register(_Saver(Path(folder), name), "gemma2-compile-artifacts")
