"""Every test starts from a fresh Dynamo: what it compiles depends on the test alone, not on its neighbours.

A pytest plugin (registered from conftest with ``pytest_plugins``). Before each test's set-up it calls
``torch._dynamo.reset()`` when torch has been imported in this process, which drops the graphs that
earlier tests compiled in memory (the on-disk caches stay).

Why: Dynamo's graphs for a function depend on the shapes it has met in this process. Its first call
compiles for static shapes and a later call with another shape recompiles with those sizes dynamic.
So the same test compiled other graphs, with other cache keys, depending on which tests xdist had put
on its worker before it. A warm run then missed the cache where the schedule had changed. A carried
compile cache did too (``builds.portable_cache``). On one CPU process, a kernel test run after another
kernel test hit 5 of its 8 graphs in the cache its own run had left, and 8 of 8 when run first.
The verdicts depended on the schedule as well: only the first test on a worker ran Unsloth's kernel
compiled for static shapes. After the reset every test runs that graph for its first example.
"""

from __future__ import annotations

import sys

import pytest


@pytest.hookimpl(tryfirst=True)  # before any fixture of the test compiles something
def pytest_runtest_setup(item: pytest.Item) -> None:
    if "torch._dynamo" in sys.modules:  # a test that never imported torch has nothing to reset
        import torch._dynamo

        torch._dynamo.reset()
