"""AOTAutograd's cache keeps the graphs of Unsloth's softcapping kernel, so a warm run does not trace them again.

A pytest plugin (registered from conftest with ``pytest_plugins``). Before each test's set-up, once torch
has been imported in this process, it adds ``torch._refs.tensor`` to Inductor's
``unsafe_marked_cacheable_functions`` (keyed by the torch version, as that setting asks).

Why: Unsloth's compiled kernel scales the queries by ``torch.tensor(s**-0.5, dtype=Q.dtype)``, which
Dynamo puts in the graph as a call of ``torch._refs.tensor``. AOTAutograd's cache does not know that
function, so it bypassed every such graph: on a run whose FX-graph cache held all of them, each graph was
still traced through AOTAutograd again (about 5 of 13 s of a warm kernel test on CPU, docs/perf.md).
The function builds a tensor from its arguments and nothing else, and those arguments (the scale, the
dtype) are constants of the graph that the cache key hashes, so a hit returns what a fresh trace would.
Only the caching changes: the compiled code, and so the verdicts, are the same; a planted bug that changes
the kernel's source changes the graph and so the key.
"""

from __future__ import annotations

import sys

import pytest

CACHEABLE = "torch._refs.tensor"


def mark_cacheable() -> bool:
    """Mark ``CACHEABLE`` in Inductor's config when torch is imported; True when it is marked. A torch
    without the setting is left as it is (its AOTAutograd cache then bypasses those graphs as before)."""
    if "torch" not in sys.modules:
        return False
    import torch
    import torch._inductor.config as inductor_config

    marked = getattr(inductor_config, "unsafe_marked_cacheable_functions", None)
    if not isinstance(marked, dict):
        return False
    if marked.get(CACHEABLE) != torch.__version__:
        inductor_config.unsafe_marked_cacheable_functions = {**marked, CACHEABLE: torch.__version__}
    return True


@pytest.hookimpl(tryfirst=True)  # before any fixture of the test compiles something
def pytest_runtest_setup(item: pytest.Item) -> None:
    mark_cacheable()
