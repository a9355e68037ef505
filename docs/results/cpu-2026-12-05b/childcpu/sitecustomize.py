"""Logs each Python process's CPU time and who imported torch in it, for finding child processes that import
torch only to read something torch-free.

Put this folder first on PYTHONPATH, as an absolute path (children start in other folders), and set
CHILDLOG_DIR: every Python started under it that keeps PYTHONPATH writes ``<pid>.json`` at exit
(``os._exit`` included, as xdist workers under ``plugins.worker_exit`` end) with its argv, its own CPU
seconds (user + system, children not included), whether it imported torch or Unsloth, the test running in
its parent when it started (PYTEST_CURRENT_TEST, inherited), and the last frames of the stack that first
imported torch. Read the files with ``child_cpu.py``.

    mkdir -p /tmp/childcpu && PYTHONPATH=$PWD/docs/results/cpu-2026-12-05b/childcpu CHILDLOG_DIR=/tmp/childcpu \\
        python3 -m nox -R -s cpu
    python3 docs/results/cpu-2026-12-05b/childcpu/child_cpu.py /tmp/childcpu
"""

import atexit
import importlib.abc
import json
import os
import resource
import sys
import traceback

_DIR = os.environ.get("CHILDLOG_DIR")
_BORN = os.environ.get("PYTEST_CURRENT_TEST", "")
_WHO: list[str] = []
_DONE: list[bool] = []


def _write() -> None:
    if _DONE:
        return
    _DONE.append(True)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    record = {
        "pid": os.getpid(),
        "argv": sys.argv[:6],
        "cpu": usage.ru_utime + usage.ru_stime,
        "torch": "torch" in sys.modules,
        "unsloth": "unsloth" in sys.modules,
        "born": _BORN,
        "who": _WHO,
    }
    try:
        with open(os.path.join(_DIR, f"{os.getpid()}.json"), "w") as out:
            json.dump(record, out)
    except OSError:
        pass


class _TorchSpy(importlib.abc.MetaPathFinder):
    """Notes the stack of the first ``import torch``; finds nothing itself."""

    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not _WHO:
            frames = traceback.extract_stack()[:-1]
            _WHO.extend(
                f"{os.path.basename(f.filename)}:{f.lineno}:{f.name}"
                for f in frames
                if "importlib" not in f.filename and "<frozen" not in f.filename
            )
            del _WHO[:-4]
        return None


if _DIR:
    atexit.register(_write)
    _exit = os._exit

    def _exit_logged(code: int) -> None:
        _write()
        _exit(code)

    os._exit = _exit_logged
    sys.meta_path.insert(0, _TorchSpy())
