"""Two xdist workers, one of which spends 4 s before its tests: (a) in ``pytest_configure``, where the model-level
conftests imported Unsloth, or (b) in ``pytest_runtestloop``, after collection, where they import it since
20c4729 (docs/gpu.md, "2026-12-04, no GPU lent"). Prints each run's pytest line and each test's start, in
seconds after the first test's. Run with a Python that has pytest-xdist (the cpu session's):

    .nox/cpu/bin/python docs/results/cpu-2026-12-04/xdist_barrier_demo.py
"""

import subprocess
import sys
import tempfile
from pathlib import Path

SLOW = {
    "a": "def pytest_configure(config):\n",
    "b": "@pytest.hookimpl(tryfirst=True)\ndef pytest_runtestloop(session):\n",
}
CONFTEST = """import os, time
import pytest

{hook}    if os.environ.get("PYTEST_XDIST_WORKER") == "gw0":
        time.sleep(4)


def pytest_runtest_setup(item):
    with open("../log", "a") as f:
        f.write(os.environ.get("PYTEST_XDIST_WORKER") + " " + item.name + " " + repr(time.time()) + "\\n")
"""

with tempfile.TemporaryDirectory() as work:
    for name, hook in SLOW.items():
        run = Path(work, name)
        run.mkdir()
        (run / "conftest.py").write_text(CONFTEST.format(hook=hook))
        for i in range(1, 7):
            (run / f"test_m{i}.py").write_text(f"import time\n\n\ndef test_{i}():\n    time.sleep(0.5)\n")
        Path(work, "log").unlink(missing_ok=True)
        out = (
            subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2"],
                cwd=run,
                capture_output=True,
                text=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        starts = sorted(
            (float(t), w, n) for w, n, t in (ln.split() for ln in Path(work, "log").read_text().splitlines())
        )
        print(f"== {name}: {out}")
        for t, worker, test in starts:
            print(f"  {worker} {test} +{t - starts[0][0]:.2f} s")
