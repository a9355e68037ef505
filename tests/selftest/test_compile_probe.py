"""``Unsloth.softcapping_compiles`` asks whether Unsloth's compiled softcapping kernel compiles here without
touching that kernel's Dynamo state: a test that asks first compiles the same graphs as one that does not.

Dynamo keeps, per function, what its earlier compiles saw: a probe call through Unsloth's own function
before a test's first kernel call changed that call's FX-graph key (seen on the H200, a warm run's one
miss, and here on CPU). The probe now compiles a copy of the function under another name."""

from __future__ import annotations

import ast
import dataclasses
import inspect

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


def test_the_probe_compiles_as_unsloths_decorator_does() -> None:
    """The probe compiles its copy with the arguments of the installed release's own decorator on
    ``_compiled_slow_attention_softcapping``, read from its source: ``torch.compile`` with the module's
    ``torch_compile_options`` and ``unsloth_adapter.KERNEL_COMPILE_ARGS`` besides."""
    u = unsloth_adapter.load()
    if not u.has_eager_fallback():
        pytest.skip(f"unsloth {u.version} has no eager fallback: softcapping_compiles probes nothing")
    tree = ast.parse(inspect.getsource(u.kernels_module))
    name = "_compiled_slow_attention_softcapping"
    defs = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == name]
    assert len(defs) == 1, f"unsloth {u.version} defines {name} {len(defs)} times: update the probe"
    (fn,) = defs
    decorators = [ast.unparse(d) for d in fn.decorator_list]
    calls = [
        d for d in fn.decorator_list if isinstance(d, ast.Call) and ast.unparse(d.func) == "torch.compile"
    ]
    assert len(calls) == 1 and not calls[0].args, f"{name}'s decorators are {decorators}: update the probe"
    given = {k.arg: k.value for k in calls[0].keywords}
    options = given.pop("options", None)
    assert options is not None and ast.unparse(options) == "torch_compile_options", decorators
    assert {k: ast.literal_eval(v) for k, v in given.items()} == unsloth_adapter.KERNEL_COMPILE_ARGS, (
        f"unsloth {u.version} compiles {name} with {decorators}: set KERNEL_COMPILE_ARGS to match"
    )
