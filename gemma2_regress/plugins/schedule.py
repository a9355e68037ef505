"""The GPU tier's test order: the costliest first, so that xdist workers finish together.

A pytest plugin (registered from conftest with ``pytest_plugins``). With several workers, the run ends
when the worker holding the last long test ends; handing out the longest tests first (the classic
longest-processing-time rule) keeps that tail short. A test's cost is the seconds it took when it last
passed on this stack (recorded beside its peak memory by ``plugins.gpu_budget``, per GPU, the longest of
the GPUs' records; carried with a packed compile cache), else an estimate of its cold time: on a cold
machine the tier's time is compiling (Unsloth's kernels are ``torch.compile``d with max-autotune: 20 to
150 s per new graph on an H200), and ``COLD_SECONDS`` holds, per test function, the cold time of one of
its items on an H200 (docs/gpu.md; a test split per dtype has one item per dtype); a test missing from it
counts ``DEFAULT_SECONDS``. So a new or changed test, which may compile, goes before recorded warm ones. xdist
groups (``@pytest.mark.xdist_group``) move as one unit, at the summed cost of their members. The order
only matters to the scheduler: results do not depend on it (a group runs in collection order and, with
``fresh_dynamo``, compiles from a fresh Dynamo wherever it lands).

Every worker must collect the same order (xdist aborts the run otherwise, "Different tests collected"):
each reads the same records, of every GPU, at collection, before any test of the run has started (xdist
hands out tests once every worker has collected), so a record changes only under a second run sharing the
cache folder.

It applies where every selected test is ``gpu``-marked, in xdist workers only (they collect what
the controller hands out): in a single process the selection's own order stands (the kill matrix
relies on it to try model-level tests first).

A worker that crashes (a segfault in compiled code) is not restarted unless ``--max-worker-restart``
says so: under ``--dist loadgroup`` pytest-xdist otherwise hangs after the restart, waiting for a
group no worker holds, until an outer timeout. With no restart the run ends at once, the test that
crashed its worker reported as failed ("worker 'gw1' crashed while running ...").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from gemma2_regress.plugins.gpu_budget import recorded_seconds
from gemma2_regress.plugins.markers import group_of

DEFAULT_SECONDS = 10.0
COLD_SECONDS = {
    "test_attention_weight_gradients": 150.0,  # one backward compile per dtype
    "test_kv_cache_continuation": 70.0,
    "test_batch_row_equals_row_alone": 50.0,
    "test_padded_row_equals_unpadded": 50.0,
    "test_logits_and_loss": 80.0,
    "test_real_window": 15.0,  # 8 targets in one xdist group: about 120 s together
    "test_small_windows": 21.0,  # likewise about 170 s
    "test_greedy_generation": 30.0,
    "test_decode_step_without_position_ids": 30.0,
    "test_evaluate_past_window": 15.0,
    "test_logits_and_loss_pinned": 20.0,
    "test_attention_weight_gradients_pinned": 60.0,
}


def _function(item: pytest.Item) -> str:
    return getattr(item, "originalname", None) or item.name.split("[", 1)[0]


def heaviest_first(
    items: Sequence[pytest.Item], recorded: Mapping[str, float] | None = None
) -> list[pytest.Item]:
    """``items`` reordered by cost, descending (stable: ties keep collection order): ``recorded`` seconds by
    node id, else the estimated cold cost."""
    recorded = recorded or {}
    cost = {id(it): recorded.get(it.nodeid, COLD_SECONDS.get(_function(it), DEFAULT_SECONDS)) for it in items}
    group_cost: dict[str, float] = {}
    for it in items:
        g = group_of(it)
        if g is not None:
            group_cost[g] = group_cost.get(g, 0.0) + cost[id(it)]

    def key(it: pytest.Item) -> float:
        g = group_of(it)
        return -(group_cost[g] if g is not None else cost[id(it)])

    return sorted(items, key=key)


def pytest_configure(config: pytest.Config) -> None:
    # Before xdist's own pytest_configure builds its session from the option (plugins registered
    # later are called first); None means the user gave no --max-worker-restart.
    if getattr(config.option, "maxworkerrestart", "unset") is None:
        config.option.maxworkerrestart = "0"


@pytest.hookimpl(trylast=True)  # after `-m` / `-k` have deselected
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if hasattr(config, "workerinput") and items and all(it.get_closest_marker("gpu") for it in items):
        items[:] = heaviest_first(items, recorded_seconds(config, items))
