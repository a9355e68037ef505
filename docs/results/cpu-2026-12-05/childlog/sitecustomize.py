"""Logs each Python process's lifetime, for finding where a test run's child processes spend their time.

Put this folder first on PYTHONPATH and set CHILDLOG_DIR: every Python started under it (the test run and
every child it starts, as long as the child keeps PYTHONPATH) writes ``<pid>.json`` at exit with its argv,
the seconds from this module's import to its exit, whether it imported torch or Unsloth, and the test
running in its parent (PYTEST_CURRENT_TEST, inherited). A process that ends with ``os._exit`` (xdist workers
under ``plugins.worker_exit``) or a signal writes nothing. Read the files with ``child_seconds.py``.

    mkdir -p /tmp/childlog && PYTHONPATH=docs/results/cpu-2026-12-05/childlog CHILDLOG_DIR=/tmp/childlog \\
        python3 -m nox -R -s cpu
    python3 docs/results/cpu-2026-12-05/childlog/child_seconds.py /tmp/childlog
"""

import atexit
import json
import os
import sys
import time

_T0 = time.time()
_DIR = os.environ.get("CHILDLOG_DIR")


def _write() -> None:
    record = {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "argv": sys.argv[:6],
        "s": time.time() - _T0,
        "unsloth": "unsloth" in sys.modules,
        "torch": "torch" in sys.modules,
        "test": os.environ.get("PYTEST_CURRENT_TEST", ""),
    }
    try:
        with open(os.path.join(_DIR, f"{os.getpid()}.json"), "w") as out:
            json.dump(record, out)
    except OSError:
        pass


if _DIR:
    atexit.register(_write)
