"""Per-row padding: the cases' representation (one side per batch, or pads on both ends of a row)."""

from __future__ import annotations

import pytest
import torch

from gemma2_regress.kernel.cases import Case, make_inputs
from gemma2_regress.model import tiny
from gemma2_regress.model.cases import ModelCase
from gemma2_regress.reference import masks


def test_both_ends_mask_holds_each_rows_real_tokens_between_its_pads() -> None:
    case = Case(bsz=3, q_len=8, kv_len=8, pad_side="both", pads=(1, 0, 8), right_pads=(3, 2, 0))
    assert case.row_pads == ((1, 3), (0, 2), (8, 0))
    assert case.padding_mask(8).tolist() == [
        [0, 1, 1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 1, 1, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0],
    ]
    assert torch.equal(make_inputs(case).key_valid, case.padding_mask(8))
    assert "pad=both[1+3, 0+2, 8+0]" in case.short()


def test_one_sided_cases_read_as_before() -> None:
    """Pinned cases and known-issue triggers written as pad_side + pads keep their meaning and ids."""
    case = Case(bsz=2, q_len=4, kv_len=4, pad_side="left", pads=(1, 0))
    assert case.row_pads == ((1, 0), (0, 0)) and " pad=left[1, 0] " in case.short()
    assert torch.equal(case.padding_mask(4), masks.padding_from_lengths(2, 4, [1, 0], "left"))
    right = ModelCase(bsz=2, seq_len=10, pad_side="right", pads=(0, 4))
    assert right.row_pads == ((0, 0), (0, 4)) and "L10 pad=right[0, 4] mask" in right.short()
    assert Case().row_pads == ((0, 0),) and Case().padding_mask(8) is None


def test_unpadded_drops_both_sides() -> None:
    case = Case(bsz=2, q_len=4, kv_len=4, pad_side="both", pads=(1, 0), right_pads=(0, 2)).unpadded()
    assert not case.padded and case.right_pads == () and make_inputs(case).key_valid is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(pad_side="left", pads=(1, 0), right_pads=(0, 1)), "use pad_side='both'"),
        (dict(pad_side="both", pads=(5, 0), right_pads=(4, 0)), "exceed the length 8"),
        (dict(pad_side="both", pads=(1, 0), right_pads=(1,)), "1 right pad counts for bsz 2"),
        (dict(pad_side="middle", pads=(1, 0)), "pad_side 'middle' not one of"),
    ],
)
def test_case_rejects_bad_padding(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Case(bsz=2, q_len=8, kv_len=8, **kwargs)


def test_model_case_padding_rules_cover_both_ends() -> None:
    with pytest.raises(ValueError, match="drops the mask"):  # a left pad, even on one row of "both"
        ModelCase(bsz=2, seq_len=10, pad_side="both", pads=(0, 1), right_pads=(3, 0), mode="train")
    with pytest.raises(ValueError, match="every row fully padded"):
        ModelCase(bsz=2, seq_len=10, pad_side="both", pads=(4, 10), right_pads=(6, 0))
    ok = ModelCase(bsz=2, seq_len=10, pad_side="both", pads=(0, 0), right_pads=(3, 1), mode="train")
    assert ok.row_pads == ((0, 3), (0, 1))


def test_model_case_tokens_follow_both_ends() -> None:
    cfg = tiny.tiny_config()
    case = ModelCase(bsz=2, seq_len=12, pad_side="both", pads=(2, 0), right_pads=(3, 0))
    ids, mask, labels = case.inputs(cfg)
    assert mask.tolist()[0] == [0, 0] + [1] * 7 + [0, 0, 0] and mask[1].all()
    assert (ids[mask == 0] == cfg.pad_token_id).all()
    assert labels[0, 2] == -100 and labels[0, 3] == ids[0, 3]  # the first real token after a left pad
    assert torch.equal(case.valid(cfg), mask.bool())
