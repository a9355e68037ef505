"""Times ``kernel.properties.reference`` (the kernel tests' golden, baseline and floor) in each pytest process
and writes ``[seconds, calls]`` to ``/tmp/refprobe/<worker>.json`` at the session's end.

    mkdir -p /tmp/refprobe && PYTHONPATH=$PWD/docs/results/cpu-2026-12-05d \\
        python3 -m nox -R -s cpu -- tests/kernel -p refprobe
"""

import json
import os
import time

from gemma2_regress.kernel import properties

_orig = properties.reference
_total = [0.0, 0]


def _timed(case, inputs):
    t = time.perf_counter()
    out = _orig(case, inputs)
    _total[0] += time.perf_counter() - t
    _total[1] += 1
    return out


properties.reference = _timed


def pytest_sessionfinish(session):
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with open(f"/tmp/refprobe/{worker}.json", "w") as f:
        json.dump(_total, f)
