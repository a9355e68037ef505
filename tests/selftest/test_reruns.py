"""The portability runs and the flake census (gemma2_regress/builds/reruns.py): settings, tallies, exit codes,
and an end-to-end census over a test that flakes on purpose."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from fixtures.gitrepo import commit_all, git
from gemma2_regress import compile_check
from gemma2_regress.builds import reruns

# A fake project records verdicts with the suite's own report plugin, as every run of the suite does.
CONFTEST = 'pytest_plugins = ["gemma2_regress.plugins.report"]\n'

FLAKY = """
import os
from pathlib import Path

def test_steady():
    assert True

def test_flaky():
    counter = Path(os.environ["FLAKY_COUNTER"])
    n = int(counter.read_text()) if counter.exists() else 0
    counter.write_text(str(n + 1))
    assert n != 1, "fails on the second run only"

def test_setting_sensitive():
    assert os.environ.get("OMP_NUM_THREADS") != "1", "fails with one thread"
"""


WRONG = "torch.compile computes wrong results here (canary: x * 2 + 1 on cpu off by 1.8e+38)"


@pytest.fixture(autouse=True)
def _own_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each run here starts from the machine's own kernels, whatever ATen setting this test process has: under
    one, every setting's environment names a cache folder of its own (``reruns.setting_env``)."""
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)


@pytest.fixture
def canary(monkeypatch: pytest.MonkeyPatch) -> dict:
    """The compile canary, faked: it records the settings' environments it is asked about and answers
    ``verdicts[OMP_NUM_THREADS]`` (None: trusted). The real one costs ~6 s a setting on 2 cores and has tests
    of its own (test_compile_canary_trusts_a_working_compiler_and_names_a_broken_one, test_compile_canary.py)."""
    fake: dict = {"asked": [], "verdicts": {}}

    def ask(env: dict[str, str] | None = None) -> str | None:
        fake["asked"].append(dict(env or {}))
        return fake["verdicts"].get((env or {}).get("OMP_NUM_THREADS"))

    monkeypatch.setattr(compile_check, "canary", ask)
    return fake


def test_settings_need_cpu_flags() -> None:
    avx512 = reruns.BY_NAME["aten-avx512"]
    assert reruns.unavailable(avx512, {"avx2", "fma"}) == "CPU lacks avx512f, avx512bw, avx512vl, avx512dq"
    assert reruns.unavailable(avx512, set(reruns.AVX512)) is None
    assert reruns.unavailable(avx512, None) == "CPU flags unreadable (not Linux x86)"
    assert reruns.unavailable(reruns.BY_NAME["threads-1"], None) is None  # no flag needed


def test_choose_expands_groups_and_refuses_unknown_names() -> None:
    assert [s.name for s in reruns.choose(["quick"])] == list(reruns.QUICK)
    assert len(reruns.choose(["all", "threads-1"])) == len(reruns.SETTINGS)  # no duplicates
    with pytest.raises(ValueError, match="unknown setting 'avx9000'"):
        reruns.choose(["avx9000"])


def test_cpu_flags_reads_proc_cpuinfo(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse4_2 avx2 fma\n")
    assert reruns.cpu_flags(info) == {"fpu", "sse4_2", "avx2", "fma"}
    assert reruns.cpu_flags(tmp_path / "absent") is None


def test_census_exit_codes() -> None:
    steady = {"t::a": "passed", "t::b": "skipped"}
    assert reruns.census_lines({"run-1": steady, "run-2": steady})[1] == 0
    flaky = {"run-1": {"t::a": "passed"}, "run-2": {"t::a": "failed"}}
    lines, code = reruns.census_lines(flaky)
    assert code == 1 and any("FLAKY  passed 1/2: t::a" in ln for ln in lines)
    stable = {"run-1": {"t::a": "failed"}, "run-2": {"t::a": "failed"}}
    assert reruns.census_lines(stable)[1] == 3
    expected = {"run-1": {"t::a": "xfailed"}, "run-2": {"t::a": "xfailed"}}
    lines, code = reruns.census_lines(expected)
    assert code == 0 and lines[-1].endswith("xfailed in every run: 1")
    assert reruns.census_lines({"run-1": {"t::a": "xfailed"}, "run-2": {"t::a": "failed"}})[1] == 1


def test_portability_lines_green_only_without_failures() -> None:
    lines, green = reruns.portability_lines(
        {"as-is": {"t::a": "passed"}, "aten-avx512": {"": "n/a: CPU lacks avx512f"}}
    )
    assert green and lines[1].endswith("n/a: CPU lacks avx512f")
    lines, green = reruns.portability_lines({"as-is": {"t::a": "passed", "t::b": "xfailed"}})
    assert green and lines[0].endswith("1 passed, 0 failed, 0 skipped, 1 xfailed")
    assert not reruns.portability_lines({"threads-1": {"t::a": "failed"}})[1]
    assert not reruns.portability_lines({"threads-1": {"": "error: collection failed"}})[1]


def test_bad_input_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        reruns.main(["flakes", "--runs", "0"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--runs" in err[0]


def test_census_finds_the_flake_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], canary: dict
) -> None:
    (tmp_path / "test_planted.py").write_text(FLAKY)
    (tmp_path / "conftest.py").write_text(CONFTEST)
    monkeypatch.setenv("FLAKY_COUNTER", str(tmp_path / "counter"))
    monkeypatch.delenv(
        "OMP_NUM_THREADS", raising=False
    )  # as-is must not be one thread already (the cpu tier sets it)
    monkeypatch.chdir(tmp_path)
    argv = ["flakes", "--runs", "3", "--settings", "threads-1", "--out", str(tmp_path / "out")]
    argv += ["--", "test_planted.py", "-p", "no:xdist"]
    assert reruns.main(argv) == 1
    out = capsys.readouterr().out
    assert "FLAKY  passed 3/4: test_planted.py::test_flaky" in out  # the second of four runs failed
    assert "FLAKY  passed 3/4: test_planted.py::test_setting_sensitive" in out  # only under threads-1
    assert "passed in every run: 1;" in out
    assert (tmp_path / "out" / "flakes.json").exists()
    assert reruns.main(argv) == 1  # the same command again: every run resumed, none repeated
    assert capsys.readouterr().out.count("done earlier (resumed)") == 4
    assert (tmp_path / "counter").read_text() == "4"
    assert canary["asked"] == [{}, reruns.BY_NAME["threads-1"].env]  # once a setting; a resumed run asks none


@pytest.mark.parametrize("tree", ["git", "plain"])
def test_a_changed_tree_runs_again_instead_of_resuming(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    canary: dict,
    tree: str,
) -> None:
    """The same command after an edit of a test does not resume the verdicts of the code before it, in a
    git checkout (uncommitted) or a plain folder; with no edit it resumes, whatever the runs wrote."""
    (tmp_path / "test_planted.py").write_text("def test_a():\n    assert True\n")
    (tmp_path / "conftest.py").write_text(CONFTEST)
    if tree == "git":
        if shutil.which("git") is None:
            pytest.skip("git is not installed here; the plain-folder case covers the rest")
        git(tmp_path, "init", "-q")
        commit_all(tmp_path, "t")
    monkeypatch.chdir(tmp_path)
    argv = ["portability", "--settings", "as-is", "--out", str(tmp_path / "out"), "--", "test_planted.py"]
    argv += ["-p", "no:xdist"]
    assert reruns.main(argv) == 0
    assert reruns.main(argv) == 0
    assert "as-is: done earlier (resumed)" in capsys.readouterr().out
    (tmp_path / "test_planted.py").write_text("def test_a():\n    assert False\n")
    assert reruns.main(argv) == 1  # the edit ran
    out = capsys.readouterr().out
    assert "runs of other code or packages" in out and "resumed" not in out


def test_portability_runs_each_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, canary: dict) -> None:
    (tmp_path / "test_planted.py").write_text(FLAKY.replace("test_flaky", "_not_collected"))
    (tmp_path / "conftest.py").write_text(CONFTEST)
    monkeypatch.delenv(
        "OMP_NUM_THREADS", raising=False
    )  # as-is must not be one thread already (the cpu tier sets it)
    monkeypatch.chdir(tmp_path)
    argv = [
        "portability",
        "--settings",
        "as-is,threads-2",
        "--out",
        str(tmp_path / "a"),
        "--",
        "test_planted.py",
    ]
    assert reruns.main([*argv, "-p", "no:xdist"]) == 0
    argv[2:5] = ["as-is,threads-1", "--out", str(tmp_path / "b")]
    assert reruns.main([*argv, "-p", "no:xdist"]) == 1  # the one-thread setting reaches the test process
    threads = [reruns.BY_NAME[f"threads-{n}"].env for n in (2, 1)]
    assert canary["asked"] == [
        {},
        threads[0],
        {},
        threads[1],
    ]  # each setting checked under its own environment
    # A setting whose compiler the canary distrusts is not run (its failing test never runs): n/a, not red.
    canary["verdicts"]["1"] = WRONG
    argv[4] = str(tmp_path / "c")
    assert reruns.main([*argv, "-p", "no:xdist"]) == 0
    state = (tmp_path / "c" / "state.json").read_text()
    assert "n/a: " + WRONG in state


def test_module_runs_as_a_command() -> None:
    import subprocess

    done = subprocess.run(
        [sys.executable, "-m", "gemma2_regress.builds.reruns", "portability", "--list"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0 and "aten-default" in done.stdout


def test_compile_canary_trusts_a_working_compiler_and_names_a_broken_one() -> None:
    """The canary's verdicts come from its child's exit status: 0 trusted, 7 wrong results, else died;
    the real canary trusts this machine's torch.compile (the CPU tier's kernels are compiled here)."""
    assert compile_check.explain(0, "", "") is None
    assert (
        compile_check.explain(7, "cpu 1.8e+38\n", "")
        == "torch.compile computes wrong results here (canary: x * 2 + 1 on cpu off by 1.8e+38)"
    )
    assert compile_check.explain(-11, "", "Segmentation fault").startswith(
        "torch.compile's canary died here (exit -11): Segmentation fault"
    )
    assert compile_check.canary({}) is None


WHERE = """
import os
from pathlib import Path

def test_where():
    name = os.environ.get("ATEN_CPU_CAPABILITY", "as-is")
    Path(os.environ["WHERE"], name).write_text(os.environ.get("TORCHINDUCTOR_CACHE_DIR", ""))
"""


def test_a_setting_of_atens_capability_compiles_in_a_cache_folder_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, canary: dict
) -> None:
    """Its canary and its run both: torch's FX-graph cache does not key on the setting (suite.compile_cache_for)."""
    (tmp_path / "test_planted.py").write_text(WHERE)
    (tmp_path / "conftest.py").write_text(CONFTEST)
    cache = tmp_path / "cache"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(cache))
    monkeypatch.setenv("WHERE", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    argv = ["portability", "--settings", "as-is,aten-default", "--out", str(tmp_path / "out")]
    assert reruns.main([*argv, "--", "test_planted.py", "-p", "no:xdist"]) == 0
    own = str(cache / "aten-default")
    assert canary["asked"] == [{}, {"ATEN_CPU_CAPABILITY": "default", "TORCHINDUCTOR_CACHE_DIR": own}]
    assert (tmp_path / "as-is").read_text() == str(cache) and (tmp_path / "default").read_text() == own


def test_a_setting_run_under_this_process_atens_capability_gets_its_folder_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    assert reruns.setting_env(reruns.BY_NAME["threads-1"]) == reruns.BY_NAME["threads-1"].env
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")  # inherited by the settings that do not set it
    assert reruns.setting_env(reruns.BY_NAME["as-is"]) == {
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "aten-avx2")
    }
    assert reruns.setting_env(reruns.BY_NAME["aten-default"])["TORCHINDUCTOR_CACHE_DIR"] == str(
        tmp_path / "aten-default"
    )
