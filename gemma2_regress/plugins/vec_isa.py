"""Inductor's CPU vector-ISA probe, run once per compile cache folder and its outcome recorded there.

A pytest plugin (registered from conftest with ``pytest_plugins``). Before Inductor builds C++ it asks which
SIMD instruction sets (``avx512``, ``avx2``, ...) it may use (``torch._inductor.cpu_vec_isa``,
``valid_vec_isa_list``): for each ISA that the CPU's flags allow it compiles a small library with that ISA's
flags and loads it in a child Python, and the AVX-512 ISAs add checks of their own (bf16, VNNI, AMX) the
same way. Every process asks again, and under torch 2.11 each child imports torch, under one lock that all
processes share: an xdist worker's first C++ kernel (a training step's backward graph, on a GPU runner)
waited 25 to 56 s for it (docs/gpu.md has the figures).

At ``pytest_configure`` this plugin looks for a record of that probe in the compile cache folder, keyed by
what decides its outcome (torch's build, Python, the C++ compiler and its version, the CPU's flags). With
none, it runs Inductor's own probe once, under a file lock, noting the outcome of every build check
(``checks``: each check named by its ISA class, compiler flags and source), and writes the record
(atomically). With one, it replays it: Inductor's own probe runs with its build check answering from the
record, which fills Inductor's per-process caches with the same ISAs the real checks gave, without a
compiler or a child Python (a check missing from the record is built for real). Inductor's settings are not
changed, so its cache keys are those of any process on this machine. A ``TORCHINDUCTOR_VEC_ISA_OK`` set by
the user is left alone, and so is a torch without the functions used here.

The run's own child Pythons that compile (``plugins.compile_canary``) replay the same record
(``child_env``, ``replay_file``).

A packed compile cache carries the records (``builds.portable_cache``): a fresh runner of the same image
then skips the probe too.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from gemma2_regress import compile_check, records
from gemma2_regress.atomic import write_json_atomic

USER_ENV = "TORCHINDUCTOR_VEC_ISA_OK"
RECORD_ENV = compile_check.VEC_ISA_RECORD_ENV  # a child Python replays this record (``replay_file``)
FOLDER = records.VEC_ISA

Probe = Callable[[], tuple[list[str], dict[str, bool]]]


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str] | None:
    """The CPU's feature flags as the kernel lists them (x86 ``flags``, Arm ``Features``), or None where they
    cannot be read. Also what ``builds.reruns`` asks before a CPU setting."""
    try:
        for line in cpuinfo.read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() in ("flags", "Features"):
                return set(value.split())
    except OSError:
        pass
    return None


def _compiler() -> str:
    """Inductor's C++ compiler and the first line of its ``--version``."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        cxx = get_cpp_compiler()
    except Exception:  # an older or newer torch: the environment's choice, as Inductor would make it
        cxx = os.environ.get("CXX", "c++")
    try:
        run = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30, check=False)
        version = (run.stdout.splitlines() or [""])[0]
    except (OSError, subprocess.TimeoutExpired):
        version = "not found"
    return f"{cxx}: {version}"


def probe_key() -> dict[str, str]:
    """What decides the probe's outcome on this machine: a record with another key is never used. Worked out
    once per process (it runs the compiler): this plugin and ``plugins.compile_canary`` both ask."""
    return dict(_probe_key())


@functools.cache
def _probe_key() -> dict[str, str]:
    import torch

    flags = " ".join(sorted(cpu_flags() or ())) or platform.processor()
    return {
        "torch": f"{torch.__version__} {Path(torch.__file__).parent}",
        "python": sys.executable,
        "machine": platform.machine(),
        "cpu_flags": hashlib.sha256(flags.encode()).hexdigest()[:16],
        "compiler": _compiler(),
    }


def check_id(isa: object, code: str) -> str:
    """The name of one of Inductor's build checks: the ISA's class, its compiler flags at the time of the check
    (the bf16 and AMX-fp16 checks add a flag for their duration) and the source it builds."""
    text = f"{type(isa).__name__}\n{getattr(isa, '_arch_flags', '')}\n{code}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@contextlib.contextmanager
def _check_build(replace: Callable[[Callable[[object, str], bool], object, str], bool]) -> Iterator[None]:
    """Inductor's build check (``VecISA.check_build``, which every ISA class inherits) routed through
    ``replace(real, isa, code)`` for the duration."""
    from torch._inductor.cpu_vec_isa import VecISA

    real = VecISA.check_build
    VecISA.check_build = lambda isa, code: replace(real, isa, code)
    try:
        yield
    finally:
        VecISA.check_build = real


def inductor_probe() -> tuple[list[str], dict[str, bool]]:
    """``(passed, checks)``: Inductor's probe run for real in this process (its result stays in Inductor's
    caches here), and the outcome of every build check it made."""
    from torch._inductor.cpu_vec_isa import valid_vec_isa_list

    checks: dict[str, bool] = {}

    def noted(real: Callable[[object, str], bool], isa: object, code: str) -> bool:
        checks[check_id(isa, code)] = ok = bool(real(isa, code))
        return ok

    with _check_build(noted):
        passed = [str(isa) for isa in valid_vec_isa_list()]
    return passed, checks


def replay(checks: dict[str, bool]) -> list[str]:
    """Inductor's probe run in this process with its build checks answered from ``checks`` (one not there
    is built for real); the ISAs it then allows, kept in Inductor's caches for this process."""
    from torch._inductor.cpu_vec_isa import valid_vec_isa_list

    def answered(real: Callable[[object, str], bool], isa: object, code: str) -> bool:
        found = checks.get(check_id(isa, code))
        return bool(real(isa, code)) if found is None else found

    with _check_build(answered):
        return [str(isa) for isa in valid_vec_isa_list()]


def replay_file(path: str) -> list[str]:
    """``replay`` from the record in ``path`` (a child Python handed it by ``child_env``: its parent read it
    under this machine's key); nothing is replayed where the file is unreadable."""
    record = records.load(Path(path))
    checks = record.get("checks") if record is not None else None
    return replay(checks) if isinstance(checks, dict) else []


def recorded(folder: Path, key: dict[str, str], probe: Probe = inductor_probe) -> dict:
    """The record for ``key`` in ``folder``, probing (``probe``) and writing it first where there is none (or
    only one from before build checks were noted). Processes that start together wait on one lock, and all
    but the first then read what it wrote."""
    from filelock import FileLock  # torch's own dependency

    path = records.path(folder, FOLDER, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", timeout=600):
        record = records.read(path, key)
        if record is not None and isinstance(record.get("checks"), dict):
            return {**record, "source": "recorded", "path": str(path)}
        start = time.perf_counter()
        passed, checks = probe()
        record = {"key": key, "passed": passed, "checks": checks}
        write_json_atomic(path, record)
        return {**record, "source": f"probed in {time.perf_counter() - start:.1f} s", "path": str(path)}


def apply(environ: Mapping[str, str] | None = None, probe: Probe = inductor_probe) -> tuple[str, str | None]:
    """Probe or replay (module docstring): ``(one line that says what was done, the record's path where this
    process's probe came from it or wrote it, else None)``."""
    environ = os.environ if environ is None else environ
    if environ.get(USER_ENV) is not None:
        return f"vec ISA: {USER_ENV}={environ[USER_ENV]} (set outside the suite)", None
    try:
        from torch._inductor.cpu_vec_isa import VecISA, valid_vec_isa_list

        folder = records.cache_folder()
    except ImportError as exc:
        return f"vec ISA: Inductor probes per process ({exc})", None
    if not hasattr(VecISA, "check_build") or not hasattr(valid_vec_isa_list, "cache_info"):
        return "vec ISA: Inductor probes per process", None
    if valid_vec_isa_list.cache_info().currsize:  # asked before this plugin: its answer stays
        return "vec ISA: probed in this process before the suite's set-up", None
    record = recorded(folder, probe_key(), probe)
    passed = replay(record["checks"]) if record["source"] == "recorded" else record["passed"]
    line = f"vec ISA: {', '.join(passed) or 'none'} ({record['source']}, once per cache folder)"
    return line, record["path"]


def child_env(config: pytest.Config) -> dict[str, str]:
    """What a child Python that this run starts to compile (``compile_check``'s canary) needs in its
    environment to replay this process's probe: ``{RECORD_ENV: <the record>}``, else nothing (the child
    probes, or inherits the user's setting). Without it the canary's child probed on its own, and the first
    test waited for the canary (docs/gpu.md)."""
    path = config.stash.get(RECORD, None)
    return {RECORD_ENV: path} if path else {}


def pytest_configure(config: pytest.Config) -> None:
    config.stash[LINE], config.stash[RECORD] = apply()


def pytest_report_header(config: pytest.Config) -> str:
    return config.stash.get(LINE, "")


LINE = pytest.StashKey[str]()
RECORD = pytest.StashKey["str | None"]()
