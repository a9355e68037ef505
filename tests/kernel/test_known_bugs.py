"""Pinned cases of upstream bugs the suite found, one test each (see fixtures/known_issues.py).

On an affected release the test is a strict xfail; the release that fixes the bug turns it XPASS
(red) until the record's range is closed. The same input on the kernel without the bug is pinned
beside it, so the test is known to pass where the code is right.
"""

from __future__ import annotations

import pytest

from gemma2_regress import unsloth_adapter
from gemma2_regress.kernel import targets
from gemma2_regress.kernel.cases import Case
from gemma2_regress.kernel.properties import check_kernel_matches_oracle

pytestmark = pytest.mark.unsloth

FP16_LEFT_PADDED = Case(
    bsz=2,
    n_heads=4,
    n_kv_heads=2,
    head_dim=16,
    q_len=2,
    kv_len=2,
    window=1,
    pad_side="left",
    pads=(1, 0),
    dtype="float16",
    softcap=50.0,
    scalar=16.0,
    logit_std=50.0,
    seed=0,
)


# The code Unsloth runs: each kernel as the release runs it here, and the training kernel's eager fallback
# (what it runs where torch.compile fails), so the verdict does not depend on this machine's compiler.
PATHS = (*targets.KERNELS, "slow_attention_softcapping-eager-fallback")


@pytest.mark.parametrize("path", PATHS)
def test_fp16_row_that_sees_no_key_stays_finite(path: str, device: str) -> None:
    """A left-padded query row sees no key; its output must still be finite (it feeds the next layer)."""
    u = unsloth_adapter.load()
    kernel, _, fallback = path.partition("-")
    target = targets.get(f"{kernel}[unsloth-eval]")
    if fallback:
        if not u.has_eager_fallback():
            pytest.skip(f"unsloth {u.version}: slow_attention_softcapping has no eager fallback")
        with u.eager_fallback(device):
            check_kernel_matches_oracle(target, FP16_LEFT_PADDED, device)
        return
    if kernel == "slow_attention_softcapping" and not u.softcapping_compiles(device):
        pytest.skip(
            f"slow_attention_softcapping does not compile on this {device} (Unsloth fell back to eager; "
            "its warning names the compiler error): the eager-fallback case pins what runs here"
        )
    check_kernel_matches_oracle(target, FP16_LEFT_PADDED, device)
