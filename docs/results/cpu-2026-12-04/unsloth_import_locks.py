"""How long one process waits on Unsloth's compile-cache FileLocks while importing Unsloth and rewriting TRL's
trainers as it does on a GPU (docs/gpu.md, "2026-12-04, no GPU lent"). Run with the cpu session's Python:

    export UNSLOTH_ALLOW_CPU=1 HF_HUB_OFFLINE=1 UNSLOTH_DISABLE_STATISTICS=1
    for i in 0 1; do UNSLOTH_COMPILE_LOCATION=/tmp/locks/shared TAG=s$i .nox/cpu/bin/python THIS & done; wait

(``/tmp/locks/shared`` filled or empty, or a folder per process.)
"""

import os
import time

t0 = time.perf_counter()
import filelock  # noqa: E402

waited = [0.0, 0]
_acquire = filelock.BaseFileLock.acquire


def acquire(self, *args, **kwargs):
    start = time.perf_counter()
    try:
        return _acquire(self, *args, **kwargs)
    finally:
        waited[0] += time.perf_counter() - start
        waited[1] += 1


filelock.BaseFileLock.acquire = acquire
import unsloth  # noqa: E402
import unsloth.models.gemma2  # noqa: E402, F401

t1 = time.perf_counter()
os.environ.pop("UNSLOTH_ALLOW_CPU")  # PatchFastRL skips TRL's trainers under it; a GPU import does not
from unsloth.models.rl import PatchFastRL  # noqa: E402

PatchFastRL()
t2 = time.perf_counter()
print(
    f"{os.environ.get('TAG')} import {t1 - t0:.2f}s PatchFastRL {t2 - t1:.2f}s "
    f"lock-wait {waited[0]:.2f}s in {waited[1]} acquires loc={os.environ.get('UNSLOTH_COMPILE_LOCATION')}"
)
