"""A throwaway pytest plugin: where a test process's seconds go before its first test, and after its last.

Load it with ``-p startup_probe`` (the file copied beside the tree's root, where the GPU tier's
``PYTHONPATH`` reaches it). Each process writes ``$STARTUP_PROBE_DIR/startup-<xdist worker or main>.json`` (default /tmp) at its end:
seconds since the process started (``/proc/self/stat``) at each hook below. With
``STARTUP_PROBE_PROFILE=1`` it also runs cProfile from its import to the first test's set-up and writes
the 45 costliest functions by cumulative and by own time to ``/tmp/startup-<name>.prof.txt``.

It also records each Inductor kernel that benchmarks its configs at its first call (``CachingAutotuner``'s
``benchmark_all_configs`` and ``coordinate_descent_tuning``): the kernel, its file, the autotune cache's
state for it (``autotune_cache_info``), how many configs and the seconds, in ``/tmp/autotune-<name>.json``;
and each autotune-cache lookup at a kernel's load (``check_autotune_cache``) that did not hit: the best-config
file it looked for, whether it was there, and the configs hash stored in it against the kernel's own.
"""

from __future__ import annotations

import atexit
import cProfile
import io
import json
import os
import pstats
import time

import pytest


def _since_start() -> float:
    """Seconds since this process started, from the kernel's clock ticks (field 22 of /proc/self/stat)."""
    with open("/proc/self/stat") as f:
        start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


_NAME = os.environ.get("PYTEST_XDIST_WORKER", "main")
_DIR = os.environ.get("STARTUP_PROBE_DIR", "/tmp")  # where the JSON files go
_T0 = time.perf_counter() - _since_start()  # perf_counter at the process's start
_marks: dict[str, float] = {}
_prof = cProfile.Profile() if os.environ.get("STARTUP_PROBE_PROFILE") == "1" and _NAME != "main" else None


def _mark(what: str) -> None:
    _marks.setdefault(what, round(time.perf_counter() - _T0, 3))


_mark("probe imported")
if _prof is not None:
    _prof.enable()


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    _mark("configure begins")


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    _mark("session start (every configure done)")


@pytest.hookimpl(tryfirst=True)
def pytest_collection(session: pytest.Session) -> None:
    _mark("collection begins")


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    _mark("collection done (gc frozen)")


_tuned: list[dict] = []


def _wrap_autotuner() -> None:
    """Record every first-call benchmark of an Inductor kernel in this process (module docstring)."""
    from torch._inductor.runtime import triton_heuristics as th

    cls = th.CachingAutotuner
    if getattr(cls, "_probe_wrapped", False):
        return
    cls._probe_wrapped = True
    check = th.check_autotune_cache

    def checked(configs, filename, inductor_meta):
        out = check(configs, filename, inductor_meta)
        state = out[2].get("autotune_cache_state")
        if state not in ("hit", "only 1 config"):
            row = {"what": "lookup", "state": str(state), "file": filename or "", "configs": len(configs)}
            try:
                cache = out[1]  # the AutotuneCache made for this kernel, or None
                local = getattr(cache, "local_cache", None)  # (its local cache, the best-config file)
                path = str(local[1]) if local else ""
                row["best_config"] = path
                row["there"] = bool(path) and os.path.exists(path)
                row["hash_now"] = str(getattr(cache, "configs_hash", ""))[:12]
                row["coordesc"] = bool(inductor_meta.get("coordinate_descent_tuning"))
                row["local_cache_on"] = inductor_meta.get("autotune_local_cache", "unset")
                if row["there"]:
                    with open(path) as f:
                        stored = json.load(f)
                    row["hash_stored"] = str(stored.get("configs_hash", ""))[:12]
                    row["stored"] = {k: v for k, v in stored.items() if k != "configs_hash"}
            except Exception as e:  # a probe: say what broke, do not stop the run
                row["probe_error"] = repr(e)
            row["test"] = os.environ.get("PYTEST_CURRENT_TEST", "")
            _tuned.append(row)
        return out

    th.check_autotune_cache = checked
    for meth in ("benchmark_all_configs", "coordinate_descent_tuning"):
        orig = getattr(cls, meth)

        def wrapped(self, *a, _orig=orig, _meth=meth, **k):
            t = time.perf_counter()
            try:
                return _orig(self, *a, **k)
            finally:
                filename = getattr(self, "filename", None) or ""
                _tuned.append(
                    {
                        "what": _meth,
                        "kernel": getattr(getattr(self, "fn", None), "__name__", "?"),
                        "file": filename,
                        "info": {
                            k: str(v) for k, v in (getattr(self, "autotune_cache_info", None) or {}).items()
                        },
                        "configs": len(getattr(self, "configs", None) or []),
                        "launchers": len(getattr(self, "launchers", None) or []),
                        "s": round(time.perf_counter() - t, 3),
                        "test": os.environ.get("PYTEST_CURRENT_TEST", ""),
                    }
                )

        setattr(cls, meth, wrapped)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    _mark("first test's set-up")
    try:
        _wrap_autotuner()
    except ImportError:
        pass
    if _prof is not None and "prof" not in _marks:
        _marks["prof"] = 1.0
        _prof.disable()
        out = io.StringIO()
        stats = pstats.Stats(_prof, stream=out)
        stats.sort_stats("cumulative").print_stats(45)
        stats.sort_stats("tottime").print_stats(45)
        with open(f"{_DIR}/startup-{_NAME}.prof.txt", "w") as f:
            f.write(out.getvalue())


@pytest.hookimpl(trylast=True)
def pytest_runtest_logfinish(nodeid: str, location: tuple) -> None:
    _marks["last test's end"] = round(time.perf_counter() - _T0, 3)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    _mark("session finish begins")


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    _mark("unconfigure done")
    _write()  # again at exit where the process still gets there (plugins.worker_exit ends workers first)


def _write() -> None:
    with open(f"{_DIR}/startup-{_NAME}.json", "w") as f:
        json.dump(_marks, f, indent=1)
    if _tuned:
        with open(f"{_DIR}/autotune-{_NAME}.json", "w") as f:
            json.dump(_tuned, f, indent=1)


@atexit.register
def _at_exit() -> None:
    _mark("exit")
    _write()
