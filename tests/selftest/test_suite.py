"""What a tier is (gemma2_regress/suite.py), where the suite is found, and what the wheel carries (setup.py).

The wheel itself is built and run end to end by hand (README "The suite as a pytest plugin"); here, without
a build: the files setup.py lays out, the settings it writes, and the command `gemma2-regress test` runs.
"""

from __future__ import annotations

import ast
import configparser
import importlib.util
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from gemma2_regress import cli, gpu_check, suite

ROOT = Path(__file__).resolve().parents[2]


def _setup_module():
    spec = importlib.util.spec_from_file_location("gemma2_regress_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # __name__ is not "__main__": setup() does not run
    return module


def test_tier_args_cpu_and_gpu() -> None:
    assert suite.tier_args("cpu", environ={}) == ["-m", "not gpu", "-n", "2", "--dist", "loadgroup"]
    assert suite.tier_args("cpu", environ={"GEMMA2_REGRESS_WORKERS": "1"}) == [
        "-m",
        "not gpu",
        "-p",
        "no:xdist",
    ]
    assert suite.tier_args("gpu", 1, environ={}) == ["-m", "gpu", "-p", "no:xdist"]
    four = suite.tier_args("gpu", 2, environ={"GEMMA2_REGRESS_WORKERS_PER_GPU": "2"})
    assert four == ["-m", "gpu", "-n", "4", "--dist", "loadgroup"]
    h200 = suite.tier_args("gpu", 1, environ={}, gpu_gib=139.8, cores=16)
    assert h200 == ["-m", "gpu", "-n", "4", "--dist", "loadgroup"]


@pytest.mark.parametrize(
    ("gpus", "gib", "cores", "environ", "want"),
    [
        (1, 139.8, 16, {}, 4),  # one H200: its memory and its 16 cores both allow 4
        (2, 139.8, 32, {}, 4),  # 2 x H200 with 32 cores: 4 per GPU
        (1, 139.8, 8, {}, 2),  # the cores bind: 8 / 4
        (1, 79.6, 64, {}, 2),  # an 80 GB card: the memory binds
        (1, 22.0, 16, {}, 1),  # a card below one worker's share still runs one
        (1, None, 16, {}, 1),  # memory unknown (no nvidia-smi): one
        (1, 139.8, 16, {"GEMMA2_REGRESS_WORKERS_PER_GPU": "3"}, 3),  # the override wins
    ],
)
def test_workers_per_gpu_follow_memory_and_cores(gpus, gib, cores, environ, want) -> None:
    n, why = suite.workers_per_gpu(gpus, gib, cores, environ)
    assert n == want, why
    assert ("GEMMA2_REGRESS_WORKERS_PER_GPU" in why) and (why.startswith("GEMMA2") == bool(environ))


@pytest.mark.parametrize(
    ("gpus", "gib", "cores", "want"),
    [
        (1, 139.8, 16, 6),  # one H200 warm: 4 x 1.5 by memory, 16 / 2.5 by cores
        (2, 139.8, 32, 6),  # 2 x H200 with 32 cores: 6 per GPU
        (1, 139.8, 8, 3),  # the cores bind: 8 / 2.5
        (1, 79.6, 64, 3),  # an 80 GB card: 2 x 1.5
        (1, 22.0, 16, 1),  # a card below one worker's share still runs one
    ],
)
def test_a_warm_run_takes_more_workers(gpus, gib, cores, want) -> None:
    """After a whole tier passed on this stack and cache (``warm``), more workers than a cold run's."""
    n, why = suite.workers_per_gpu(gpus, gib, cores, {}, warm=True)
    assert n == want and why.startswith("warm: "), why
    assert suite.workers_per_gpu(gpus, gib, cores, {"GEMMA2_REGRESS_WORKERS_PER_GPU": "2"}, warm=True)[0] == 2
    xdist = ["-n", str(want * gpus), "--dist", "loadgroup"] if want * gpus > 1 else ["-p", "no:xdist"]
    assert suite.tier_args("gpu", gpus, {}, gpu_gib=gib, cores=cores, warm=True) == ["-m", "gpu", *xdist]


def test_narrowed_names_what_ran_less_than_the_tier() -> None:
    assert suite.narrowed(False, "gpu", "", [], "gpu") == []
    assert suite.narrowed(False, "not gpu", "", [], "cpu") == []
    assert suite.narrowed(False, "", "", [], "") == []  # outside a tier, no -m is none
    assert suite.narrowed(True, "gpu and unsloth", "window", ["x::y"], "gpu") == [
        "test paths given",
        "-m 'gpu and unsloth'",
        "-k 'window'",
        "--deselect",
    ]


def test_gpu_memory_is_the_smallest_visible_card(tmp_path, monkeypatch) -> None:
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\nprintf '0, 143771\\n1, 81559\\n'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert gpu_check.gpu_memory_gib() == pytest.approx(81559 / 1024)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert gpu_check.gpu_memory_gib() == pytest.approx(143771 / 1024)
    monkeypatch.setenv("PATH", str(tmp_path / "none"))
    assert gpu_check.gpu_memory_gib() is None


@pytest.mark.parametrize(
    ("tier", "environ", "fragment"),
    [
        ("cpu", {"GEMMA2_REGRESS_WORKERS": "0"}, "GEMMA2_REGRESS_WORKERS='0'"),
        ("gpu", {"GEMMA2_REGRESS_WORKERS_PER_GPU": "two"}, "GEMMA2_REGRESS_WORKERS_PER_GPU='two'"),
        ("tpu", {}, "unknown tier 'tpu'"),
    ],
)
def test_bad_tier_settings_name_the_fix(tier: str, environ: dict, fragment: str) -> None:
    with pytest.raises(suite.SuiteError, match=fragment):
        suite.tier_args(tier, 1, environ=environ)


def test_tier_env_keeps_a_chosen_profile() -> None:
    pinned = {suite.ALIASING_ENV: "0", suite.BYTECODE_ENV: ""}
    assert suite.tier_env("cpu", environ={}) == {
        "GEMMA2_REGRESS_TIER": "cpu",
        "HYPOTHESIS_PROFILE": "ci",
        suite.MALLOC_ENV: suite.CPU_MALLOC,
        **pinned,
    }
    chosen = suite.tier_env("gpu", 2, environ={"HYPOTHESIS_PROFILE": "nightly"})
    assert chosen == {"GEMMA2_REGRESS_TIER": "gpu", "GEMMA2_REGRESS_GPUS": "2", **pinned}


def test_the_tier_writes_bytecode_where_the_runner_says_not_to() -> None:
    """An empty PYTHONDONTWRITEBYTECODE is unset for Python, so pytest can keep its assertion rewrites."""
    environ = {**os.environ, suite.BYTECODE_ENV: "1"}
    env = {**environ, **suite.tier_env("cpu", environ=environ)}
    probe = [sys.executable, "-c", "import sys; print(sys.dont_write_bytecode)"]
    assert subprocess.run(probe, env=environ, capture_output=True, text=True).stdout.strip() == "True"
    assert subprocess.run(probe, env=env, capture_output=True, text=True).stdout.strip() == "False"


_HEAP_PROBE = """
import ctypes
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
p = libc.malloc(64 << 20)
lo = hi = 0
for line in open("/proc/self/maps"):
    if line.rstrip().endswith("[heap]"):
        lo, hi = (int(a, 16) for a in line.split()[0].split("-"))
print(lo <= p < hi)
"""


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc on Linux only"
)
def test_the_cpu_tier_keeps_large_blocks_in_the_heap() -> None:
    """glibc ignores a misspelled tunable silently: a 64 MiB malloc in a child under the cpu tier's
    variables lies in the heap, and without them in a mapping of its own."""
    environ = {k: v for k, v in os.environ.items() if k != suite.MALLOC_ENV}

    def in_heap(env: dict[str, str]) -> bool:
        run = subprocess.run([sys.executable, "-c", _HEAP_PROBE], env=env, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        return run.stdout.strip() == "True"

    assert in_heap({**environ, **suite.tier_env("cpu", environ=environ)})
    assert not in_heap(environ)
    chosen = {suite.MALLOC_ENV: "glibc.malloc.arena_max=1"}
    assert suite.MALLOC_ENV not in suite.tier_env("cpu", environ=chosen)


def test_torch_reads_the_tier_settings_and_its_cache_keys_match_with_and_without_ci() -> None:
    """torch reads $CI into an AOTAutograd setting that its cache keys hash; the tier pins it. And the
    compile-workers variable is the one Inductor reads at import (6 cores, 2 workers: 3 each)."""
    child = (
        "import torch._functorch.config as f, torch._inductor.config as i; "
        "print(f.error_on_custom_op_aliasing, i.compile_threads)"
    )
    for environ in ({}, {"CI": "true"}):
        env = {**environ, **suite.tier_env("cpu", environ=environ, cores=6)}
        run = subprocess.run(
            [sys.executable, "-c", child], env=env, capture_output=True, text=True, check=True
        )
        assert run.stdout.split()[-2:] == ["False", "3"], (environ, run.stdout, run.stderr)
    assert suite.ALIASING_ENV not in suite.tier_env("cpu", environ={suite.ALIASING_ENV: "1"})


def test_tier_env_shares_one_compile_cache_unless_one_is_chosen(tmp_path: Path) -> None:
    cache = tmp_path / "compile-cache"
    assert suite.tier_env("cpu", environ={}, compile_cache=cache)["TORCHINDUCTOR_CACHE_DIR"] == str(cache)
    chosen = suite.tier_env(
        "gpu", 1, environ={"TORCHINDUCTOR_CACHE_DIR": "/runner/cache"}, compile_cache=cache
    )
    assert "TORCHINDUCTOR_CACHE_DIR" not in chosen  # the runner's own folder stays
    # a folder of its own under a setting of ATen's CPU capability (suite.compile_cache_for says why)
    aten = suite.tier_env("cpu", environ={"ATEN_CPU_CAPABILITY": "avx2"}, compile_cache=cache)
    assert aten["TORCHINDUCTOR_CACHE_DIR"] == str(cache / "aten-avx2")


THREAD_SETTINGS = ("OMP_NUM_THREADS", "TORCHINDUCTOR_COMPILE_THREADS")


@pytest.mark.parametrize(
    ("cores", "environ", "threads"),
    [
        (2, {}, ("1", "1")),  # 2 workers on 2 cores: one thread each, compiles in the test process
        (16, {}, ("8", "8")),
        (1, {}, ("1", "1")),  # never 0
        (2, {"GEMMA2_REGRESS_WORKERS": "1"}, ("2", "2")),
        (16, {"OMP_NUM_THREADS": "3"}, (None, "8")),  # the caller's choice stays
        (16, {"TORCHINDUCTOR_COMPILE_THREADS": "3"}, ("8", None)),
        (None, {}, (None, None)),  # cores unknown: torch decides
    ],
)
def test_cpu_tier_shares_the_cores_among_its_workers(cores, environ, threads) -> None:
    env = suite.tier_env("cpu", environ=environ, cores=cores)
    assert tuple(env.get(k) for k in THREAD_SETTINGS) == threads
    gpu = suite.tier_env("gpu", 1, environ=environ, cores=cores)
    assert not set(THREAD_SETTINGS) & set(gpu)  # torch's defaults (docs/gpu.md: fewer compile threads cost)


@pytest.mark.parametrize(
    ("environ", "threads"),
    [({}, "1"), ({"TORCHINDUCTOR_COMPILE_THREADS": "4"}, None)],  # the caller's choice stays
)
def test_warm_gpu_tier_compiles_in_each_worker(environ: dict[str, str], threads: str | None) -> None:
    env = suite.tier_env("gpu", 1, environ=environ, cores=16, warm=True)
    assert env.get("TORCHINDUCTOR_COMPILE_THREADS") == threads and "OMP_NUM_THREADS" not in env
    assert "TORCHINDUCTOR_COMPILE_THREADS" not in suite.tier_env("gpu", 1, environ=environ, cores=16)  # cold


def test_root_is_this_checkout_or_the_chosen_one(tmp_path: Path) -> None:
    assert suite.root(environ={}) == ROOT
    assert suite.root(environ={suite.ROOT_ENV: str(ROOT)}) == ROOT
    with pytest.raises(suite.SuiteError, match=f"{suite.ROOT_ENV}={tmp_path}"):
        suite.root(environ={suite.ROOT_ENV: str(tmp_path)})


def test_the_wheel_carries_the_suite_without_the_selftests(tmp_path: Path) -> None:
    dest = tmp_path / "suite_root"
    _setup_module().lay_suite(dest)
    assert suite.is_root(dest)
    assert (dest / "tests" / "kernel" / "test_slow_kernel.py").is_file()
    assert (dest / "fixtures" / "model.py").is_file()
    assert (dest / "requirements" / "test.txt").is_file()  # the lock the run header checks
    assert not (dest / "tests" / "selftest").exists()
    assert suite.config_file(dest) == dest / "pytest.ini"
    ini = configparser.ConfigParser()
    ini.read(dest / "pytest.ini")
    assert ini["pytest"]["addopts"].split()[:2] == ["-ra", "--strict-markers"]
    assert ini["pytest"]["testpaths"].strip() == "tests"
    assert "ignore::DeprecationWarning" in ini["pytest"]["filterwarnings"].split()


def test_command_runs_in_the_suite_with_reports_outside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)  # else a subfolder of its own
    argv, env = suite.pytest_command(
        "cpu", ["tests/kernel", "-k", "window"], suite=ROOT, reports=tmp_path, python="py"
    )
    assert argv[:7] == ["py", "-m", "pytest", "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(ROOT)]
    assert argv[-3:] == ["tests/kernel", "-k", "window"]
    assert f"--junitxml={tmp_path / 'cpu' / 'junit.xml'}" in argv
    assert env["GEMMA2_REGRESS_REPORT"] == str(tmp_path / "cpu" / "summary.json")
    assert env["UNSLOTH_COMPILE_LOCATION"].startswith(str(tmp_path))
    assert env["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "compile-cache")


def test_gemma2_regress_test_runs_a_selection(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real command, on a cheap selection of this checkout: pytest's exit status and the reports."""
    monkeypatch.setenv("GEMMA2_REGRESS_WORKERS", "1")
    monkeypatch.chdir(tmp_path)  # started elsewhere: the selection's path is still the suite's
    # two tests of a millisecond: the run's own start (torch, the plugins) is what this costs
    cheap = ["tests/selftest/test_padding.py", "-k", "one_sided or unpadded_drops"]
    selection = [*cheap, "-q", "-x", "--no-compile-canary"]
    code = cli.main(["test", "--reports", str(tmp_path / "reports"), *selection])
    assert code == 0
    assert (tmp_path / "reports" / "cpu" / "summary.json").is_file()
    assert (tmp_path / "reports" / "cpu" / "junit.xml").is_file()
    assert "cpu tier of" in capsys.readouterr().out


def test_gemma2_regress_test_rejects_a_bad_tier(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["test", "--tier", "tpu"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'tpu'" in err and len(err.strip().splitlines()) == 1


def test_markers_are_declared_once(pytestconfig: pytest.Config) -> None:
    from gemma2_regress.plugins.markers import MARKERS

    declared = [m.split(":", 1)[0] for m in pytestconfig.getini("markers")]
    for name in MARKERS:
        assert declared.count(name) == 1, (name, declared)


def test_what_the_noxfile_imports_needs_neither_pytest_nor_torch() -> None:
    """nox's own interpreter has nox and uv only (the README's commands): the noxfile's top-level imports
    of this package must load without pytest or torch."""
    tree = ast.parse((ROOT / "noxfile.py").read_text())
    imports = [
        ast.unparse(node)
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gemma2_regress")
    ]
    assert any("suite" in line for line in imports), imports
    code = "\n".join(["import sys", "sys.modules.update(pytest=None, torch=None)", *imports])
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
