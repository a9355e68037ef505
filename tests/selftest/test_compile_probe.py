"""``Unsloth.softcapping_compiles`` asks whether Unsloth's compiled softcapping kernel compiles here without
touching that kernel's Dynamo state: a test that asks first compiles the same graphs as one that does not.

Dynamo keeps, per function, what its earlier compiles saw: a probe call through Unsloth's own function
before a test's first kernel call changed that call's FX-graph key (seen on the H200, a warm run's one
miss, and here on CPU). The probe now compiles a copy of the function under another name."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from gemma2_regress import unsloth_adapter

pytestmark = pytest.mark.unsloth


def test_the_probe_leaves_unsloths_kernel_uncompiled() -> None:
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    u = unsloth_adapter.load()
    if not u.has_eager_fallback():
        pytest.skip(f"unsloth {u.version} has no eager fallback: softcapping_compiles probes nothing")
    kernel = u.kernels_module._compiled_slow_attention_softcapping._torchdynamo_orig_callable
    torch._dynamo.reset()
    fresh = dataclasses.replace(u, _compiles={})  # this process may have probed already
    # False where Inductor's C++ does not compile (as under ATEN_CPU_CAPABILITY=default on some CPUs).
    compiles = fresh.softcapping_compiles("cpu")
    assert _debug_get_cache_entry_list(kernel.__code__) == []  # no compile of Unsloth's function itself
    assert fresh._compiles == {"cpu": compiles}  # settled once per device type
