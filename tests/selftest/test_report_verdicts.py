"""Per-test verdicts recorded at the source (gemma2_regress.plugins.report): the summary JSON's
``tests`` entries, computed from the live exception where the test ran, in one process and under
xdist; they survive an interrupted run and a crashed xdist worker."""

from __future__ import annotations

import builtins
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gemma2_regress.plugins import report
from gemma2_regress.reference import verdicts

# Python 3.10 has no built-in one; Hypothesis raises the backport's there.
ExceptionGroup = (
    getattr(builtins, "ExceptionGroup", None) or importlib.import_module("exceptiongroup").ExceptionGroup
)
ROOT = Path(__file__).resolve().parents[2]
PLUGIN = ("-p", "gemma2_regress.plugins.report", "-p", "no:cacheprovider")
# The JUnit text is read in the style the kill matrix runs (pytest's default style prints the innermost
# frame as "file:line: Type", which the JUnit reader does not count as a frame).
JUNIT = ("--tb=native",)

# A stand-in for Unsloth's kernel module: a file under a folder named `unsloth`, so that the crash
# rule picks its frame, loaded from its path (nothing named `unsloth` is importable from it).
FAKE_KERNEL = """
class UnslothUnavailable(RuntimeError):
    pass


def slow_attention_softcapping(mask):
    return _compiled(mask)


def _compiled(mask):
    return mask.dim()  # a bool: AttributeError, as in the 2024 crash


def load():
    raise UnslothUnavailable("unsloth 0.0 does not import here")
"""

TESTS = """
import importlib.util
import pathlib

import pytest
from hypothesis import given, settings, strategies as st

_spec = importlib.util.spec_from_file_location(
    "fake_flex_attention", pathlib.Path(__file__).parent / "site" / "unsloth" / "kernels" / "flex_attention.py"
)
kernels = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kernels)

COMPARISON = "  mismatch: err(target)=1.1 err(baseline)=0 bound=2e-06 ratio=5.51e+05 worst at (0, 1, 34)"


def test_passes():
    pass


def test_mismatch():
    raise AssertionError("kernel_matches_oracle failed for k[m]\\n  case: b1 q2/kv2 W=1\\n" + COMPARISON)


def test_nan_wins_on_a_model_line():
    raise AssertionError(
        "model_logits_loss failed\\n  logits: mismatch: err(target)=9 ...; loss: nan: err(target)=inf ..."
    )


def test_plain_assert():
    assert 1 + 1 == 3, "output changed"


def test_crash_inside_the_kernel():
    kernels.slow_attention_softcapping(True)


def test_unusable_build():
    kernels.load()


def test_crash_raised_from_the_kernel():
    try:
        kernels.slow_attention_softcapping(True)
    except AttributeError as exc:
        raise ValueError("wrapped") from exc


@settings(max_examples=100, database=None, derandomize=True, report_multiple_bugs=True)
@given(x=st.integers(0, 10), data=st.data())
def test_two_distinct_failures(x, data):
    q_len = data.draw(st.integers(1, 3), label="q_len")
    if x > 5:
        kernels.slow_attention_softcapping(q_len > 0)
    if x > 2:
        raise AssertionError("kernel_matches_oracle failed\\n" + COMPARISON)


@settings(max_examples=50, database=None, derandomize=True)
@given(x=st.integers(0, 10))
def test_one_failure(x):
    assert x < 4, "nan: err(target)=inf err(baseline)=0"


@pytest.fixture
def broken():
    raise RuntimeError("the fixture broke")


def test_setup_error(broken):
    pass


@pytest.fixture
def broken_teardown():
    yield
    raise OSError("teardown broke")


def test_teardown_error(broken_teardown):
    pass


@pytest.mark.xfail(strict=True, reason="a recorded upstream bug")
def test_xfail():
    raise AssertionError("nan: err(target)=inf")


@pytest.mark.xfail(strict=True, reason="a recorded upstream bug, fixed")
def test_strict_xpass():
    pass


def test_skipped():
    pytest.skip("no GPU")
"""

EXPECTED = {  # node id -> (outcome, verdicts)
    "test_passes": ("passed", []),
    "test_mismatch": ("failed", ["mismatch"]),
    "test_nan_wins_on_a_model_line": ("failed", ["nan"]),
    "test_plain_assert": ("failed", ["mismatch"]),
    "test_crash_inside_the_kernel": ("failed", ["crash:AttributeError@flex_attention.py:_compiled"]),
    "test_unusable_build": ("failed", ["crash:UnslothUnavailable@flex_attention.py:load"]),
    "test_crash_raised_from_the_kernel": ("failed", ["crash:ValueError@flex_attention.py:_compiled"]),
    "test_two_distinct_failures": (
        "failed",
        ["crash:AttributeError@flex_attention.py:_compiled", "mismatch"],
    ),
    "test_one_failure": ("failed", ["nan"]),
    "test_setup_error": ("error", ["crash:RuntimeError@test_inner_suite.py:broken"]),
    "test_teardown_error": ("error", ["crash:OSError@test_inner_suite.py:broken_teardown"]),
    "test_xfail": ("xfailed", []),
    "test_strict_xpass": ("failed", ["crash:Error"]),
    "test_skipped": ("skipped", []),
}


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    kernel = pytester.path / "site" / "unsloth" / "kernels" / "flex_attention.py"
    kernel.parent.mkdir(parents=True)
    kernel.write_text(FAKE_KERNEL)
    pytester.makepyfile(test_inner_suite=TESTS)
    monkeypatch.setenv("GEMMA2_REGRESS_REPORT", str(pytester.path / "summary.json"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_ADDOPTS", "GEMMA2_REGRESS_TIER"):
        monkeypatch.delenv(name, raising=False)
    return pytester


def _summary(pytester: pytest.Pytester) -> dict:
    return json.loads((pytester.path / "summary.json").read_text())


def _check(summary: dict) -> None:
    tests = {nodeid.split("::")[-1]: entry for nodeid, entry in summary["tests"].items()}
    got = {name: (e["outcome"], [v["verdict"] for v in e["verdicts"]]) for name, e in tests.items()}
    assert {k: got.get(k) for k in EXPECTED} == EXPECTED
    for entry in tests.values():
        assert set(entry) == {"outcome", "duration_s", "verdicts"}
        for v in entry["verdicts"]:
            assert set(v) == {"verdict", "message", "example", "example_block"}
            assert len(v["message"]) <= 300 and "\n" not in v["message"]
    crash, mismatch = tests["test_two_distinct_failures"]["verdicts"]
    assert crash["message"] == "AttributeError: 'bool' object has no attribute 'dim'"
    assert crash["example"].startswith("test_two_distinct_failures(x=6, q_len=1")  # draws inlined
    assert crash["example_block"].startswith("Failing test case: test_two_distinct_failures(\n")
    assert "Draw 1 (q_len): 1" in crash["example_block"] and "Explanation" not in crash["example_block"]
    assert mismatch["message"].startswith(
        "AssertionError: kernel_matches_oracle failed | mismatch: err(target)="
    )
    assert mismatch["example"].startswith("test_two_distinct_failures(x=3, q_len=1")
    (one,) = tests["test_one_failure"]["verdicts"]
    assert one["example"] == "test_one_failure(x=4,)"
    assert tests["test_unusable_build"]["verdicts"][0]["message"].endswith(
        "UnslothUnavailable: unsloth 0.0 does not import here"
    )
    assert tests["test_strict_xpass"]["verdicts"][0]["message"].startswith("[XPASS(strict)]")
    assert tests["test_passes"]["verdicts"] == [] and tests["test_passes"]["duration_s"] >= 0
    assert summary["exit_status"] == 1 and {"versions", "wall_s", "properties", "records"} <= set(summary)


def test_verdicts_in_one_process(suite: pytest.Pytester) -> None:
    spool_before = os.environ.get(report.SPOOL_ENV)
    result = suite.runpytest_inprocess(
        *PLUGIN, *JUNIT, f"--junitxml={suite.path / 'j.xml'}", "-p", "no:xdist"
    )
    result.assert_outcomes(
        passed=2, failed=9, errors=2, skipped=1, xfailed=1
    )  # teardown_error passed its call
    summary = _summary(suite)
    _check(summary)
    assert summary["narrowed"] == []  # no test paths, -m, -k or --deselect: everything collected ran
    result.stdout.fnmatch_lines([f"summary JSON: {suite.path / 'summary.json'}"])
    # the inner run handed the outer run's spool folder back
    assert os.environ.get(report.SPOOL_ENV) == spool_before


def test_summary_says_what_narrowed_the_run(suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run of less than its tier says so (the noxfile then records no whole tier as passed)."""
    monkeypatch.setenv("GEMMA2_REGRESS_TIER", "gpu")
    suite.runpytest_inprocess(
        *PLUGIN, "-p", "no:xdist", "test_inner_suite.py", "-m", "not gpu", "-k", "passes"
    )
    assert _summary(suite)["narrowed"] == ["test paths given", "-m 'not gpu'", "-k 'passes'"]


def test_verdicts_under_xdist_survive_a_crashed_worker(suite: pytest.Pytester) -> None:
    suite.makepyfile(test_worker_dies="import os\n\ndef test_dies():\n    os._exit(3)\n")
    result = suite.runpytest_subprocess(*PLUGIN, *JUNIT, f"--junitxml={suite.path / 'j.xml'}", "-n", "2")
    assert result.ret == 1
    summary = _summary(suite)
    _check(summary)
    dead = summary["tests"]["test_worker_dies.py::test_dies"]
    assert dead["outcome"] == "error" and [v["verdict"] for v in dead["verdicts"]] == ["crash:Error"]
    assert "crashed while running" in dead["verdicts"][0]["message"]


SLOW = """
import os
import pathlib
import signal
import time

def test_a_fast():
    pass

def test_b_slow():
    if os.environ.get("PYTEST_XDIST_WORKER"):  # a worker the interrupt cannot stop (seen: inside a compile)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    (pathlib.Path(__file__).parent / "started").touch()
    time.sleep(120)
"""


# One worker: it runs the fast test, then stays busy past the interrupt, so it never hands anything back.
@pytest.mark.parametrize("workers", [[], ["-n", "1"]], ids=["one-process", "xdist"])
def test_summary_written_when_interrupted(pytester: pytest.Pytester, workers: list[str]) -> None:
    """Ctrl-C (SIGINT to the process group) mid-run: the summary and the cost JSON still hold the
    finished tests, also those of a worker still busy when the run ends."""
    pytester.makepyfile(test_slow=SLOW)
    if workers:  # xdist gives a worker that ignores the interrupt 10 s (EXIT_TIMEOUT) before it kills it
        pytester.makeconftest(
            "import xdist.workermanage\n\nxdist.workermanage.NodeManager.EXIT_TIMEOUT = 1\n"
        )
    out = pytester.path / "summary.json"
    costs = pytester.path / "costs.json"
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("PYTEST_XDIST_WORKER", "PYTEST_ADDOPTS")},
        "GEMMA2_REGRESS_REPORT": str(out),
        "GEMMA2_REGRESS_COSTS": str(costs),
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    dist = workers or ["-p", "no:xdist"]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest",
            *PLUGIN,
            "-p",
            "gemma2_regress.plugins.costs",
            *dist,
            "-q",
            "test_slow.py",
        ],
        cwd=pytester.path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        # A run launched in the background (nohup, `cmd &`) inherits SIGINT ignored; Ctrl-C must reach this one.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.time() + 120
        while not (pytester.path / "started").exists():
            assert proc.poll() is None and time.time() < deadline, "the slow test never started"
            time.sleep(0.1)
        time.sleep(0.5)  # the fast test's report reaches the controller
        os.killpg(proc.pid, signal.SIGINT)
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    summary = json.loads(out.read_text())
    assert summary["exit_status"] == pytest.ExitCode.INTERRUPTED
    assert summary["tests"]["test_slow.py::test_a_fast"] == {
        "outcome": "passed",
        "duration_s": summary["tests"]["test_slow.py::test_a_fast"]["duration_s"],
        "verdicts": [],
    }
    (fast,) = [r for r in json.loads(costs.read_text())["tests"] if r["test"] == "test_slow.py::test_a_fast"]
    assert fast["worker"].startswith("gw") if workers else "worker" not in fast


def test_keyboard_interrupt_in_a_test_still_writes_the_summary(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile("def test_a():\n    pass\n\ndef test_b():\n    raise KeyboardInterrupt\n")
    monkeypatch.setenv("GEMMA2_REGRESS_REPORT", str(pytester.path / "summary.json"))
    result = pytester.runpytest_inprocess(*PLUGIN, "-p", "no:xdist", no_reraise_ctrlc=True)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    summary = _summary(pytester)
    assert (
        summary["exit_status"] == 2
        and summary["tests"]["test_keyboard_interrupt_in_a_test_still_writes_the_summary.py::test_a"][
            "outcome"
        ]
        == "passed"
    )


# xdist's controller shuts its workers down in its sessionfinish; here a time bound's SIGINT lands in
# that wait, once they are down.
INTERRUPTED_TEARDOWN = """
import functools

import xdist.dsession

_shut_down = xdist.dsession.DSession.pytest_sessionfinish


@functools.wraps(_shut_down)  # its hookimpl options too: called where xdist's is
def _interrupted(self):
    _shut_down(self)
    raise KeyboardInterrupt


xdist.dsession.DSession.pytest_sessionfinish = _interrupted
"""


def test_an_interrupt_in_xdists_teardown_still_writes_the_reports(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeconftest(INTERRUPTED_TEARDOWN)
    pytester.makepyfile(test_all_done="def test_a():\n    pass\n\ndef test_b():\n    pass\n")
    monkeypatch.setenv("GEMMA2_REGRESS_REPORT", str(pytester.path / "summary.json"))
    monkeypatch.setenv("GEMMA2_REGRESS_COSTS", str(pytester.path / "costs.json"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    # In a child: the interrupt is re-raised out of pytest.main, as in the bounded run.
    pytester.runpytest_subprocess(*PLUGIN, "-p", "gemma2_regress.plugins.costs", "-n", "1")
    summary = _summary(pytester)
    assert summary["exit_status"] == pytest.ExitCode.INTERRUPTED
    assert [t["outcome"] for t in summary["tests"].values()] == ["passed", "passed"]
    assert len(json.loads((pytester.path / "costs.json").read_text())["tests"]) == 2


def test_record_outside_a_run_keeps_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(report.SPOOL_ENV, raising=False)
    report.record("p", "t", "ok", 0.5, "case")  # no spool folder: nothing to write to, no error
    monkeypatch.setenv(report.SPOOL_ENV, str(tmp_path / "gone"))
    report.record("p", "t", "ok", 0.5, "case")
    assert not (tmp_path / "gone").exists()
    monkeypatch.setenv(report.SPOOL_ENV, str(tmp_path))
    report.record("p", "t", "ok", 0.5, "case")
    assert [r["case"] for r in report.read_spool(tmp_path)] == ["case"]


def test_failures_of_a_live_exception_group() -> None:
    def kernel() -> None:
        raise TypeError("'bool' object is not subscriptable")

    try:
        kernel()
    except TypeError as exc:
        crash = exc
    crash.__notes__ = [  # as Hypothesis adds them
        "Failing test case: test_k(\n    device='cpu',\n    data=data(...),\n)",
        "Draw 1 (case): Case(bsz=1,\n q_len=2)",
        "Explanation:",
    ]
    group = ExceptionGroup(
        "two", [crash, ExceptionGroup("inner", [AssertionError("x\n  nan: err(target)=inf")])]
    )
    a, b = verdicts.failures(group)
    assert a.verdict == "crash:TypeError@test_report_verdicts.py:kernel"
    assert a.example == "test_k(device='cpu', case=Case(bsz=1, q_len=2),)"
    assert (
        a.example_block
        == "Failing test case: test_k(\n    device='cpu',\n    data=data(...),\n)\nDraw 1 (case): Case(bsz=1,\n q_len=2)"
    )
    assert (b.verdict, b.message, b.example, b.example_block) == (
        "nan",
        "AssertionError: x | nan: err(target)=inf",
        None,
        None,
    )
    # in setup or teardown an assertion is a crash, not a property's verdict
    assert (
        verdicts.failures(AssertionError("nan: err(target)=inf"), crash_only=True)[0].verdict
        == "crash:AssertionError"
    )
