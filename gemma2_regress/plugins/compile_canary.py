"""Before the first test, is torch.compile right here? If not, the run stops red with one line (a plugin).

Registered from conftest with ``pytest_plugins``. The canary (``compile_check``) starts in a child at
configure, so it runs while tests are collected and xdist's workers start; the controlling process
waits for it just before the first test. Where the compiler computes wrong results, the run ends with
exit status 3 and ``compile_check``'s reason: a red that names torch, not one that blames Unsloth's
compiled kernels for it. ``--no-compile-canary`` or ``GEMMA2_REGRESS_NO_COMPILE_CANARY=1`` skips the
check (``nox -s portability`` checked each setting already); ``--collect-only`` runs and xdist workers
never start it.

The child replays the CPU vector-ISA probe recorded by ``plugins.vec_isa`` (``child_env``), so it does not
run Inductor's probe on its own, and the run's last lines say how long the first test waited for it.

A canary that passed leaves a record in the compile cache folder (``<cache>/gemma2-regress-canary/``),
keyed by everything its answer depends on: ``vec_isa.probe_key`` (torch's build and path, Python, the
CPU's flags, the C++ compiler and its version), Python's build, torch's git revision, Triton's version,
the NVIDIA driver and GPUs the kernel lists, and every setting in the environment the run started with
(before any conftest's configure: ``pytest_cmdline_main``) that reaches torch,
its compilers or its math libraries (``KEY_ENV``: ``ATEN_CPU_CAPABILITY``, ``TORCHINDUCTOR_*``,
``OMP_*``, ``MKL_*``, ...). A later run with the same key does not start the child: the same compiler
on the same inputs gives the same answer. Any change in the key runs it again, and a canary that
failed leaves nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

import pytest

from gemma2_regress import compile_check, records, suite
from gemma2_regress.atomic import write_json_atomic
from gemma2_regress.plugins import vec_isa

_CHILD = pytest.StashKey[subprocess.Popen]()
_WAITED = pytest.StashKey[float]()
_TO_RECORD = pytest.StashKey[tuple[Path, dict]]()  # where a pass of the running canary goes, and its key
_FOUND = pytest.StashKey[Path]()  # the record of an earlier pass, when the canary is not run
_ENV = pytest.StashKey[dict]()  # the environment as the run started (pytest_cmdline_main)
FLAG = "--no-compile-canary"
OFF_ENV = "GEMMA2_REGRESS_NO_COMPILE_CANARY"
FOLDER = records.CANARY
# Settings that reach torch, Inductor, Triton, the C++ compiler, the BLAS/OpenMP libraries or the GPU.
KEY_ENV = (
    "ATEN_",
    "TORCH",
    "PYTORCH_",
    "TRITON_",
    "OMP_",
    "KMP_",
    "MKL",
    "DNNL_",
    "ONEDNN_",
    "OPENBLAS_",
    "CUDA_",
    "NVIDIA_",
    "CC",
    "CXX",
    "CFLAGS",
    "CXXFLAGS",
    "LD_PRELOAD",
    "LD_LIBRARY_PATH",
)
# A folder, not a setting: the record lives in it.
NOT_KEY_ENV = ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")


def _gpus() -> str:
    """The NVIDIA driver and the GPUs as the kernel lists them (no CUDA call); empty without a driver."""
    root = Path("/proc/driver/nvidia")
    try:
        parts = [(root / "version").read_text()]
        parts += [p.read_text() for p in sorted(root.glob("gpus/*/information"))]
    except OSError:
        return ""
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def canary_key(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """What the canary's answer depends on here (module docstring); a record with another key is not used."""
    import torch

    environ = os.environ if environ is None else environ
    settings = {k: v for k, v in sorted(environ.items()) if k.startswith(KEY_ENV) and k not in NOT_KEY_ENV}
    try:
        triton = metadata.version("triton")
    except metadata.PackageNotFoundError:
        triton = ""
    return {
        **vec_isa.probe_key(),
        "python_build": sys.version,
        "torch_git": str(getattr(torch.version, "git_version", "")),
        "triton": triton,
        "gpus": _gpus(),
        "settings": json.dumps(settings, sort_keys=True),
    }


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("gemma2-regress").addoption(
        FLAG, action="store_true", help="do not check torch.compile with a canary before the first test"
    )


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    # The environment as the run started, before any configure hook: a test folder's conftest named on the
    # command line configures before this plugin, and tests/model's imports Unsloth, which sets
    # TORCHINDUCTOR_*, TRITON_* and PYTORCH_ALLOC_CONF. The canary is keyed by, and its child runs in,
    # this environment, so a run of a chosen folder shares the record of a whole run.
    config.stash[_ENV] = dict(os.environ)


@pytest.hookimpl(trylast=True)  # after plugins.vec_isa has set what the child inherits
def pytest_configure(config: pytest.Config) -> None:
    off = config.getoption("no_compile_canary") or os.environ.get(OFF_ENV) == "1"
    if off or hasattr(config, "workerinput") or config.option.collectonly:
        return
    environ = config.stash.get(_ENV, None) or dict(os.environ)
    try:
        key = canary_key(environ)
        path = records.path(records.cache_folder(), FOLDER, key)
    except ImportError:  # no torch here: nothing is compiled, and the child says so
        config.stash[_CHILD] = compile_check.start(base=environ)
        return
    if records.read(path, key) is not None:  # passed here before
        config.stash[_FOUND] = path
        return
    config.stash[_CHILD] = compile_check.start(vec_isa.child_env(config), base=environ)
    config.stash[_TO_RECORD] = (path, key)


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> None:
    child = session.config.stash.get(_CHILD, None)
    if child is None:
        return
    start = time.perf_counter()
    why = compile_check.verdict(child)
    session.config.stash[_WAITED] = time.perf_counter() - start
    path, key = session.config.stash.get(_TO_RECORD, (None, None))
    if not why and path is not None:
        try:
            write_json_atomic(path, {"key": key, "passed": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        except OSError:
            pass  # a read-only cache: the next run asks again
    if why:
        pytest.exit(
            f"{why}: Unsloth's compiled kernels cannot be judged on this machine ({_fix(os.environ)})",
            returncode=3,
        )


def _fix(environ: Mapping[str, str]) -> str:
    """What to do about a canary that failed under ``environ``."""
    if environ.get(suite.ATEN_CAPABILITY_ENV):  # seen: a cache filled without it (suite.compile_cache_for)
        return (
            f"{suite.ATEN_CAPABILITY_ENV} is set and torch's compile cache does not key on it: give this setting "
            f"a {suite.COMPILE_CACHE_ENV} of its own (the nox sessions do), else fix torch; {FLAG} runs anyway"
        )
    return f"fix torch or unset the setting that breaks it; {FLAG} runs anyway"


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    waited = config.stash.get(_WAITED, None)
    if waited is not None:
        terminalreporter.write_line(f"compile canary: the first test waited {waited:.1f} s for it")
    elif _FOUND in config.stash:
        terminalreporter.write_line(
            f"compile canary: passed here before with the same key, not run again ({config.stash[_FOUND]})"
        )


def pytest_unconfigure(config: pytest.Config) -> None:
    child = config.stash.get(_CHILD, None)
    if child is not None and child.poll() is None:  # the run ended before it was asked (a collection error)
        child.kill()
        child.communicate()
