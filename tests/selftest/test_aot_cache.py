"""gemma2_regress.plugins.aot_cache: a graph that builds a constant with ``torch.tensor``, as Unsloth's
softcapping kernel scales its queries, is kept by AOTAutograd's cache once marked, and bypassed without."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

# In a child process: compile the kernel's scaling twice from a fresh Dynamo (a warm run's second sight of
# a graph), unmarked; then twice again with the function marked. The child shares the tier's Inductor cache
# where one is set, so its C++ kernel is built once over all runs; a bypass does not depend on that cache.
CHILD = """
import json, sys
import torch
from torch._dynamo.utils import counters
from gemma2_regress.plugins.aot_cache import mark_cacheable


def scale(q, s):
    return (q * torch.tensor(s**-0.5, dtype=q.dtype)).sum(-1)


def twice():
    counters.clear()
    for _ in range(2):
        torch._dynamo.reset()
        torch.compile(scale, fullgraph=True, dynamic=True)(torch.randn(3, 4), 256)
    return dict(counters["aot_autograd"])


unmarked = twice()
marked = mark_cacheable()
print(json.dumps({"unmarked": unmarked, "marked": marked, "after": twice()}))
"""


def test_marked_tensor_constant_is_a_hit_the_second_time(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    cache = os.environ.get("TORCHINDUCTOR_CACHE_DIR") or str(tmp_path / "cache")
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, "PYTHONPATH": str(root)}
    run = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["marked"], "this torch has no unsafe_marked_cacheable_functions setting"
    # Marked: cached, never bypassed; the second sight is a hit (the first too if an earlier run saved it).
    after = got["after"]
    hits, misses = after.get("autograd_cache_hit", 0), after.get("autograd_cache_miss", 0)
    assert "autograd_cache_bypass" not in after and hits >= 1 and hits + misses == 2, got
    # If torch ever caches these graphs itself, the plugin has no work left: remove it with this check.
    unmarked = got["unmarked"]
    assert unmarked.get("autograd_cache_bypass") == 2 and not unmarked.get("autograd_cache_hit"), got
