"""Pinned cases of upstream bugs the suite found, one test each (see fixtures/known_issues.py).

On an affected release the test is a strict xfail; the release that fixes the bug turns it XPASS
(red) until the record's range is closed. The same input on the kernel without the bug is pinned
beside it, so the test is known to pass where the code is right.
"""

from __future__ import annotations

import pytest

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


@pytest.mark.parametrize("kernel", targets.KERNELS)
def test_fp16_row_that_sees_no_key_stays_finite(kernel: str, device: str) -> None:
    """A left-padded query row sees no key; its output must still be finite (it feeds the next layer)."""
    check_kernel_matches_oracle(targets.get(f"{kernel}[unsloth-eval]"), FP16_LEFT_PADDED, device)
