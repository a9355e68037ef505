"""Each test, or each xdist group, starts from a fresh Dynamo: what it compiles does not depend on the schedule.

A pytest plugin (registered from conftest with ``pytest_plugins``). Before the set-up of a test
outside any ``xdist_group``, and of the first test of a group's run, it calls ``torch._dynamo.reset()``
when torch has been imported in this process. That drops the graphs earlier tests compiled in memory.
The on-disk caches stay. A group's tests run one after another on one worker, in collection order,
so they share their graphs as before.

Why: Dynamo's graphs for a function depend on the shapes it has met in this process. Its first call
compiles for static shapes and a later call with another shape recompiles with those sizes dynamic.
So a test compiled other graphs, with other cache keys, depending on which tests xdist had put on its
worker before it: a warm run, or one with a carried cache (``builds.portable_cache``), missed where
the schedule had changed, and only the first test on a worker ran Unsloth's kernel compiled for
static shapes (docs/gpu.md). Not reset inside a group: its tests meet the same kernels, and every
graph costs a Dynamo trace again even when the cache holds it.
"""

from __future__ import annotations

import sys

import pytest

from gemma2_regress.plugins.markers import group_of

_NOTHING_RAN = object()


class _FreshDynamo:
    def __init__(self) -> None:
        self.group: object = _NOTHING_RAN  # the group of the test before, None outside any

    @pytest.hookimpl(tryfirst=True)  # before any fixture of the test compiles something
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        group = group_of(item)
        fresh = group is None or group != self.group
        self.group = group
        if (
            fresh and "torch._dynamo" in sys.modules
        ):  # a process that never imported torch has nothing to reset
            import torch._dynamo

            torch._dynamo.reset()


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(_FreshDynamo(), "gemma2-fresh-dynamo")
