"""Bad input to every command fails at once: exit 2, one line on stderr naming the problem and the
fix, no traceback, and nothing built, run or written.

Covers ``gemma2-regress bisect|gate`` (an unknown version, no network, a wrong-way range, an unknown
gate candidate that must fail before the baseline is built, a missing or broken wheel, bad option
values), the kill matrix and ``perf``; the offline GPU runner's (``gpu/*.sh``) are in test_offline.py.
No network: PyPI's answers are simulated.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
from pathlib import Path

import pytest

from fixtures.gitrepo import commit_all, git
from gemma2_regress import cli
from gemma2_regress.builds import bisect, envs, gate, install, runner
from gemma2_regress.mutants import killmatrix

ROOT = Path(__file__).resolve().parents[2]
RELEASES = {"2026.10.1": "2026-10-01", "2026.10.5": "2026-10-10", "2026.10.9": "2026-10-20"}


def fake_pypi(project: str, version: str | None = None) -> dict:
    """PyPI's JSON release list for unsloth / unsloth_zoo, three releases."""
    assert version is None, "only the release list is read before building"
    files = {v: [{"upload_time_iso_8601": f"{d}T12:00:00Z"}] for v, d in RELEASES.items()}
    return {"releases": files}


def refuse(*_args: object, **_kw: object) -> None:
    raise urllib.error.URLError(OSError(101, "Network is unreachable"))


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def one_line(err: str, *needles: str) -> str:
    """The single stderr line, after checking there is exactly one and no traceback."""
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0], err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def pypi(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(install, "pypi_json", fake_pypi)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No network: the real ``pypi_json`` meets a refused connection."""
    install.pypi_json.cache_clear()
    monkeypatch.setattr(install.urllib.request, "urlopen", refuse)
    yield
    install.pypi_json.cache_clear()


@pytest.fixture
def never_built(monkeypatch: pytest.MonkeyPatch) -> list:
    """Records (and refuses) any environment build or test run."""
    calls: list = []

    def refuse_build(*args: object, **kw: object) -> None:
        calls.append(args)
        raise AssertionError("an environment was built or a test run started")

    monkeypatch.setattr(envs.EnvCache, "get", refuse_build)
    monkeypatch.setattr(envs, "pip_install", refuse_build)
    monkeypatch.setattr(runner, "run", refuse_build)
    return calls


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str], root: Path, *needles: str) -> str:
    """``gemma2-regress ARGV`` in-process: exit 2 in seconds, one stderr line, nothing new under ``root``."""
    before = tree(root)
    t0 = time.monotonic()
    try:
        rc = cli.main(argv)
    except SystemExit as exc:  # argparse's own usage errors
        rc = exc.code
    took = time.monotonic() - t0
    line = one_line(capsys.readouterr().err, *needles)
    assert rc == 2, line
    assert took < 5, f"{took:.1f} s"
    assert tree(root) == before, tree(root) - before
    return line


SEL = ["--", "tests/kernel"]


# --- bisect ----------------------------------------------------------------------------------------
def test_bisect_unknown_version(pypi, never_built, cwd, capsys):
    line = run_cli(
        ["bisect", "--good", "0.0.0.0", "--bad", "2026.10.9", "--cache", str(cwd / "c"), *SEL],
        capsys,
        cwd,
        "'0.0.0.0' is not a known pypi build",
        "2026.10.9",
    )
    assert line.startswith("gemma2-regress bisect: error:")
    assert never_built == []


def test_bisect_without_network(offline, never_built, cwd, capsys):
    run_cli(
        ["bisect", "--good", "2026.10.1", "--bad", "2026.10.9", "--cache", str(cwd / "c"), *SEL],
        capsys,
        cwd,
        "cannot reach PyPI",
        "Network is unreachable",
        "connect to the network",
    )


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--good", "2026.10.9", "--bad", "2026.10.1"], ("wrong-way range", "pass --find-fix")),
        (["--find-fix", "--bad", "2026.10.9", "--good", "2026.10.1"], ("wrong-way range", "drop --find-fix")),
        (["--good", "2026.10.5", "--bad", "2026.10.5"], ("the same build as", "two different builds")),
    ],
)
def test_bisect_wrong_way_range(pypi, never_built, cwd, capsys, args, needles):
    run_cli(["bisect", *args, "--cache", str(cwd / "c"), *SEL], capsys, cwd, *needles)
    assert never_built == []


def test_bisect_fresh_keeps_state_on_a_bad_range(pypi, never_built, cwd, capsys):
    state = cwd / "w" / "state.json"
    state.parent.mkdir()
    state.write_text("{}")
    argv = ["bisect", "--good", "2026.10.9", "--bad", "2026.10.1", "--workdir", str(cwd / "w"), "--fresh"]
    run_cli([*argv, *SEL], capsys, cwd, "wrong-way range")
    assert state.exists()  # checked before --fresh deletes anything


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--gpus", "x"], ("argument --gpus", "'x'")),
        (["--gpus", "-1"], ("argument --gpus",)),
        (["--gpus", "0,0"], ("argument --gpus", "distinct")),
        (["--gpus", "0,a"], ("argument --gpus",)),
        (["--gpus", "4"], ("--gpus 4: 1 GPU(s) visible",)),
        (["--gpus", "0,3"], ("--gpus 0,3: 1 GPU(s) visible",)),
        (["--cache-gb", "-1"], ("argument --cache-gb", "more than 0")),
        (["--cache-gb", "nan"], ("argument --cache-gb", "finite")),
        (["--cache-gb", "inf"], ("argument --cache-gb", "finite")),
        (["--timeout", "0"], ("argument --timeout", "more than 0")),
        (["--timeout", "soon"], ("argument --timeout", "not a number")),
        (["--signature", "crahs"], ("argument --signature", "crash:<Type>")),
        (["--torch", "two"], ("argument --torch", "not a torch version")),
        (["--installer", "conda"], ("argument --installer", "invalid choice")),
        (["--repo", ".", "--wheelhouse", "."], ("--repo and --wheelhouse",)),
        (["--gpus", "GPU-0f3e,GPU-0f3e"], ("argument --gpus", "distinct")),
        (["--wheelhouse", "nowhere"], ("wheelhouse nowhere is not a directory",)),
        (["--repo", "."], ("is not a git checkout",)),
    ],
)
def test_bisect_bad_flag_values(pypi, never_built, cwd, capsys, monkeypatch, args, needles):
    monkeypatch.setattr(cli, "visible_gpus", lambda: 1)
    argv = ["bisect", "--good", "2026.10.1", "--bad", "2026.10.9", "--cache", str(cwd / "c"), *args, *SEL]
    run_cli(argv, capsys, cwd, *needles)


def test_bisect_gpus_without_any_gpu(pypi, never_built, cwd, capsys, monkeypatch):
    monkeypatch.setattr(cli, "visible_gpus", lambda: 0)
    argv = ["bisect", "--good", "2026.10.1", "--bad", "2026.10.9", "--gpus", "2", "--cache", "c", *SEL]
    run_cli(argv, capsys, cwd, "--gpus 2: no GPU is visible here", "leave --gpus out")


def test_bisect_empty_wheelhouse(never_built, cwd, capsys):
    (cwd / "house").mkdir()
    argv = ["bisect", "--wheelhouse", "house", "--good", "1.0", "--bad", "2.0", "--cache", "c", *SEL]
    run_cli(argv, capsys, cwd, "no wheelhouse builds", "unsloth-<version>-*.whl")


def test_bisect_cache_is_a_file(pypi, never_built, cwd, capsys):
    (cwd / "c").write_text("")
    argv = ["bisect", "--good", "2026.10.1", "--bad", "2026.10.9", "--cache", "c", *SEL]
    run_cli(argv, capsys, cwd, "--cache c:", "is a file, not a folder", "writable folder")


def test_bisect_unknown_base_release_before_any_commit(pypi, never_built, tmp_path, cwd, capsys):
    repo = _git_repo(tmp_path / "clone")
    argv = ["bisect", "--repo", str(repo), "--good", "v1", "--bad", "main", "--base", "1999.1.1"]
    run_cli([*argv, "--cache", "c", *SEL], capsys, cwd, "'1999.1.1' is not a known pypi build")
    argv = ["bisect", "--repo", str(repo), "--good", "nosuchref", "--bad", "main", "--cache", "c"]
    run_cli([*argv, *SEL], capsys, cwd, "git rev-parse nosuchref^{commit} failed", "check the ref")


# --- gate ------------------------------------------------------------------------------------------
def test_gate_unknown_candidate_fails_before_the_baseline_is_built(pypi, never_built, cwd, capsys):
    line = run_cli(
        ["gate", "--candidate", "0.0.0.0", "--baseline", "2026.10.9", "--cache", "c", "--out", "g"],
        capsys,
        cwd,
        "--candidate 0.0.0.0: unsloth 0.0.0.0 is not on PyPI",
        "recent releases",
    )
    assert line.startswith("gemma2-regress gate: error:")
    assert never_built == []


def test_gate_unknown_baseline(pypi, never_built, cwd, capsys):
    argv = ["gate", "--candidate", "2026.10.9", "--baseline", "2026.13.1", "--cache", "c", "--out", "g"]
    run_cli(argv, capsys, cwd, "--baseline 2026.13.1: unsloth 2026.13.1 is not on PyPI")
    assert never_built == []


def test_gate_without_network(offline, never_built, cwd, capsys):
    argv = ["gate", "--candidate", "2026.10.9", "--cache", "c", "--out", "g"]  # baseline: latest
    run_cli(argv, capsys, cwd, "--candidate 2026.10.9: cannot reach PyPI", "connect to the network")


def test_gate_missing_or_broken_wheel(pypi, never_built, cwd, capsys):
    argv = ["gate", "--baseline", "2026.10.9", "--cache", "c", "--out", "g", "--candidate"]
    run_cli([*argv, "dist/unsloth-9.9-py3-none-any.whl"], capsys, cwd, "no such wheel file")
    (cwd / "unsloth-9.9-py3-none-any.whl").write_bytes(b"not a zip")
    run_cli([*argv, "unsloth-9.9-py3-none-any.whl"], capsys, cwd, "not an unsloth wheel")
    assert never_built == []


def test_gate_site_folder_must_hold_unsloth(pypi, never_built, cwd, capsys):
    (cwd / "site").mkdir()
    argv = ["gate", "--candidate", "2026.10.9", "--baseline", "site", "--cache", "c", "--out", "g"]
    run_cli(argv, capsys, cwd, "--baseline site: not an unpacked bundle", "tar xzf .gpu/site.tgz")
    argv = ["gate", "--candidate", "./nowhere", "--baseline", "2026.10.9", "--cache", "c", "--out", "g"]
    run_cli(argv, capsys, cwd, "--candidate ./nowhere: no such file or folder")


def test_gate_unknown_git_ref(pypi, never_built, tmp_path, cwd, capsys):
    repo = _git_repo(tmp_path / "clone")
    argv = ["gate", "--candidate", "nosuchref", "--repo", str(repo), "--baseline", "2026.10.9"]
    run_cli([*argv, "--cache", "c", "--out", "g"], capsys, cwd, "--candidate nosuchref: not a commit of")
    argv = ["gate", "--candidate", "main", "--repo", str(tmp_path), "--baseline", "2026.10.9"]
    run_cli([*argv, "--cache", "c", "--out", "g"], capsys, cwd, "is not a git checkout")


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--tiers", "tpu"], ("argument --tiers", "unknown tier 'tpu'")),
        (["--tiers", ","], ("argument --tiers", "(none given)")),
        (["--perf-threshold", "1"], ("argument --perf-threshold", "more than 1")),
        (["--perf-threshold", "0.8"], ("argument --perf-threshold",)),
        (["--perf-min-effect", "0.9"], ("argument --perf-min-effect", "at least 1")),
        (["--perf-args='--smoke"], ("argument --perf-args", "No closing quotation")),
        (["--perf-args=--lenghts 4096"], ("--perf-args:", "--lenghts")),
        (["--perf-args=--lengths 4097..4095"], ("--perf-args: --lengths",)),
        (["--timeout", "-5"], ("argument --timeout",)),
        (["--installer", "uv"], ("--installer uv: uv is not installed",)),
    ],
)
def test_gate_bad_flag_values(pypi, never_built, cwd, capsys, monkeypatch, args, needles):
    monkeypatch.setattr(envs, "uv_binary", lambda: None)
    argv = ["gate", "--candidate", "2026.10.9", "--baseline", "2026.10.1", "--cache", "c", "--out", "g"]
    run_cli([*argv, *args], capsys, cwd, *needles)


def test_gate_out_is_a_file(pypi, never_built, cwd, capsys):
    (cwd / "g").write_text("")
    argv = ["gate", "--candidate", "2026.10.9", "--baseline", "2026.10.1", "--cache", "c", "--out", "g"]
    run_cli(argv, capsys, cwd, "--out g:", "is a file")


def test_gate_library_checks_tiers_too(pypi, never_built, tmp_path):
    with pytest.raises(bisect.BisectError, match="unknown tier"):
        gate.gate(
            "2026.10.9",
            "2026.10.1",
            out=tmp_path / "g",
            cache=envs.EnvCache(tmp_path / "c"),
            cwd=tmp_path,
            pytest_args=["tests"],
            tiers=["tpu"],
        )
    assert never_built == [] and not (tmp_path / "g").exists()


def test_gate_from_a_shell_fails_in_seconds_without_network(tmp_path):
    """The real command in a fresh interpreter, PyPI behind a refusing proxy: one line, exit 2, no cache."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(
        https_proxy="http://127.0.0.1:9",
        HTTPS_PROXY="http://127.0.0.1:9",
        PYTHONPATH=str(ROOT),
        GEMMA2_REGRESS_CACHE=str(tmp_path / "home"),
    )
    argv = ["gate", "--candidate", "0.0.0.0", "--baseline", "2026.10.9", "--cache", str(tmp_path / "x")]
    t0 = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "gemma2_regress.cli", *argv],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and time.monotonic() - t0 < 15
    one_line(done.stderr, "cannot reach PyPI")
    assert tree(tmp_path) == set()


# --- kill matrix -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["no_such_bug"], ("unknown mutant 'no_such_bug'", "crash2024")),
        (["--jobs", "0"], ("argument --jobs", "at least 1")),
        (["--jobs", "two"], ("argument --jobs", "whole number")),
        (["--workers", "-1"], ("argument --workers",)),
        (["--timeout-s", "0"], ("argument --timeout-s",)),
        (["--tier", "tpu"], ("unknown tier 'tpu'",)),
        (["--tier", "cpu,gpu", "--out", "km.json"], ("two tiers would write one file",)),
        (["--out", "km-{teir}.json"], ("bad placeholder",)),
        (["--python", "/no/such/python"], ("--python /no/such/python: no such interpreter",)),
    ],
)
def test_killmatrix_bad_arguments(cwd, capsys, args, needles):
    assert killmatrix.main(args) == 2
    one_line(capsys.readouterr().err, *needles)
    with pytest.raises(SystemExit) as exc:  # what `nox -s mutants` calls before it installs anything
        killmatrix.parse_args(args)
    assert exc.value.code == 2
    assert tree(cwd) == set()


# --- perf ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--device", "tpu"], ("--device 'tpu'",)),
        (["--device", "cuda:7"], ("--device cuda:7: torch sees",)),
        (["--dtype", "fp8"], ("argument --dtype",)),
        (["--repeats", "0"], ("argument --repeats",)),
        (["--warmup", "-1"], ("argument --warmup",)),
        (["--budget-s", "-3"], ("argument --budget-s",)),
        (["--plant-slowdown", "1"], ("--plant-slowdown 1",)),
        (["--device", "cpu", "--lengths", "4097..4095"], ("--lengths",)),
        (["--device", "cpu", "--batch", "0"], ("--batch",)),
        (["--device", "cpu", "--models", "3b"], ("--models: unknown 3b",)),
        (["--device", "cpu", "--impls", "xformers"], ("--impls: unknown xformers",)),
        (["--device", "cpu", "--out", "afile"], ("--out afile: ", "is a file")),
        (["compare", "a.json", "b.json", "--threshold", "1"], ("argument --threshold",)),
        (["compare", "a.json", "b.json", "--min-effect", "0.9"], ("argument --min-effect", "at least 1")),
        (["--plant-slowdown", "0.5"], ("--plant-slowdown 0.5", "above 1")),
        (["compare", "a.json", "b.json", "--mem-threshold", "0.5"], ("argument --mem-threshold",)),
        (["compare", "a.json", "b.json"], ("no such perf JSON",)),
        (["sensitivity", "--sizes", "1.05,1"], ("argument --sizes", "'1': must be more than 1")),
        (["sensitivity", "--sizes", "0.9"], ("argument --sizes", "more than 1")),
        (["sensitivity", "--sizes", ","], ("argument --sizes", "give factors above 1")),
        (["sensitivity", "--runs", "0"], ("argument --runs", "at least 1")),
        (["sensitivity", "--device", "cpu", "--lengths", "4097..4095"], ("--lengths",)),
        (["sensitivity", "--device", "cpu", "--modes", "bwd"], ("--modes: unknown bwd",)),
        (["sensitivity", "--device", "cpu", "--out", "afile"], ("--out afile: ", "is a file")),
    ],
)
def test_perf_bad_arguments(cwd, capsys, args, needles):
    if any(a.startswith("cuda") for a in args):
        import torch

        if torch.cuda.device_count() > 7:
            pytest.skip("this machine has a GPU 7")
    (cwd / "afile").write_text("")
    before = tree(cwd)
    try:
        rc = cli.main(["perf", *args])
    except SystemExit as exc:
        rc = exc.code
    assert rc == 2
    one_line(capsys.readouterr().err, *needles)
    assert tree(cwd) == before


def _git_repo(path: Path) -> Path:
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    for i in (1, 2):
        (path / "f.txt").write_text(str(i))
        commit_all(path, f"c{i}")
        git(path, "tag", f"v{i}")
    return path
