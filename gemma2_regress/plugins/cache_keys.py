"""The compile-cache keys of chosen test calls, each with what it hashed: why a warm cache missed.

A pytest plugin (registered from conftest with ``pytest_plugins``). ``--cache-keys TEXT`` (repeatable): for
every test whose node id contains TEXT, in whichever process runs it, the call phase records each key
torch.compile looks up in its on-disk caches, on a hit and on a miss alike: AOTAutograd's (looked up
first, from Dynamo's graph) and, where that one missed or is off, Inductor's FX-graph key. Each comes
with the details it was hashed from (the graph's code, its inputs' shapes, strides and dtypes, the
configs, the global settings in the key), as torch logs them at DEBUG (``LOGGERS``). They go, beside the
run's ``summary.json`` (``report.report_path``), to ``cache-keys/<node id>.txt``
(``chosen_calls.file_stem``; written atomically), in the order they were looked up. Each detail line
reads ``[<its hash>] <name>: <value>``.

Use: the same test in two runs, one that hit and one that missed (the run's ``FX-graph cache misses``
line names the latter): ``diff`` the two files; the detail lines that differ name what the key differed
on. While a chosen call runs, those loggers' records do not reach torch's own log handlers
(``TORCH_LOGS``), and AOTAutograd spends a little longer on each key (it builds the details only for a
logger at DEBUG). Cost: none unless the option is given.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import pytest

from gemma2_regress.atomic import write_text_atomic
from gemma2_regress.plugins import chosen_calls

# The logger of each cache, and how its DEBUG record of one key begins.
LOGGERS = {
    "torch._functorch._aot_autograd.autograd_cache": "Autograd graph cache hash details for key ",
    "torch._inductor.codecache": "FX graph cache hash details for key ",
}


class _Keys(logging.Handler):
    """Keeps the records of ``LOGGERS`` that state a key, in order."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        mark = LOGGERS.get(record.name)
        message = record.getMessage()
        if mark and message.startswith(mark):
            self.messages.append(message)


class _Recorder(chosen_calls.ChosenCalls):
    OPTION, FOLDER, PATTERN, WHAT = "--cache-keys", "cache-keys", "*.txt", "compile-cache keys of test calls"

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Any:
        if not self.chosen(item):
            return (yield)
        keys = _Keys()
        saved = []
        for name in LOGGERS:
            logger = logging.getLogger(name)
            saved.append((logger, logger.level, logger.propagate))
            logger.addHandler(keys)
            logger.setLevel(logging.DEBUG)
            logger.propagate = False  # DEBUG records would otherwise reach torch's stderr handler
        try:
            return (yield)
        finally:
            for logger, level, propagate in saved:
                logger.removeHandler(keys)
                logger.setLevel(level)
                logger.propagate = propagate
            body = "".join(f"\n{m}\n" for m in keys.messages)
            write_text_atomic(
                self.path(item, ".txt"),
                f"{item.nodeid} (pid {os.getpid()}): {len(keys.messages)} key(s)\n{body}",
            )


def pytest_addoption(parser: pytest.Parser) -> None:
    chosen_calls.add_option(
        parser,
        _Recorder.OPTION,
        "record the compile-cache keys (AOTAutograd's, Inductor's FX-graph keys), each with what it hashed, "
        "of every test whose node id contains TEXT, into cache-keys/ beside summary.json: diff a hit's file "
        "against a miss's (repeatable)",
    )


def pytest_configure(config: pytest.Config) -> None:
    chosen_calls.register(config, _Recorder, "gemma2-regress-cache-keys")
