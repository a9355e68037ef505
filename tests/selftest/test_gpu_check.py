"""gemma2_regress.gpu_check: why the GPU tier cannot run, and `nox -s gpu` failing or skipping on it.

The probes run in real subprocesses of this interpreter, with stand-in ``torch`` / ``unsloth`` modules
put first on PYTHONPATH, so each answer (devices, a CPU build, an import error, a crash) is staged
the same on a machine with or without a GPU. ``nvidia-smi`` is staged by a script on PATH.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gemma2_regress import gpu_check

ROOT = Path(__file__).resolve().parents[2]
BROKEN_DRIVER = "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."


def _fake_module(folder: Path, name: str, source: str) -> dict[str, str]:
    """An environment whose interpreter imports ``name`` from ``source`` (written under ``folder``)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text(source)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")])}


def _fake_torch(folder: Path, devices: int, *, cuda: str | None = "12.4", init_error: str = "") -> dict:
    return _fake_module(
        folder,
        "torch",
        f"""
import types
__version__ = "2.99.0"
version = types.SimpleNamespace(cuda={cuda!r})
def _init():
    if {init_error!r}:
        raise AssertionError({init_error!r})
cuda = types.SimpleNamespace(
    device_count=lambda: {devices}, is_available=lambda: {devices} > 0, init=_init,
    get_device_name=lambda index=0: "Stand-in GPU",
)
""",
    )


def _fake_nvidia_smi(folder: Path, rc: int, output: str) -> str:
    """A PATH on which ``nvidia-smi`` prints ``output`` and exits ``rc``."""
    folder.mkdir(parents=True, exist_ok=True)
    smi = folder / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\ncat <<'EOF'\n{output}\nEOF\nexit {rc}\n")
    smi.chmod(0o755)
    return os.pathsep.join([str(folder), os.environ.get("PATH", "")])


# --- required_by ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "value", "expected"),
    [
        ([], None, None),
        ([], "0", None),
        ([], "", None),
        ([], "1", "GEMMA2_REGRESS_REQUIRE_GPU=1"),
        ([], "true", "GEMMA2_REGRESS_REQUIRE_GPU=true"),
        (["-k", "x", "--require-gpu"], None, "--require-gpu"),
        (["--require-gpu"], "0", "--require-gpu"),
    ],
)
def test_required_by_the_flag_or_the_variable(args, value, expected):
    environ = {} if value is None else {gpu_check.REQUIRE_ENV: value}
    assert gpu_check.required_by(args, environ) == expected


def test_required_by_rejects_an_unclear_value_in_one_line():
    with pytest.raises(ValueError, match=r"GEMMA2_REGRESS_REQUIRE_GPU='maybe': use 1 .* or 0") as err:
        gpu_check.required_by([], {gpu_check.REQUIRE_ENV: "maybe"})
    assert "\n" not in str(err.value)


# --- the driver ----------------------------------------------------------------------------------------


def test_no_nvidia_smi_is_a_reason(monkeypatch):
    monkeypatch.setattr(gpu_check.shutil, "which", lambda name: None)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert gpu_check.driver_problem() == "no `nvidia-smi` on PATH: no NVIDIA driver on this machine"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # devices named without the tool: torch decides
    assert gpu_check.driver_problem() is None


@pytest.mark.parametrize(
    ("rc", "output", "expected"),
    [
        (9, BROKEN_DRIVER, f"`nvidia-smi -L` failed (exit 9): {BROKEN_DRIVER}"),
        (0, "No devices found.", "`nvidia-smi -L` lists no GPU"),
        (0, "GPU 0: NVIDIA H200 (UUID: GPU-1234)", None),
    ],
)
def test_nvidia_smi_answers(tmp_path, monkeypatch, rc, output, expected):
    monkeypatch.setenv("PATH", _fake_nvidia_smi(tmp_path, rc, output))
    assert gpu_check.driver_problem() == expected


def test_a_hanging_driver_is_a_reason(monkeypatch):
    monkeypatch.setattr(gpu_check.shutil, "which", lambda name: "/usr/bin/nvidia-smi")

    def hang(*args, **kwargs):
        raise subprocess.TimeoutExpired(args[0], kwargs["timeout"])

    monkeypatch.setattr(gpu_check.subprocess, "run", hang)
    assert (
        gpu_check.driver_problem(timeout_s=5)
        == "`nvidia-smi -L` did not answer in 5 s: the NVIDIA driver hangs"
    )


# --- torch and Unsloth, asked in a subprocess ----------------------------------------------------------


def test_torch_with_devices(tmp_path):
    env = _fake_torch(tmp_path, devices=2)
    assert gpu_check.torch_problem(sys.executable, env) == (2, None)
    assert gpu_check.cuda_device_count(sys.executable, env) == 2


def test_in_process_count_is_what_cli_and_killmatrix_spread_over(monkeypatch):
    import torch

    from gemma2_regress import cli

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    assert gpu_check.cuda_device_count() == 3
    assert cli._gpus("auto") == ["0", "1", "2"]


def test_torch_cpu_build_says_so(tmp_path):
    env = _fake_torch(tmp_path, devices=0, cuda=None, init_error="Torch not compiled with CUDA enabled")
    n, problem = gpu_check.torch_problem(sys.executable, env)
    assert n == 0
    assert (
        problem
        == "torch sees no CUDA device (torch 2.99.0, a CPU build): Torch not compiled with CUDA enabled"
    )
    assert gpu_check.cuda_device_count(sys.executable, env) == 0


def test_torch_not_importable(tmp_path):
    env = _fake_module(tmp_path, "torch", "raise ImportError('libcudart.so.12: cannot open shared object')\n")
    n, problem = gpu_check.torch_problem(sys.executable, env)
    assert n == 0
    assert problem == (
        f"torch is not importable by {sys.executable}: ImportError: libcudart.so.12: cannot open shared object"
    )


def test_unsloth_importable_despite_its_banner(tmp_path):
    env = _fake_module(tmp_path, "unsloth", "print('Unsloth: Will patch your computer')\n__version__ = '1'\n")
    assert gpu_check.unsloth_problem(sys.executable, env) is None


def test_unsloth_import_error(tmp_path):
    env = _fake_module(
        tmp_path, "unsloth", "raise NotImplementedError('Unsloth cannot find any torch accelerator')\n"
    )
    assert gpu_check.unsloth_problem(sys.executable, env) == (
        f"Unsloth is not importable by {sys.executable}: NotImplementedError: Unsloth cannot find any torch accelerator"
    )


def test_unsloth_import_crash(tmp_path):
    env = _fake_module(
        tmp_path, "unsloth", "import os, sys\nsys.stderr.write('Segmentation fault\\n')\nos._exit(139)\n"
    )
    problem = gpu_check.unsloth_problem(sys.executable, env)
    assert (
        problem
        == f"Unsloth is not importable: `import unsloth` in {sys.executable} exited 139: Segmentation fault"
    )


def test_torch_stack_names_the_interpreter_the_versions_and_the_gpu(tmp_path):
    n, problem, stack = gpu_check.torch_stack(sys.executable, _fake_torch(tmp_path, devices=1))
    assert (n, problem) == (1, None)
    assert stack["python"] == sys.executable and stack["gpu"] == "Stand-in GPU"
    assert {"torch", "triton", "transformers", "trl", "unsloth", "unsloth_zoo"} <= set(stack)
    assert "gpu" not in gpu_check.torch_stack(sys.executable, _fake_torch(tmp_path / "cpu", devices=0))[2]


def test_a_recorded_unsloth_import_is_not_asked_again_under_the_same_stack(tmp_path):
    imports = tmp_path / "imports"
    env = _fake_module(
        tmp_path / "ok", "unsloth", f"open({str(imports)!r}, 'a').write('x')\n__version__ = '1'\n"
    )
    record, stack = tmp_path / "cache" / "record.json", {"python": sys.executable, "unsloth": "1"}
    assert not gpu_check.unsloth_recorded(record, stack)
    assert gpu_check.unsloth_problem(sys.executable, env, record=record, stack=stack) is None
    assert imports.read_text() == "x"  # imported once, and the pass recorded
    assert gpu_check.unsloth_recorded(record, stack)
    assert not gpu_check.unsloth_recorded(record, {**stack, "unsloth": "2"})  # another stack asks again
    assert not gpu_check.unsloth_recorded(record, {})  # a stack the probe could not see never matches
    broken = _fake_module(tmp_path / "broken", "unsloth", "raise ImportError('no GPU')\n")
    other = tmp_path / "cache" / "other.json"
    assert gpu_check.unsloth_problem(sys.executable, broken, record=other, stack=stack) is not None
    assert not other.exists()  # a failure is never recorded


def test_checks_run_cheapest_first_and_stop_at_the_first_reason(monkeypatch):
    asked: list[str] = []

    def answer(name, result):
        def check(*args, **kwargs):
            asked.append(name)
            return result

        return check

    monkeypatch.setattr(gpu_check, "driver_problem", answer("driver", "no driver"))
    monkeypatch.setattr(gpu_check, "torch_problem", answer("torch", (0, "no device")))
    monkeypatch.setattr(gpu_check, "unsloth_problem", answer("unsloth", "no unsloth"))
    assert gpu_check.gpu_tier_problem() == "no driver" and asked == ["driver"]
    monkeypatch.setattr(gpu_check, "driver_problem", answer("driver", None))
    asked.clear()
    assert gpu_check.gpu_tier_problem() == "no device" and asked == ["driver", "torch"]
    monkeypatch.setattr(gpu_check, "torch_problem", answer("torch", (1, None)))
    asked.clear()
    assert gpu_check.gpu_tier_problem() == "no unsloth" and asked == ["driver", "torch", "unsloth"]
    monkeypatch.setattr(gpu_check, "unsloth_problem", answer("unsloth", None))
    assert gpu_check.gpu_tier_problem() is None


# --- the command (tox) -----------------------------------------------------------------------------------


def test_command_fails_only_where_required(monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "driver_problem", lambda: "no `nvidia-smi` on PATH")
    monkeypatch.delenv(gpu_check.REQUIRE_ENV, raising=False)
    assert gpu_check.main(["--driver-only", "-k", "window"]) == 0
    assert "tests will skip: no `nvidia-smi` on PATH" in capsys.readouterr().out
    assert gpu_check.main(["--driver-only", "--require-gpu", "-x"]) == 1
    err = capsys.readouterr().err
    assert err == "gpu_check: GPU tier required (--require-gpu) but no `nvidia-smi` on PATH\n"
    monkeypatch.setenv(gpu_check.REQUIRE_ENV, "1")
    assert gpu_check.main(["--driver-only"]) == 1
    monkeypatch.setenv(gpu_check.REQUIRE_ENV, "maybe")
    assert gpu_check.main(["--driver-only"]) == 2


# --- `nox -s gpu` end to end: a broken driver, required or not -----------------------------------------


def _nox() -> list[str]:
    """How to run nox here: this interpreter if it has nox, else a `nox` on PATH (CI: the one that
    runs this tier)."""
    try:
        import nox  # noqa: F401

        return [sys.executable, "-m", "nox"]
    except ImportError:
        found = shutil.which("nox")
        if found is None:
            pytest.skip("nox is not installed here (the README's first step installs it)")
        return [found]


@pytest.mark.parametrize("required", [True, False], ids=["required", "not-required"])
def test_nox_gpu_session_on_a_broken_driver(tmp_path, required):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GEMMA2_REGRESS_", "NOX_"))}
    env["PATH"] = _fake_nvidia_smi(tmp_path / "bin", 9, BROKEN_DRIVER)
    if required:
        env[gpu_check.REQUIRE_ENV] = "1"
    done = subprocess.run(
        [*_nox(), "-f", str(ROOT / "noxfile.py"), "-s", "gpu", "--no-venv"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = done.stdout + done.stderr
    lines = [line for line in out.splitlines() if "nvidia-smi" in line]
    if required:
        assert done.returncode != 0, out
        assert lines == [
            "nox > Session gpu aborted: GPU tier required (GEMMA2_REGRESS_REQUIRE_GPU=1) but "
            f"`nvidia-smi -L` failed (exit 9): {BROKEN_DRIVER}."
        ], out
    else:
        assert done.returncode == 0, out
        assert lines == [
            f"nox > Session gpu skipped: `nvidia-smi -L` failed (exit 9): {BROKEN_DRIVER} "
            "(GEMMA2_REGRESS_REQUIRE_GPU=1 makes this a failure)."
        ], out
