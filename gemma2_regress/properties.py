"""Property functions shared by the CPU and GPU tiers: each runs one case and asserts a verdict.

Tests call these with a target and a device; they never copy the comparison logic. A failure
message names the case, the measurements and the versions, so a CI log is a bug report.
"""

from __future__ import annotations

import hypothesis
import torch

from . import oracle, report, tolerance
from .cases import Case, Inputs, make_inputs
from .masks import valid_queries
from .targets import KernelTarget
from .versions import one_line


def failure_message(prop: str, target: str, case: Case, detail: str) -> str:
    return f"{prop} failed for {target}\n  case: {case.short()}\n  {detail}\n  versions: {one_line()}"


def reference(case: Case, inputs: Inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """(golden float64, baseline in the case's dtype) for one case."""
    kw = dict(scalar=case.scalar, softcap=case.softcap, window=case.window, key_valid=inputs.key_valid)
    golden = oracle.attention(inputs.q, inputs.k, inputs.v, dtype=torch.float64, **kw)
    baseline = oracle.attention(inputs.q, inputs.k, inputs.v, dtype=case.torch_dtype, **kw)
    return golden, baseline


def check_kernel_matches_oracle(target: KernelTarget, case: Case, device: str) -> tolerance.Comparison:
    """The target's output equals the oracle's within the tolerance rule, at every real query."""
    inputs = make_inputs(case, device)
    golden, baseline = reference(case, inputs)
    out = target.run(case, inputs)
    valid = valid_queries(inputs.key_valid, case.q_len)
    cmp = tolerance.compare(out, golden, baseline, dtype=case.torch_dtype, valid=valid)
    report.record("kernel_matches_oracle", target.name, cmp.kind, cmp.ratio, case.short(), device=device)
    _climb(cmp, target.name)
    assert cmp.ok, failure_message("kernel_matches_oracle", target.name, case, cmp.describe())
    return cmp


def _climb(cmp: tolerance.Comparison, label: str) -> None:
    """Steer Hypothesis toward the largest error ratio (only inside @given)."""
    try:
        hypothesis.target(min(cmp.ratio, 1e6), label=label)
    except hypothesis.errors.InvalidArgument:
        pass
