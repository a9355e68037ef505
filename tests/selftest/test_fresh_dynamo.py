"""gemma2_regress.plugins.fresh_dynamo: a test, or an xdist group, compiles the graphs it would compile
alone, whatever ran before it in its process; inside a group the tests share their graphs."""

from __future__ import annotations

import pytest
import torch._dynamo.repro.after_dynamo  # noqa: F401  (torch.compile's lazy imports, before pytester's module snapshot)

TESTS = """
import pytest
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


@pytest.mark.xdist_group("g")
def test_group_starts_fresh():
    double(torch.ones(7))
    assert dynamic[-1] is False


@pytest.mark.xdist_group("g")
def test_group_shares_its_graphs():
    double(torch.ones(9))  # the group's first test met 7 elements: a dynamic recompile
    assert dynamic[-1] is True
"""


@pytest.mark.parametrize("plugin", [True, False], ids=["with-plugin", "without"])
def test_a_test_compiles_as_if_it_ran_first(pytester: pytest.Pytester, plugin: bool) -> None:
    pytester.makepyfile(test_inner_compiles=TESTS)
    args = ["-p", "no:cacheprovider", *(["-p", "gemma2_regress.plugins.fresh_dynamo"] if plugin else [])]
    result = pytester.runpytest_inprocess(*args)
    # Without the plugin the second test and the group's first see dynamic recompiles: the checks can fail.
    result.assert_outcomes(passed=4) if plugin else result.assert_outcomes(passed=2, failed=2)
