"""A throwaway pytest plugin that times every explicit ``gc.collect()`` call in a test process (docs/perf.md).

It replaces ``gc.collect`` with a wrapper, so it sees the calls made through the module attribute (the suite's
``perf.timing``, pytest's, Unsloth's), not the collector's own automatic runs (``gctime_probe.py`` of
``docs/results/cpu-2026-12-04`` times those). Each process that loads it appends one line per call to
``/tmp/gcprobe/out-<pid>.txt``: seconds, the three innermost callers, the running test.

    mkdir -p /tmp/gcprobe && PYTHONPATH=docs/results/cpu-2026-12-05c python3 -m nox -R -s cpu -- -p gc_calls_probe
    cat /tmp/gcprobe/out-* | awk '{s[$2]+=$1; c[$2]++} END {for (k in s) printf "%8.3f %5d %s\\n", s[k], c[k], k}' | sort -rn
"""

import gc
import os
import time
import traceback

_collect = gc.collect
_out = None


def _timed_collect(*args, **kwargs):
    global _out
    t0 = time.perf_counter()
    found = _collect(*args, **kwargs)
    took = time.perf_counter() - t0
    callers = ";".join(
        f"{os.path.basename(f.filename)}:{f.lineno}" for f in traceback.extract_stack(limit=4)[:-1]
    )
    if _out is None:
        _out = open(f"/tmp/gcprobe/out-{os.getpid()}.txt", "a", buffering=1)
    test = os.environ.get("PYTEST_CURRENT_TEST", "")[:80].replace(" ", "_")
    _out.write(f"{took:.4f} {callers} {test}\n")
    return found


gc.collect = _timed_collect
