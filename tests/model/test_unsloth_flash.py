"""Unsloth's flash-attn path on a GPU, with flash-attn's reference stand-in where no real flash-attn is
installed (``unsloth_flash.flash_path(u, "cuda")``; docs/flash.md).

Dispatch (``Gemma2Attention_fast_forward``): flash-attn iff ``HAS_FLASH_ATTENTION_SOFTCAPPING`` and
no attention_mask reaches the layer; an unpadded batch's all-ones mask is dropped (flash), a padded
batch keeps its mask and goes through the slow path, which is the path of the 2024 crash: with
flash-attn installed the sliding layers' ``causal_mask`` is the bool ``True`` sentinel, and an
evaluation longer than the window with an attention_mask must still reach the slow kernel with a
real 4-D mask. In training Unsloth drops the mask (right padding) and takes flash. Every call Unsloth
makes to flash-attn is recorded, and which path ran is asserted. Skipped, with the reason, only where
the flash path cannot be given (a GPU below capability 8, where Unsloth never takes it).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

from gemma2_regress import unsloth_adapter, unsloth_flash
from gemma2_regress.kernel.cases import DTYPES, GEMMA2_WINDOW
from gemma2_regress.model import tiny
from gemma2_regress.model.cases import ModelCase, PackedBatch
from gemma2_regress.model.fast import gpu_targets
from gemma2_regress.model.properties import (
    check_attention_grads,
    check_evaluate,
    check_generation,
    check_kv_cache,
    check_logits_and_loss,
    check_packed,
    check_padded_row,
    check_row_alone,
    check_trainer_evaluate,
)
from gemma2_regress.model.session import ModelSession
from gemma2_regress.model.trainer import EVAL_LENGTHS, eval_dataset, make_packing_trainer

pytestmark = [pytest.mark.gpu, pytest.mark.unsloth]
W = GEMMA2_WINDOW
# The tiny Gemma-2 with query_pre_attn_scalar 24 != head_dim 16 (Gemma-2 27B: 144 != 128), so that a
# flash-attn softmax_scale taken from head_dim shows.
FLASH_OVERRIDES = {"query_pre_attn_scalar": 24}


def flash_targets(dtype: Any, session: ModelSession, init: str = "large"):
    # The config is made here, not at import: collection must not import transformers (fixtures/model.py).
    return gpu_targets(tiny.checkpoint(tiny.tiny_config(**FLASH_OVERRIDES), init=init), dtype, session)


FlashBlock = Callable[..., contextlib.AbstractContextManager[list[unsloth_flash.FlashCall]]]


@pytest.fixture
def flash(unsloth_ready: None) -> FlashBlock:
    """``flash(*models)``: a block on Unsloth's flash path on this GPU (``unsloth_flash.flash_path(u, "cuda")``, which
    puts ``models``' per-forward masks back afterwards) that yields the list of flash-attn calls made in it."""
    u = unsloth_adapter.load()
    reason = unsloth_flash.flash_path_unavailable(u, "cuda")
    if reason is not None:
        pytest.skip(f"Unsloth's flash-attn path cannot be given here: {reason}")

    @contextlib.contextmanager
    def block(*models: Any) -> Iterator[list[unsloth_flash.FlashCall]]:
        with (
            unsloth_flash.flash_path(u, "cuda", models=models),
            unsloth_flash.recording_flash_calls(u) as calls,
        ):
            yield calls

    return block


def assert_scale(calls: list[unsloth_flash.FlashCall], config: Any) -> None:
    """Every call's softmax_scale is query_pre_attn_scalar**-0.5 (to rounding: Unsloth computes 1 / s**0.5)."""
    want = config.query_pre_attn_scalar**-0.5
    bad = {c.softmax_scale for c in calls if not math.isclose(c.softmax_scale or 0.0, want, rel_tol=1e-12)}
    assert not bad, f"softmax_scale {bad}: want query_pre_attn_scalar**-0.5 = {want}"


def assert_flash_layers(calls: list[unsloth_flash.FlashCall], config: Any, seq_len: int) -> None:
    """Every call is flash_attn_func with the config's cap; the sliding layers' window keeps W keys."""
    assert calls, "no flash-attn call: the flash path was not taken"
    assert_scale(calls, config)
    w = config.sliding_window
    want_windows = {(-1, -1), (w - 1, 0) if seq_len > w else (-1, -1)}
    got = {(c.function, c.softcap, c.causal) for c in calls}
    assert got == {("flash_attn_func", config.attn_logit_softcapping, True)}, calls
    assert {tuple(c.window_size) for c in calls} == want_windows, calls


FLASH_CASES = [
    pytest.param(ModelCase(bsz=1, seq_len=8192, with_mask=False, dtype="bfloat16"), id="flash-no-mask-8192"),
    pytest.param(
        ModelCase(bsz=2, seq_len=4200, with_mask=True, dtype="bfloat16"), id="flash-all-ones-mask-4200"
    ),
    pytest.param(
        ModelCase(bsz=2, seq_len=4200, pad_side="left", pads=(7, 0), dtype="bfloat16", seed=853),
        id="slow-path-2024-crash-4200",
    ),
    pytest.param(
        ModelCase(bsz=2, seq_len=8192, pad_side="right", pads=(0, 100), mode="train", dtype="float16"),
        id="train-mask-dropped-flash-8192",
    ),
    # A float32 model: flash-attn takes only fp16/bf16, so Unsloth must cast around it (known issue).
    pytest.param(ModelCase(bsz=1, seq_len=4200, with_mask=False, dtype="float32"), id="flash-float32-4200"),
]


@pytest.mark.parametrize("case", FLASH_CASES)
def test_flash_path_logits_and_loss(case: ModelCase, flash: FlashBlock, model_session: ModelSession) -> None:
    """Logits and loss on Unsloth's flash path, and on the slow path a padded evaluation batch falls back to."""
    target, golden, baseline = flash_targets(case.torch_dtype, model_session, case.init)
    with flash(target.model) as calls:
        check_logits_and_loss(target, golden, baseline, case)
    if case.padded and case.mode == "eval":
        assert calls == [], f"a padded evaluation batch reached flash-attn: {calls[:2]}"
    else:
        assert_flash_layers(calls, target.config, case.seq_len)


@pytest.mark.parametrize("bsz", [1, 2, 4])
def test_flash_evaluate_past_window(
    bsz: int, flash: FlashBlock, model_session: ModelSession, tmp_path
) -> None:
    """Trainer.evaluate on the flash path, padded batches past the window: no crash, right loss (unpadded
    batches of one take flash-attn; padded ones the slow path)."""

    target, golden, baseline = flash_targets(torch.bfloat16, model_session)
    with flash(target.model) as calls:
        check_evaluate(
            "trainer",
            target,
            golden,
            baseline,
            eval_dataset(target.config),
            bsz,
            torch.bfloat16,
            str(tmp_path),
        )
    if bsz == 1:
        assert_flash_layers(calls, target.config, min(EVAL_LENGTHS))


def assert_decode_calls(calls: list[unsloth_flash.FlashCall], config: Any, leftpad: tuple[int, ...]) -> None:
    """The one-token decode went through flash_attn_with_kvcache with each row's left padding, the
    config's cap and scale, and a window of W keys on sliding layers (the cache is longer than W).
    Unsloth's own one-row usability probe (``_flash_decode_usable``: scale 1, no left padding) is left out."""
    decode = [c for c in calls if c.function == "flash_attn_with_kvcache" and c.q_shape[0] == len(leftpad)]
    assert decode, (
        f"no flash_attn_with_kvcache call: the flash decode was not taken ({len(calls)} other calls)"
    )
    assert {c.cache_leftpad for c in decode} == {leftpad}, decode[:2]
    assert {c.softcap for c in decode} == {config.attn_logit_softcapping}, decode[:2]
    assert_scale(decode, config)
    assert {tuple(c.window_size) for c in decode} == {(config.sliding_window - 1, 0), (-1, -1)}, decode[:2]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_flash_decode_left_padded_past_window(
    dtype: str, flash: FlashBlock, model_session: ModelSession
) -> None:
    """A left-padded batch, one row crossing the window: prefill (padded: the slow path), then one token
    through Unsloth's flash decode (flash_attn_with_kvcache with cache_leftpad) == the full forward."""
    target, golden, baseline = flash_targets(DTYPES[dtype], model_session)
    n = W + 104
    ids, mask = tiny.token_batch(target.config, 2, n, pads=(9, 0), side="left", seed=n)
    with flash(target.model) as calls:
        check_kv_cache(target, golden, baseline, ids, mask, n - 1, DTYPES[dtype], explicit_positions=True)
    assert_decode_calls(calls, target.config, (9, 0))


def test_flash_generation_left_padded_past_window(flash: FlashBlock, model_session: ModelSession) -> None:
    """for_inference + greedy generate on the flash path, a left-padded batch of two prompts past the
    window: every decode step through flash_attn_with_kvcache, the tokens transformers' own."""
    target, golden, baseline = flash_targets(torch.bfloat16, model_session)
    ids, mask = tiny.token_batch(target.config, 2, W + 104, pads=(9, 0), side="left", seed=7)
    with flash(target.model) as calls:
        check_generation(target, golden, baseline, ids, mask, 6, torch.bfloat16)
    assert_decode_calls(calls, target.config, (9, 0))


def test_flash_attention_grads(flash: FlashBlock, model_session: ModelSession) -> None:
    """One training step on the flash path (the mask is dropped in training): q/k/v/o gradients."""
    case = ModelCase(bsz=2, seq_len=W + 104, pad_side="right", pads=(0, 50), mode="train", dtype="bfloat16")
    target, golden, baseline = flash_targets(case.torch_dtype, model_session)
    with flash(target.model) as calls:
        check_attention_grads(target, golden, baseline, case)
    assert_flash_layers(calls, target.config, case.seq_len)


def test_flash_batch_row(flash: FlashBlock, model_session: ModelSession) -> None:
    """A row of an unpadded batch on the flash path gives its logits alone."""
    target, golden, baseline = flash_targets(torch.bfloat16, model_session)
    ids, _ = tiny.token_batch(target.config, 3, W + 1, seed=31)
    with flash(target.model) as calls:
        check_row_alone(target, golden, baseline, ids, None, 1, torch.bfloat16)
    assert_flash_layers(calls, target.config, W + 1)


def test_flash_padded_row(flash: FlashBlock, model_session: ModelSession) -> None:
    """With flash-attn installed, a row left-padded by 7 beside an unpadded companion of 4104 tokens (the
    batch keeps its mask, so the slow path, with the sliding layers' flash sentinel beside it: the 2024
    trigger) gives, at its real positions, the logits of the same row unpadded."""
    target, golden, baseline = flash_targets(torch.bfloat16, model_session)
    n = W + 1
    ids, _ = tiny.token_batch(target.config, 2, n + 7, seed=7)
    with flash(target.model) as calls:
        check_padded_row(target, golden, baseline, ids[:1, :n], 7, "left", torch.bfloat16, companion=ids[1:])
    assert calls == [], f"a padded evaluation batch reached flash-attn: {calls[:2]}"


# Sequences of different lengths in one pack, one crossing the window, one short.
PACK = (W + 104, 2900, 700)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_flash_packed(train: bool, flash: FlashBlock, model_session: ModelSession) -> None:
    """A packed / padding-free batch (position_ids restarting, packed_seq_lengths) takes
    flash_attn_varlen_func with the pack's boundaries: logits and loss (eval), gradients (train) equal
    each sequence's alone; nothing attends across a boundary."""
    target, golden, baseline = flash_targets(torch.bfloat16, model_session)
    pack = PackedBatch.make(target.config, PACK, seed=5)
    with flash(target.model) as calls:
        check_packed(target, golden, baseline, pack, torch.bfloat16, train=train)
    assert_varlen_calls(calls, target.config, pack)


def assert_varlen_calls(calls: list[unsloth_flash.FlashCall], config: Any, pack: PackedBatch) -> None:
    """Every call is flash_attn_varlen_func with int32 cu_seqlens at the pack's boundaries and the cap;
    sliding layers keep W keys."""
    ends = [0]
    for n in pack.lengths:
        ends.append(ends[-1] + n)
    assert calls and {c.function for c in calls} == {"flash_attn_varlen_func"}, calls[:2]
    assert {c.cu_seqlens for c in calls} == {tuple(ends)}, calls[:2]
    assert {c.softcap for c in calls} == {config.attn_logit_softcapping}, calls[:2]
    assert_scale(calls, config)
    assert {tuple(c.window_size) for c in calls} == {(config.sliding_window - 1, 0), (-1, -1)}, calls[:2]


def test_flash_sft_packing(flash: FlashBlock, model_session: ModelSession, tmp_path) -> None:
    """TRL's SFTTrainer with packing=True over rows of 4200, 2900, 700 and 3000 tokens (packs of up to
    8192). Where Unsloth packs (its collator passes packed_seq_lengths), a pack of several sequences, one
    past the window, gives the sequences' gradients alone. Where it does not (Unsloth 2026.10.9 turns
    packing and padding-free off for Gemma-2: ``PADDING_FREE_BLOCKLIST`` in unsloth/trainer.py), every
    batch row must be one dataset row: nothing packed without its boundaries. Either way evaluate()'s
    eval_loss is the reference's over the trainer's own eval batches."""
    import datasets

    target, golden, baseline = flash_targets(torch.bfloat16, model_session)
    rows = [
        tiny.token_batch(target.config, 1, n, seed=40 + i)[0][0].tolist() for i, n in enumerate((*PACK, 3000))
    ]
    dataset = datasets.Dataset.from_dict({"input_ids": rows})
    trainer = make_packing_trainer(target.model, target.tokenizer, dataset, 2 * W, tmp_path)
    batches = list(trainer.get_train_dataloader())
    packed = ["packed_seq_lengths" in b for b in batches]
    assert len(set(packed)) == 1, f"some batches packed, some not: {packed}"
    with flash(target.model) as calls:
        if packed[0]:
            packs = [PackedBatch.from_batch(b) for b in batches]
            crossing = [p for p in packs if len(p.lengths) > 1 and max(p.lengths) > W]
            assert crossing, (
                f"no pack holds several sequences, one past the window: {[p.lengths for p in packs]}"
            )
            check_packed(target, golden, baseline, crossing[0], torch.bfloat16, train=True)
        else:
            whole = {tuple(r) for r in rows}
            for b in batches:
                for ids, mask in zip(b["input_ids"].cpu(), b["attention_mask"].cpu(), strict=True):
                    real = tuple(ids[mask.bool()].tolist())
                    assert real in whole, (
                        f"a batch row of {len(real)} tokens is no dataset row: packed without boundaries"
                    )
        check_trainer_evaluate(target, golden, baseline, trainer, torch.bfloat16, "sft packing=True")
    if packed[0]:
        assert any(c.function == "flash_attn_varlen_func" for c in calls), calls[:2]
