"""Inductor's CPU vector-ISA probe, run once per compile cache folder and its outcome recorded there.

A pytest plugin (registered from conftest with ``pytest_plugins``). Before Inductor builds C++ it asks which
SIMD instruction sets (``avx512``, ``avx2``, ...) it may use: each candidate that the CPU's flags allow is
tried by compiling a small library with that ISA's flags and loading it in a child Python
(``torch._inductor.cpu_vec_isa.valid_vec_isa_list``). Every process asks again, and under torch 2.11 each
child imports torch, so every xdist worker waited on it, queueing on one lock (docs/gpu.md has the figures).

At ``pytest_configure`` this plugin looks for a record of that probe in the compile cache folder, keyed by
what decides its outcome (torch's build, Python, the C++ compiler and its version, the CPU's flags). With
none, it runs Inductor's own probe once, under a file lock, and writes the record (atomically). Where the
record says that every candidate passed, it sets ``torch._inductor.config.cpp.vec_isa_ok = True``:
Inductor's switch for "use every ISA the CPU's flags allow, without testing", which is then exactly the set
the probe found, so the generated code is the same. Where a candidate failed, nothing is set and Inductor
probes as before. A ``TORCHINDUCTOR_VEC_ISA_OK`` set by the user is left alone, and so is a torch
without the functions used here.

A packed compile cache carries the records (``builds.portable_cache``): a fresh runner of the same image
then skips the probe too.

The setting is part of Inductor's cache keys; every process of the suite on one machine sets it the same
way, so they keep sharing entries (a cache written before this plugin existed is not hit once).
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gemma2_regress import records
from gemma2_regress.atomic import write_json_atomic

USER_ENV = "TORCHINDUCTOR_VEC_ISA_OK"
FOLDER = records.VEC_ISA

Probe = Callable[[], tuple[list[str], list[str]]]


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


def inductor_probe() -> tuple[list[str], list[str]]:
    """``(passed, candidates)``: the ISAs Inductor's probe accepts here, and those it would accept untested
    (the CPU's flags allow them). The probe's result stays cached in this process, as Inductor keeps it."""
    import torch._inductor.config as inductor_config
    from torch._inductor.cpu_vec_isa import valid_vec_isa_list

    passed = [str(isa) for isa in valid_vec_isa_list()]
    with inductor_config.patch({"cpp.vec_isa_ok": True}):
        candidates = [str(isa) for isa in valid_vec_isa_list.__wrapped__()]  # uncached: untested
    return passed, candidates


def recorded(folder: Path, key: dict[str, str], probe: Probe = inductor_probe) -> dict:
    """The record for ``key`` in ``folder``, probing (``probe``) and writing it first where there is none.
    Processes that start together wait on one lock, and all but the first then read what it wrote."""
    from filelock import FileLock  # torch's own dependency

    path = records.path(folder, FOLDER, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", timeout=600):
        record = records.read(path, key)
        if record is not None:
            return {**record, "source": "recorded"}
        start = time.perf_counter()
        passed, candidates = probe()
        record = {"key": key, "passed": passed, "candidates": candidates}
        write_json_atomic(path, record)
        return {**record, "source": f"probed in {time.perf_counter() - start:.1f} s"}


def apply(environ: dict[str, str] | None = None, probe: Probe = inductor_probe) -> str:
    """Set ``cpp.vec_isa_ok`` from this compile cache's record (see the module docstring); one line that says
    what was done. Where it is set, ``child_env`` hands the setting down to the run's own child processes."""
    environ = os.environ if environ is None else environ
    if environ.get(USER_ENV) is not None:
        return f"vec ISA: {USER_ENV}={environ[USER_ENV]} (set outside the suite)"
    try:
        import torch._inductor.config as inductor_config
        from torch._inductor.cpu_vec_isa import valid_vec_isa_list

        folder = records.cache_folder()
    except ImportError as exc:
        return f"vec ISA: Inductor probes per process ({exc})"
    if not hasattr(valid_vec_isa_list, "__wrapped__") or inductor_config.cpp.vec_isa_ok is not None:
        return "vec ISA: Inductor probes per process"
    record = recorded(folder, probe_key(), probe)
    passed, candidates = record["passed"], record["candidates"]
    if passed != candidates:
        return f"vec ISA: {', '.join(passed) or 'none'} of {', '.join(candidates)} passed; Inductor probes per process"
    inductor_config.cpp.vec_isa_ok = True
    return f"vec ISA: {', '.join(passed) or 'none'} ({record['source']}, once per cache folder)"


def child_env() -> dict[str, str]:
    """What a child Python that this process starts to compile (``compile_check``'s canary) needs in its
    environment to skip the probe as this process does: ``{TORCHINDUCTOR_VEC_ISA_OK: "1"}`` where the switch
    is on here (``apply`` set it), else nothing (the child probes, or inherits the user's setting). Without
    it the canary's child probed on its own, on a GPU runner for as long as the probe takes there, and the
    first test waited for the canary."""
    config = sys.modules.get("torch._inductor.config")
    return {USER_ENV: "1"} if config is not None and config.cpp.vec_isa_ok is True else {}


def pytest_configure(config: pytest.Config) -> None:
    config.stash[LINE] = apply()


def pytest_report_header(config: pytest.Config) -> str:
    return config.stash.get(LINE, "")


LINE = pytest.StashKey[str]()
