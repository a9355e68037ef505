"""gemma2_regress.plugins.cache_keys: ``--cache-keys TEXT`` records the compile-cache keys of the calls of the
tests whose node id contains TEXT, with what each key hashed, and only those, on whichever state the run's
compile cache is in (cold in a fresh clone, warm after); without the option nothing is written."""

from __future__ import annotations

import re

import pytest

from gemma2_regress.plugins import cache_keys
from gemma2_regress.plugins.chosen_calls import file_stem

PLUGIN = ("-p", "gemma2_regress.plugins.cache_keys", "-p", "no:cacheprovider")

# The inner tests compile one small function each on CPU. test_other compiles the same way, unchosen.
TESTS = """
import logging

import pytest
import torch


def compile_and_run(scale):
    torch._dynamo.reset()
    fn = torch.compile(lambda x: x * scale + 1, backend="inductor")
    return fn(torch.ones(8))


@pytest.mark.parametrize("scale", [2, 3])
def test_picked(scale):
    assert compile_and_run(scale)[0].item() == scale + 1


def test_other():
    compile_and_run(2)
    assert not logging.getLogger("torch._inductor.codecache").handlers  # the recorder left nothing behind
"""


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("GEMMA2_REGRESS_REPORT", str(pytester.path / "out" / "summary.json"))
    pytester.makepyfile(test_inner=TESTS)
    return pytester


def test_the_chosen_calls_keys_are_written_with_their_details(suite):
    # A child process (torch's compile state is process-wide) on the run's compile cache: cold, both caches
    # miss and both keys are written; warm, AOTAutograd's cache answers and only its key is looked up.
    result = suite.runpytest_subprocess(*PLUGIN, "--cache-keys", "test_picked")
    result.assert_outcomes(passed=3)
    folder = suite.path / "out" / "cache-keys"
    two, three = (file_stem(f"test_inner.py::test_picked[{n}]") for n in (2, 3))
    assert sorted(p.name for p in folder.iterdir()) == sorted([f"{two}.txt", f"{three}.txt"])
    texts = {n: (folder / f"{file_stem(f'test_inner.py::test_picked[{n}]')}.txt").read_text() for n in (2, 3)}
    for n, text in texts.items():
        assert re.match(rf"test_inner.py::test_picked\[{n}\] \(pid \d+\): [1-9]\d* key\(s\)\n", text), text[
            :200
        ]
        assert any(mark in text for mark in cache_keys.LOGGERS.values())
        assert re.search(r"^\[\w+\] \w+", text, re.M)  # torch's "[<hash>] <name>: <value>" detail lines
    # Another constant is another graph: the keys and some of their details differ, which is what a diff shows.
    assert texts[2].split("\n", 1)[1] != texts[3].split("\n", 1)[1]
    result.stdout.fnmatch_lines(
        [f"compile-cache keys of test calls: 2 written to {folder}/ (--cache-keys test_picked)"]
    )


def test_without_the_option_nothing_is_written(pytester, monkeypatch):
    monkeypatch.setenv("GEMMA2_REGRESS_REPORT", str(pytester.path / "out" / "summary.json"))
    pytester.makepyfile(test_inner="def test_picked():\n    pass\n")
    result = pytester.runpytest_inprocess(*PLUGIN)
    result.assert_outcomes(passed=1)
    assert not (pytester.path / "out").exists()
