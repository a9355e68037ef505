"""gemma2_regress.plugins.gc_freeze: a test process freezes what it holds after collection and once Unsloth is
imported (before the first test where that came after collection, else after the first test that imported
it); garbage that tests make later is still collected; all is unfrozen at the end."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

TESTS = """
import atexit
import gc
import sys
import types
import weakref

atexit.register(lambda: print("frozen at exit:", gc.get_freeze_count()))


class Node:
    pass


made = {"at_import": [Node()]}  # containers: the collector tracks them


def frozen(name):  # frozen objects sit in the permanent generation, which gc.get_objects() leaves out
    return not any(o is made[name] for o in gc.get_objects())


def test_frozen_after_collection():
    assert frozen("at_import")


def test_imports_unsloth():
    made["before_unsloth"] = [Node()]
    assert not frozen("before_unsloth")  # nothing is frozen between tests before Unsloth
    sys.modules["unsloth"] = types.ModuleType("unsloth")


def test_frozen_again_after_the_test_that_imported_unsloth():
    made["after_unsloth"] = [Node()]
    assert frozen("before_unsloth")


def test_once_and_later_cycles_are_still_collected():
    assert not frozen("after_unsloth")  # once after Unsloth, not after every test
    a, b = Node(), Node()
    a.other, b.other = b, a
    dead = weakref.ref(a)
    del a, b
    gc.collect()
    assert dead() is None
"""


@pytest.mark.parametrize("plugin", [True, False], ids=["with-plugin", "without"])
def test_a_process_freezes_what_it_holds_for_good(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, plugin: bool
) -> None:
    pytester.makepyfile(test_inner_freezes=TESTS)
    args = ["-p", "no:cacheprovider", "-p", "no:xdist"]
    args += ["-p", "gemma2_regress.plugins.gc_freeze"] if plugin else []
    env = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    monkeypatch.setenv("PYTHONPATH", env)
    result = pytester.runpytest_subprocess(*args)  # a child: gc.freeze is for the whole process
    if plugin:
        result.assert_outcomes(passed=4)
        # unfrozen at the end: the interpreter's last collection frees what it would without the plugin
        assert "frozen at exit: 0" in result.stdout.str()
    else:  # nothing frozen: the checks that want a freeze fail
        result.assert_outcomes(passed=2, failed=2)


IMPORTED_AFTER_COLLECTION = """
import sys
import types

import pytest

made = {}


@pytest.hookimpl(tryfirst=True)  # as tests/model/conftest.py imports Unsloth
def pytest_runtestloop(session):
    made["with_unsloth"] = [object(), []]
    sys.modules["unsloth"] = types.ModuleType("unsloth")
"""


@pytest.mark.parametrize("plugin", [True, False], ids=["with-plugin", "without"])
def test_unsloth_imported_after_collection_is_frozen_before_the_first_test(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, plugin: bool
) -> None:
    pytester.makeconftest(IMPORTED_AFTER_COLLECTION)
    pytester.makepyfile(
        test_first="import gc\nfrom conftest import made\n\n\ndef test_first():\n"
        "    assert not any(o is made['with_unsloth'] for o in gc.get_objects())\n"
    )
    args = ["-p", "no:cacheprovider", "-p", "no:xdist"]
    args += ["-p", "gemma2_regress.plugins.gc_freeze"] if plugin else []
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    result = pytester.runpytest_subprocess(*args)
    result.assert_outcomes(**({"passed": 1} if plugin else {"failed": 1}))
