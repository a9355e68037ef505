"""The suite imports Unsloth once the tests are collected (``fixtures/model.py`` says why), so
collecting the suite must import neither Unsloth nor what it patches on import (transformers, TRL, PEFT): the
whole collection runs in a child Python here, as a tier's does. Where one came first anyway, a model-level test
errors with the reason; under ``--collect-only`` nothing is imported."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fixtures import child
from fixtures.model import PATCHED_BY_UNSLOTH

ROOT = Path(__file__).resolve().parents[2]

COLLECT = """
import json, os, sys, traceback
root, watched = {root!r}, {watched!r}
first = {{}}  # module -> the suite's line that imported it first


def audit(event, args):  # Python raises "import" for each module it imports (not for one in sys.modules)
    top = args[0].partition(".")[0] if event == "import" else None
    if top in watched and top not in first:
        ours = [f for f in traceback.extract_stack()[:-1] if f.filename.startswith(root)]
        first[top] = f"{{os.path.relpath(ours[-1].filename, root)}}:{{ours[-1].lineno}}" if ours else "?"


sys.addaudithook(audit)
import pytest

code = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", "--rootdir", root,
                    "-c", os.path.join(root, "pyproject.toml"), os.path.join(root, "tests")])
print(json.dumps({{"exit": int(code), "first": first}}))
"""


def test_collection_imports_nothing_that_unsloth_patches(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # the child's reports go here
    got = child.run_json(COLLECT.format(root=str(ROOT), watched=("unsloth", *PATCHED_BY_UNSLOTH)))
    assert got["exit"] == 0, got
    assert got["first"] == {}, (
        f"collecting the tests imported {got['first']} (module: the line that imported it first): "
        "import it inside the test functions instead (fixtures/model.py says why)"
    )


# Collection from the tree, as the GPU tier runs, without entry-point plugins: an installed project hides the
# warning, since its entry point has pytest rewrite the whole package.
COLLECT_STRICT = """
import json, pytest

try:
    code = int(pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider",
                            "-W", "error::pytest.PytestAssertRewriteWarning", {path!r}]))
    why = ""
except Exception as exc:  # the warning, raised while pytest imports the plugins
    code, why = -1, f"{{type(exc).__name__}}: {{exc}}"
print(json.dumps({{"exit": code, "why": why}}))
"""


def test_every_plugin_of_the_suite_is_imported_by_pytest_first(tmp_path: Path, monkeypatch) -> None:
    """A plugin that another plugin listed before it in conftest's ``pytest_plugins`` imports is already
    imported when pytest comes to it, so pytest cannot rewrite its asserts, and every process warns."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    got = child.run_json(COLLECT_STRICT.format(path=str(ROOT / "tests" / "oracle" / "test_invariants.py")))
    assert got["exit"] == 0, (
        f"collecting from the tree failed or warned: {got['why'] or got}; list each plugin in conftest.py's "
        "pytest_plugins before the plugins that import it"
    )


# A stand-in for the import: fixtures.model as on a CUDA machine (or, with {skip} a reason, on a CPU), Unsloth
# installed, its loads counted; {load}: what a load does.
STANDIN = """
import sys
import types

import fixtures.model as fm

tries = []


def load():
    tries.append(1)
    {load}


fm.unsloth_skip_reason = lambda: {skip}
fm.unsloth_adapter = types.SimpleNamespace(
    load=load, UnslothUnavailable=RuntimeError, installed_version=lambda: "2026.10.9"
)
from fixtures.model import pytest_runtestloop, unsloth_ready


def pytest_unconfigure(config):
    print("unsloth imported:", "unsloth" in sys.modules, "imports tried:", len(tries))
"""
IMPORTS_UNSLOTH = STANDIN.format(
    skip=None, load='sys.modules.setdefault("unsloth", types.ModuleType("unsloth"))'
)
# An install that does not import: the failed import leaves transformers behind, as a real one would.
FAILS_TO_IMPORT = STANDIN.format(
    skip=None,
    load='sys.modules.setdefault("transformers", types.ModuleType("transformers"))\n'
    '    raise RuntimeError("unsloth does not import here")',
)


@pytest.mark.parametrize("early", ["", "peft"], ids=["nothing-first", "peft-first"])
def test_a_model_test_fails_where_collection_imported_what_unsloth_patches(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, early: str
) -> None:
    pytester.makeconftest(IMPORTS_UNSLOTH)
    first = f"sys.modules[{early!r}] = types.ModuleType({early!r})  # as an import at module level would\n"
    pytester.makepyfile(
        test_model=f"import sys\nimport types\n{first if early else ''}\n\ndef test_model(unsloth_ready):\n    pass\n"
    )
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    args = ["-p", "no:cacheprovider", "-p", "no:xdist"]
    result = pytester.runpytest_subprocess(*args)
    result.stdout.fnmatch_lines(["unsloth imported: True imports tried: 1"])
    if early:  # an error in the fixture's set-up: red, with the reason
        result.assert_outcomes(errors=1)
        result.stdout.fnmatch_lines(["*peft imported before Unsloth, while the tests were collected*"])
        return
    result.assert_outcomes(passed=1)
    collected = pytester.runpytest_subprocess(*args, "--collect-only")  # nothing runs: nothing imported
    collected.stdout.fnmatch_lines(["unsloth imported: False imports tried: 0"])


def test_a_failed_import_is_tried_once_and_not_blamed_on_collection(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two conftests register the hook; the failure is left to the tests that need Unsloth, and
    ``unsloth_ready`` does not call it an import made during collection."""
    pytester.makeconftest(FAILS_TO_IMPORT)
    sub = pytester.mkdir("sub")
    (sub / "conftest.py").write_text("from fixtures.model import pytest_runtestloop, unsloth_ready\n")
    (sub / "test_model.py").write_text("def test_model(unsloth_ready):\n    pass\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:xdist")
    result.stdout.fnmatch_lines(["*imports tried: 1"])
    result.stdout.no_fnmatch_line("*imported before Unsloth*")
    result.assert_outcomes(passed=1)


@pytest.mark.parametrize("marked", [True, False], ids=["unsloth-test", "no-unsloth-test"])
def test_on_a_cpu_unsloth_is_imported_first_where_a_test_runs_it(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, marked: bool
) -> None:
    """No CUDA: Unsloth's model cannot run, but its kernels do in a test marked ``unsloth``. Where one is
    collected, Unsloth is imported before the first test (before a test that builds a config imports
    transformers); where none is, not at all."""
    pytester.makeconftest(
        STANDIN.format(
            skip='"no CUDA GPU visible"',
            load='sys.modules.setdefault("unsloth", types.ModuleType("unsloth"))',
        )
    )
    mark = "@pytest.mark.unsloth\n" if marked else ""
    pytester.makepyfile(test_kernel=f"import pytest\n\n\n{mark}def test_kernel():\n    pass\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-p", "no:xdist", "-p", "gemma2_regress.plugins.markers"
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"unsloth imported: {marked} imports tried: {int(marked)}"])


def test_unsloth_is_imported_first_in_runs_of_any_folder(pytestconfig: pytest.Config) -> None:
    """The hook is the suite's conftest.py's, not only tests/model's: a run that collects tests/oracle and
    tests/kernel alone (portability, a bisect's selection) imports Unsloth before its first test too, and
    Unsloth's warning about a late import, an error in this suite, never meets a kernel test."""
    import fixtures.model

    suite_conftest = [
        p
        for p in pytestconfig.pluginmanager.get_plugins()
        if getattr(p, "__file__", None) == str(ROOT / "conftest.py")
    ]
    assert suite_conftest, "the suite's conftest.py is not among this run's plugins"
    assert getattr(suite_conftest[0], "pytest_runtestloop", None) is fixtures.model.pytest_runtestloop, (
        "conftest.py must import fixtures.model's pytest_runtestloop (Unsloth first in every run)"
    )
