"""Long-lived objects out of the cyclic garbage collector's way: a test process freezes what it holds once
its tests are collected, and again once Unsloth is imported.

A pytest plugin (registered from conftest with ``pytest_plugins``). After collection, and once ``unsloth`` is
in ``sys.modules`` (Unsloth, transformers' trainers and TRL imported): before the first test where the
suite imported it after collection (``fixtures/model.py``), else after the teardown of the
first test that did, it runs a full collection and then ``gc.freeze()``: every object the collector tracks at
that moment moves to its permanent generation, which later collections do not scan. What is frozen is
what the process holds from then on: modules, classes, functions, strategies, test items, the models it
caches. Reference counting still frees a frozen object whose count drops to zero; only a reference cycle
made wholly before a freeze is never collected. What later tests make (models, tensors, Hypothesis data)
is collected as before. At the end (``pytest_unconfigure``) everything is unfrozen, so that the
interpreter's last collection frees what it would have freed: frozen, Triton's nanobind objects outlived it
and every process printed "nanobind: leaked ... instances!".

Why: each full collection scans every tracked object, about a million in a worker that has imported torch,
transformers and Unsloth, and full collections come both from the collector's own thresholds and from the
``gc.collect()`` calls in Unsloth's code and in ``perf.timing`` (docs/perf.md).
"""

from __future__ import annotations

import gc
import sys

import pytest


def freeze() -> None:
    """Collect what is garbage now, then freeze every object still tracked (``gc.freeze``)."""
    gc.collect()
    gc.freeze()


class _Freezer:
    def __init__(self) -> None:
        self.after_unsloth = False  # frozen since Unsloth was imported

    @pytest.hookimpl(trylast=True)
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        freeze()

    def _once_unsloth_is_imported(self) -> None:
        if not self.after_unsloth and "unsloth" in sys.modules:
            self.after_unsloth = True
            freeze()

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logstart(self, nodeid: str, location: tuple) -> None:
        self._once_unsloth_is_imported()

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logfinish(self, nodeid: str, location: tuple) -> None:
        self._once_unsloth_is_imported()

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        gc.unfreeze()


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(_Freezer(), "gemma2-gc-freeze")
