"""gemma2_regress.plugins.fresh_dynamo: a test compiles the graphs it would compile alone, whatever ran
before it in its process (the second inner test would otherwise get a graph with dynamic shapes)."""

from __future__ import annotations

import pytest
import torch._dynamo.repro.after_dynamo  # noqa: F401  (torch.compile's lazy imports, before pytester's module snapshot)

TESTS = """
import torch

dynamic = []


def backend(gm, example_inputs):
    tensors = [a for a in example_inputs if isinstance(a, torch.Tensor)]
    symbolic = [a for a in example_inputs if isinstance(a, torch.SymInt)]
    dynamic.append(bool(symbolic) or any(isinstance(d, torch.SymInt) for t in tensors for d in t.shape))
    return gm.forward


double = torch.compile(lambda x: x * 2, backend=backend)


def test_first():
    double(torch.ones(3))
    assert dynamic == [False]


def test_second_compiles_as_if_first():
    double(torch.ones(5))  # after a call with 3 elements, Dynamo would recompile with the size dynamic
    assert dynamic[-1] is False
"""


@pytest.mark.parametrize("plugin", [True, False], ids=["with-plugin", "without"])
def test_a_test_compiles_as_if_it_ran_first(pytester: pytest.Pytester, plugin: bool) -> None:
    pytester.makepyfile(test_inner_compiles=TESTS)
    args = ["-p", "no:cacheprovider", *(["-p", "gemma2_regress.plugins.fresh_dynamo"] if plugin else [])]
    result = pytester.runpytest_inprocess(*args)
    # Without the plugin the second test sees the dynamic recompile: the check can fail.
    result.assert_outcomes(passed=2) if plugin else result.assert_outcomes(passed=1, failed=1)
