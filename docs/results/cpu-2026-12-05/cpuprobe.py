"""A pytest plugin that splits each test's time into its own process's CPU, its child processes' CPU and
the rest (waiting), for finding how much of a tier's time is spent in the Pythons its self-tests start.

Each test appends one JSON line to CPUPROBE_OUT (default /tmp/cpuprobe.jsonl): node id, wall seconds of the
whole protocol (set-up, call, teardown), and the CPU seconds of this process (all its threads) and of the
children it waited for (``RUSAGE_CHILDREN``: their children too, once waited for). Run the cpu tier with it
and sum the lines:

    PYTHONPATH=docs/results/cpu-2026-12-05 python3 -m nox -R -s cpu -- -p cpuprobe
"""

import json
import os
import resource
import time

import pytest

OUT = os.environ.get("CPUPROBE_OUT", "/tmp/cpuprobe.jsonl")


def _cpu() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    w0, (s0, c0) = time.perf_counter(), _cpu()
    yield
    w1, (s1, c1) = time.perf_counter(), _cpu()
    with open(OUT, "a") as f:
        f.write(
            json.dumps({"test": item.nodeid, "wall": w1 - w0, "self": s1 - s0, "children": c1 - c0}) + "\n"
        )
