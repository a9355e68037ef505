"""Per-row padding: the cases' representation (one side per batch, or pads on both ends of a row), and
the strategies that draw it (each row on its own: any row may be the longest)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import Phase, find, given, settings

from gemma2_regress.kernel.cases import GEMMA2_WINDOW, Case, make_inputs
from gemma2_regress.kernel.strategies import real_window_cases, small_window_cases
from gemma2_regress.model import tiny
from gemma2_regress.model.cases import ModelCase, W, model_cases
from gemma2_regress.model.trainer import eval_lengths, longer_after_shorter
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


# --- the strategies: each row's padding drawn on its own ----------------------------------------------

FIND = settings(max_examples=2000, database=None, derandomize=True)
FIRST = settings(FIND, phases=[Phase.generate])  # the first match, unshrunk: quicker
SMALL_W = 16  # the CPU validation's window (tests/model/test_model_properties_cpu.py)
SMALL_MODEL_CASES = model_cases(lengths=(SMALL_W - 1, SMALL_W + 1, 2 * SMALL_W), window=SMALL_W)
STRATEGIES = {
    "small_window_cases": (small_window_cases(), lambda c: (c.kv_len, c.window)),
    "real_window_cases": (real_window_cases(), lambda c: (c.kv_len, c.window)),
    "model_cases": (model_cases(), lambda c: (c.seq_len, W)),
    "model_cases(W=16)": (SMALL_MODEL_CASES, lambda c: (c.seq_len, SMALL_W)),
}


def real_lengths(case, length: int) -> list[int]:
    return [length - left - right for left, right in case.row_pads]


def multi_row_padded(case) -> bool:
    return case.bsz > 1 and case.padded


def later_row_longer(case, length: int) -> bool:
    real = real_lengths(case, length)
    return max(real[1:]) > real[0]


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_any_row_may_be_the_longest(name: str) -> None:
    """A padded batch whose longest row is not row 0, shrunk to the simplest such (2 rows, the second
    unpadded), and one whose fully padded row is row 0 (no row is the longest or the padding by
    its position)."""
    strategy, geometry = STRATEGIES[name]
    found = find(
        strategy,
        lambda c: multi_row_padded(c) and later_row_longer(c, geometry(c)[0]),
        settings=FIND,
    )
    assert later_row_longer(found, geometry(found)[0])
    assert found.bsz == 2 and found.row_pads[1] == (0, 0), found
    first_empty = find(
        strategy,
        lambda c: multi_row_padded(c) and real_lengths(c, geometry(c)[0])[0] == 0,
        settings=FIRST,
    )
    assert real_lengths(first_empty, geometry(first_empty)[0])[0] == 0


@pytest.mark.parametrize("name", [n for n in STRATEGIES if n != "real_window_cases"])
def test_rows_on_both_sides_of_the_window_and_padded_on_both_ends(name: str) -> None:
    """One batch with a row across its window and another inside it (the case's own window), and
    one with a row padded on both ends by unequal counts. (``real_window_cases`` has 2 rows only at
    4095..4097 tokens: the first half holds there too, checked below with its rows.)"""
    strategy, geometry = STRATEGIES[name]

    def across_and_inside(c) -> bool:
        length, window = geometry(c)
        real = [n for n in real_lengths(c, length) if n > 0]
        return window is not None and any(n > window for n in real) and any(n <= window for n in real)

    assert across_and_inside(
        find(strategy, lambda c: multi_row_padded(c) and across_and_inside(c), settings=FIRST)
    )
    both = find(
        strategy,
        lambda c: multi_row_padded(c) and any(0 < left != right > 0 for left, right in c.row_pads),
        settings=FIRST,
    )
    assert both.pad_side == "both"


def test_real_window_rows_across_and_inside_the_window() -> None:
    found = find(
        real_window_cases(),
        lambda c: (
            c.bsz == 2
            and c.window is not None
            and sorted(n > c.window for n in real_lengths(c, c.kv_len) if n) == [False, True]
        ),
        settings=FIRST,
    )
    assert found.kv_len == GEMMA2_WINDOW + 1


@pytest.mark.parametrize("name", ["small_window_cases", "model_cases"])
def test_row_0_is_not_the_longest_by_habit(name: str) -> None:
    """Over 300 draws (derandomized: it never flakes), a later row is longer than row 0 in at least
    40% of the multi-row padded batches and row 0 alone is the longest in at most 30% (with rows drawn
    on their own, a later row is the longer as often as row 0 at 2 rows, and more often at more)."""
    strategy, geometry = STRATEGIES[name]
    cases = []

    @settings(max_examples=300, database=None, derandomize=True, phases=[Phase.generate])
    @given(case=strategy)
    def draw(case) -> None:
        if multi_row_padded(case):
            cases.append(case)

    draw()
    later = sum(later_row_longer(c, geometry(c)[0]) for c in cases)
    only0 = sum(real_lengths(c, geometry(c)[0])[0] > max(real_lengths(c, geometry(c)[0])[1:]) for c in cases)
    assert len(cases) >= 100, len(cases)
    assert later >= 0.4 * len(cases) and only0 <= 0.3 * len(cases), (later, only0, len(cases))


@pytest.mark.parametrize("bsz", [2, 4])
def test_eval_sets_put_a_longer_row_after_a_shorter_one(bsz: int) -> None:
    """Drawn eval sets (Trainer.evaluate): some batch's longest row is not its first, and the
    longest row of a batch can sit at any position in it."""
    for at in range(bsz):
        found = find(
            eval_lengths(bsz),
            lambda ls, at=at: any(
                b.index(max(b)) == at and max(b) > min(b) for b in (ls[i : i + bsz] for i in range(0, 8, bsz))
            ),
            settings=FIRST,
        )
        assert longer_after_shorter(found, bsz)
    assert not longer_after_shorter((8192, 4097) * 4, 2) and longer_after_shorter((4097, 8192) * 4, 2)
