"""gemma2_regress.plugins.require_gpu: where a GPU is required, a GPU run that ran no gpu test fails, and the
``device`` fixture's ``cuda`` parameter fails instead of skipping; without it both skip as before."""

from __future__ import annotations

import os
import types
from pathlib import Path

import pytest

from gemma2_regress import gpu_check
from gemma2_regress.plugins import require_gpu

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = ("-p", "gemma2_regress.plugins.require_gpu", "-p", "no:cacheprovider")

TESTS = """
import pytest

@pytest.mark.gpu
def test_on_gpu():
    pytest.skip("no CUDA GPU visible")

def test_on_cpu():
    pass
"""


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A tiny suite with a gpu test that skips, outside any tier, with no GPU requirement inherited."""
    for name in (gpu_check.REQUIRE_ENV, "GEMMA2_REGRESS_TIER"):
        monkeypatch.delenv(name, raising=False)
    pytester.makeini("[pytest]\nmarkers =\n    gpu: needs a GPU\n")
    pytester.makepyfile(test_inner_suite=TESTS)
    return pytester


def test_required_and_every_gpu_test_skipped_fails_in_one_line(suite):
    result = suite.runpytest_inprocess(*PLUGIN, "--require-gpu")
    result.assert_outcomes(passed=1, skipped=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    line = (
        "gemma2-regress: GPU required (--require-gpu) but no gpu-marked test ran "
        "(1 selected: 1 skipped, 0 errors in setup; first skip: no CUDA GPU visible)"
    )
    assert [s for s in result.outlines if "GPU required" in s] == [line]


def test_not_required_the_skip_stays(suite):
    result = suite.runpytest_inprocess(*PLUGIN)
    result.assert_outcomes(passed=1, skipped=1)
    assert result.ret == pytest.ExitCode.OK
    assert not [s for s in result.outlines if "GPU required" in s]


def test_a_gpu_test_that_ran_satisfies_the_rule(suite):
    suite.makepyfile(
        test_ran="""
        import pytest

        @pytest.mark.gpu
        def test_ran():
            pass

        @pytest.mark.gpu
        @pytest.mark.xfail(reason="a recorded upstream bug", strict=True)
        def test_known_bug():
            raise AssertionError
        """
    )
    result = suite.runpytest_inprocess(*PLUGIN, "--require-gpu", "test_ran.py")
    result.assert_outcomes(passed=1, xfailed=1)
    assert result.ret == pytest.ExitCode.OK
    result = suite.runpytest_inprocess(*PLUGIN, "--require-gpu", "test_ran.py", "-k", "known_bug")
    assert result.ret == pytest.ExitCode.OK  # an xfail ran the test


def test_the_variable_makes_the_gpu_tier_fail(suite, monkeypatch):
    monkeypatch.setenv(gpu_check.REQUIRE_ENV, "1")
    # Alone it does not: the suite's own pytest runs (kill matrix, bisect, gate) inherit it.
    assert suite.runpytest_inprocess(*PLUGIN).ret == pytest.ExitCode.OK
    monkeypatch.setenv("GEMMA2_REGRESS_TIER", "gpu")  # what `nox -s gpu` and tox's gpu set
    result = suite.runpytest_inprocess(*PLUGIN)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*GPU required (GEMMA2_REGRESS_REQUIRE_GPU=1) but no gpu-marked test ran*"])


def test_the_cpu_tier_is_exempt(suite, monkeypatch):
    monkeypatch.setenv("GEMMA2_REGRESS_TIER", "cpu")  # `nox -s regress -- --require-gpu` passes it to both
    assert suite.runpytest_inprocess(*PLUGIN, "--require-gpu", "-m", "not gpu").ret == pytest.ExitCode.OK


def test_no_gpu_test_selected(suite):
    result = suite.runpytest_inprocess(*PLUGIN, "--require-gpu", "-m", "gpu", "-k", "nothing_matches")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED  # already red; the line says why
    result.stdout.fnmatch_lines(["*GPU required (--require-gpu) but no gpu-marked test ran (none selected)"])


def test_an_interrupt_before_the_first_test_is_said_so(suite):
    """A time bound's SIGINT before any test ran (a slow import, a cold compile) is not a selection."""
    suite.makeconftest("def pytest_runtestloop(session):\n    raise KeyboardInterrupt\n")
    suite.makepyfile(test_g="import pytest\n\n@pytest.mark.gpu\ndef test_g():\n    pass\n")
    result = suite.runpytest_subprocess(*PLUGIN, "--require-gpu")  # in process, it would stop this run too
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*no gpu-marked test ran (interrupted before the first one)"])


def test_an_interrupt_inside_the_first_test_is_said_so(suite):
    """A time bound cutting the first gpu test's call (a cold compile) is neither a skip nor a setup error."""
    suite.makepyfile(test_g="import pytest\n\n@pytest.mark.gpu\ndef test_g():\n    raise KeyboardInterrupt\n")
    result = suite.runpytest_subprocess(*PLUGIN, "--require-gpu")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(
        ["*no gpu-marked test ran (interrupted before any finished its call: 1 started)"]
    )


def test_collect_only_is_exempt(suite):
    assert suite.runpytest_inprocess(*PLUGIN, "--require-gpu", "--collect-only").ret == pytest.ExitCode.OK


def test_setup_errors_are_counted(suite):
    suite.makepyfile(
        test_err="""
        import pytest

        @pytest.fixture
        def broken():
            raise RuntimeError("CUDA error: no kernel image")

        @pytest.mark.gpu
        def test_err(broken):
            pass
        """
    )
    result = suite.runpytest_inprocess(*PLUGIN, "--require-gpu", "test_err.py")
    result.assert_outcomes(errors=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*no gpu-marked test ran (1 selected: 0 skipped, 1 errors in setup)"])


def test_a_bad_variable_is_a_usage_error(suite, monkeypatch):
    monkeypatch.setenv(gpu_check.REQUIRE_ENV, "maybe")
    result = suite.runpytest_inprocess(*PLUGIN)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*GEMMA2_REGRESS_REQUIRE_GPU='maybe': use 1*"])


def test_under_xdist_the_controller_counts_the_workers_tests(suite, monkeypatch):
    pytest.importorskip("xdist")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    result = suite.runpytest_subprocess(*PLUGIN, "--require-gpu", "-n", "2")
    result.assert_outcomes(passed=1, skipped=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*no gpu-marked test ran (1 selected: 1 skipped*"])


# --- the device fixture's cuda parameter (conftest.py calls need_cuda) --------------------------------


def _config(flag: bool) -> types.SimpleNamespace:
    return types.SimpleNamespace(
        getoption=lambda name, default=None: flag if name == "require_gpu" else default
    )


def test_cuda_without_a_device_skips_or_fails(monkeypatch):
    monkeypatch.setattr(gpu_check, "cuda_available", lambda: False)
    monkeypatch.delenv(gpu_check.REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="no CUDA GPU visible"):
        require_gpu.need_cuda(_config(False))
    with pytest.raises(pytest.fail.Exception, match=r"GPU required \(--require-gpu\) but torch sees no CUDA"):
        require_gpu.need_cuda(_config(True))
    monkeypatch.setenv(gpu_check.REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match=r"GEMMA2_REGRESS_REQUIRE_GPU=1\) but torch sees no CUDA"):
        require_gpu.need_cuda(_config(False))
    monkeypatch.setattr(gpu_check, "cuda_available", lambda: True)
    require_gpu.need_cuda(_config(True))  # a device: nothing to say
