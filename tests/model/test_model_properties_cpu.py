"""The model-level properties validated on CPU, on transformers alone, with a 16-token window.

The GPU tier runs these property functions with Unsloth as the target. Here the target is the
eager twin itself (float32 or bfloat16) and the window is small, so every property's *formulation*
is checked where it is cheap: that a KV-cache continuation, a batch row, a padded row, greedy
generation, gradients, Trainer's eval_loss and the window probe do hold for a correct
implementation under the tolerance rule, and that the probe is sensitive. Plus the parts of the
GPU tier that need no GPU: input building, the Unsloth skip reason, and that the eager twin stays
plain transformers after Unsloth patches transformers' Gemma-2 module.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fixtures import child
from fixtures.model import bound_session
from gemma2_regress.model import tiny
from gemma2_regress.model.cases import ModelCase, PackedBatch, labels_for, model_cases
from gemma2_regress.model.eager import EagerTarget
from gemma2_regress.model.fast import UnslothTarget, unsloth_skip_reason
from gemma2_regress.model.properties import (
    check_attention_grads,
    check_generation,
    check_kv_cache,
    check_logits_and_loss,
    check_packed,
    check_padded_row,
    check_row_alone,
    check_window_boundary,
    token_disagreements,
)
from gemma2_regress.model.session import ModelSession

SMALL_W = 16
SMALL_CASES = model_cases(
    lengths=(SMALL_W - 1, SMALL_W, SMALL_W + 1, 2 * SMALL_W, 4 * SMALL_W),
    rows_table=((SMALL_W + 1, 8), (2 * SMALL_W + 1, 4), (4 * SMALL_W, 2)),
    window=SMALL_W,
    dtypes=("float32", "bfloat16"),
)


def small(init: str = "large", **over):
    return tiny.checkpoint(tiny.tiny_config(**{"sliding_window": SMALL_W, **over}), init=init)


def trio(dtype: torch.dtype, init: str = "large", **over):
    """(twin in ``dtype``, golden float64, the twin again as baseline), in this test's session."""
    path = small(init, **over)
    session = bound_session()
    twin = EagerTarget(path, dtype, session=session)
    return twin, EagerTarget(path, torch.float64, session=session), twin


@given(case=SMALL_CASES)
def test_logits_and_loss_formulation(case: ModelCase) -> None:
    check_logits_and_loss(*trio(case.torch_dtype, case.init), case)


@given(
    case=model_cases(lengths=(SMALL_W + 1, 2 * SMALL_W), modes=("train",), max_bsz=2, window=SMALL_W).filter(
        lambda c: c.with_labels
    )
)
def test_attention_grads_formulation(case: ModelCase) -> None:
    check_attention_grads(*trio(case.torch_dtype, case.init), case)


@given(
    n=st.sampled_from([SMALL_W + 1, 2 * SMALL_W]),
    split=st.sampled_from([SMALL_W - 5, SMALL_W - 1, SMALL_W, -1]),
    bsz=st.integers(1, 2),
    mask_kind=st.sampled_from(["none", "ones", "left"]),
    explicit=st.booleans(),
)
def test_kv_cache_formulation(n: int, split: int, bsz: int, mask_kind: str, explicit: bool) -> None:
    target, golden, baseline = trio(torch.float32)
    pads = (3,) + (0,) * (bsz - 1) if mask_kind == "left" else ()
    ids, mask = tiny.token_batch(target.config, bsz, n, pads=pads, side="left" if pads else "none", seed=n)
    am = None if mask_kind == "none" else mask
    check_kv_cache(target, golden, baseline, ids, am, split % n, torch.float32, explicit_positions=explicit)


@given(bsz=st.integers(2, 4), row=st.integers(0, 3), padded=st.booleans())
def test_batch_row_formulation(bsz: int, row: int, padded: bool) -> None:
    target, golden, baseline = trio(torch.float32)
    pads = tuple(5 * (b % 2) for b in range(bsz)) if padded else ()
    ids, mask = tiny.token_batch(target.config, bsz, 2 * SMALL_W, pads=pads, side="left" if pads else "none")
    check_row_alone(target, golden, baseline, ids, mask, row % bsz, torch.float32)


@given(pad=st.sampled_from([1, 7, 20]), side=st.sampled_from(["left", "right"]), companion=st.booleans())
def test_padded_row_formulation(pad: int, side: str, companion: bool) -> None:
    target, golden, baseline = trio(torch.float32)
    n = SMALL_W + 3
    ids, _ = tiny.token_batch(target.config, 2, n + pad, seed=pad)
    check_padded_row(
        target,
        golden,
        baseline,
        ids[:1, :n],
        pad,
        side,
        torch.float32,
        companion=ids[1:] if companion else None,
    )


@pytest.mark.parametrize("bsz", [1, 2])
def test_generation_formulation(bsz: int) -> None:
    target, golden, baseline = trio(torch.float32)
    pads = (4, 0) if bsz == 2 else ()
    ids, mask = tiny.token_batch(target.config, bsz, SMALL_W + 5, pads=pads, side="left" if pads else "none")
    check_generation(target, golden, baseline, ids, mask if pads else None, 6, torch.float32)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("lengths", [(21, 9, 33), (40, 2, 17)], ids=lambda ls: "-".join(map(str, ls)))
def test_packed_formulation(lengths: tuple[int, ...], train: bool) -> None:
    """transformers' eager Gemma-2 reads a pack from position_ids that restart per sequence (its
    packed-sequence mask): the pack's logits, loss and gradients are the sequences' alone."""
    target, golden, baseline = trio(torch.float32)
    check_packed(
        target, golden, baseline, PackedBatch.make(target.config, lengths, seed=3), torch.float32, train=train
    )


def test_packed_property_catches_attention_across_sequences() -> None:
    """The same pack with position_ids that run on (one long sequence to the model): the model attends
    across the boundaries, and the property fails."""
    target, golden, baseline = trio(torch.float32)
    pack = PackedBatch.make(target.config, (21, 9, 33), seed=3)
    across = dataclasses.replace(pack, position_ids=torch.arange(pack.input_ids.shape[1])[None])
    with pytest.raises(AssertionError, match="model_packed failed"):
        check_packed(target, golden, baseline, across, torch.float32, train=False)


def test_packed_batch_layout() -> None:
    pack = PackedBatch.make(tiny.tiny_config(sliding_window=SMALL_W), (3, 2, 4), seed=1)
    assert pack.input_ids.shape == (1, 9) and pack.packed_seq_lengths.dtype == torch.int32
    assert pack.position_ids.tolist() == [[0, 1, 2, 0, 1, 0, 1, 2, 3]]
    assert (pack.labels[0] == -100).nonzero().flatten().tolist() == [0, 3, 5]
    assert torch.equal(torch.cat(pack.rows, 1), pack.input_ids)
    with pytest.raises(ValueError, match="2 or more tokens"):
        PackedBatch.make(tiny.tiny_config(), (3, 1))


def test_token_disagreements_rule() -> None:
    """A differing token fails unless the reference's top-2 gap at that step is under the margin."""
    ref = torch.tensor([[5, 6, 7]])
    scores = torch.zeros(1, 3, 10)
    scores[0, 0, 5], scores[0, 1, 6], scores[0, 1, 2], scores[0, 2, 7] = 1.0, 1.0, 0.99999, 1.0
    assert token_disagreements(ref.clone(), ref, scores, 1e-4) == []
    assert token_disagreements(torch.tensor([[5, 2, 0]]), ref, scores, 1e-4) == []  # near tie at step 1
    assert len(token_disagreements(torch.tensor([[4, 6, 7]]), ref, scores, 1e-4)) == 1  # clear at step 0


@pytest.mark.parametrize("mask_kind", ["none", "ones", "left"])
def test_window_probe_formulation(mask_kind: str) -> None:
    target, golden, baseline = trio(torch.float32, "probe", num_hidden_layers=1)
    pads = (3, 0) if mask_kind == "left" else ()
    ids, mask = tiny.token_batch(
        target.config, len(pads) or 1, 3 * SMALL_W, pads=pads, side="left" if pads else "none", seed=5
    )
    check_window_boundary(
        target, golden, baseline, ids, None if mask_kind == "none" else mask, SMALL_W, torch.float32
    )


def test_window_probe_catches_a_wrong_window(model_session: ModelSession) -> None:
    """The probe is sensitive: a model whose window is one key wider fails the boundary check."""
    path_ok, path_wide = (
        small("probe", num_hidden_layers=1),
        small("probe", num_hidden_layers=1, sliding_window=SMALL_W + 1),
    )
    wide = EagerTarget(path_wide, torch.float32, session=model_session)
    wide.name = "mutant:eager-window-W+1 (expected to fail)"
    golden, baseline = (
        EagerTarget(path_ok, torch.float64, session=model_session),
        EagerTarget(path_ok, torch.float32, session=model_session),
    )
    ids, _ = tiny.token_batch(golden.config, 1, 3 * SMALL_W, seed=5)
    with pytest.raises(AssertionError, match="model_window_boundary failed"):
        check_window_boundary(wide, golden, baseline, ids, None, SMALL_W, torch.float32)


def test_model_case_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="padding without an attention_mask"):
        ModelCase(bsz=1, seq_len=10, pad_side="left", pads=(3,), with_mask=False)
    with pytest.raises(ValueError, match="drops the mask"):
        ModelCase(bsz=1, seq_len=10, pad_side="left", pads=(3,), mode="train")
    with pytest.raises(ValueError, match="every row fully padded"):
        ModelCase(bsz=1, seq_len=10, pad_side="right", pads=(10,))


def test_labels_ignore_pads_and_the_token_after_a_left_pad() -> None:
    ids = torch.tensor([[0, 0, 5, 6], [7, 8, 0, 0]])
    mask = (ids != 0).long()
    assert labels_for(ids, mask).tolist() == [[-100, -100, -100, 6], [7, 8, -100, -100]]


def test_unsloth_target_skips_without_gpu(model_session: ModelSession) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the skip reason is for machines without one")
    reason = unsloth_skip_reason()
    assert reason and "CUDA" in reason
    with pytest.raises(Exception, match="CUDA"):
        UnslothTarget(small(), torch.float32, session=model_session)


_PATCH_THEN_TWIN = """
import json, sys, torch
from gemma2_regress.model import eager, tiny
from gemma2_regress.model.session import ModelSession
from fixtures.child import pre_patch_gemma2  # imports Unsloth only when called
session = ModelSession()
path = tiny.checkpoint(tiny.tiny_config(sliding_window=16), init="large")
ids, mask = tiny.token_batch(tiny.tiny_config(sliding_window=16), 2, 40, pads=(3, 0), side="left")
before = eager.EagerTarget(path, torch.float32, session=session).forward(ids, mask).logits
pre_patch_gemma2()
eager._EAGER.clear()
twin = eager.EagerTarget(path, torch.float32, session=session)
after = twin.forward(ids, mask).logits
real = mask.bool()
print(json.dumps({"rotary": type(twin.model.model.rotary_emb).__module__,
                  "equal": bool(torch.equal(after[real], before[real]))}))
"""


@pytest.mark.unsloth
def test_eager_twin_stays_plain_transformers_after_unsloth_patches(tmp_path) -> None:
    """Apply exactly what FastLanguageModel.from_pretrained does to transformers' Gemma-2 module
    (snapshot, pre_patch, record, gate); the twin built afterwards still runs transformers' code.
    In a subprocess: the patches are process-wide and would leak into other tests."""
    got = child.run_json(_PATCH_THEN_TWIN)
    assert got["rotary"].startswith("transformers."), got
    assert got["equal"], "the twin's logits changed after Unsloth patched transformers' Gemma-2 module"


_UNSLOTH_THEN_TWIN = """
import json, torch
from gemma2_regress import unsloth_adapter
u = unsloth_adapter.load()  # first, as the GPU tier's workers do: Unsloth patches transformers on import
from gemma2_regress.model import eager, tiny
from gemma2_regress.model.session import ModelSession
from fixtures.child import pre_patch_gemma2, unsloth_calls, unsloth_code
pre_patch_gemma2()  # what from_pretrained does
from transformers import masking_utils
from transformers.models.gemma2 import modeling_gemma2
def builders():
    named = [(m.__name__, n, v) for m in (masking_utils, modeling_gemma2) for n, v in vars(m).items()
             if "mask" in n and callable(v) and not isinstance(v, type)]
    return sorted(f"{m}.{n}" for m, n, v in named if unsloth_code(v))
cfg = tiny.tiny_config(sliding_window=16)
path = tiny.checkpoint(cfg, init="large")
ids, mask = tiny.token_batch(cfg, 2, 40, pads=(3, 0), side="left")
twins = [eager.EagerTarget(path, dtype, session=ModelSession()) for dtype in (torch.float64, torch.float32)]
with unsloth_calls() as seen:
    for twin in twins:
        twin.forward(ids, mask, labels=ids)
        twin.forward(ids, None, labels=ids)
        twin.generate(ids, mask, 3)
        twin.forward_cached(ids, mask, 30)
        twin.attention_grads(ids, None, ids)
from_masks = sorted(name for name, caller in seen["unsloth"] if caller.endswith("masking_utils.py"))
with eager.pristine_transformers():
    inside = builders()
print(json.dumps({"patched_outside": builders(), "patched_inside": inside,
                  "called_from_masks": from_masks, "dynamo_files": len(seen["dynamo"])}))
"""


@pytest.mark.unsloth
def test_eager_twin_builds_its_masks_with_transformers_own_code() -> None:
    """With Unsloth imported first and its Gemma-2 pre-patch applied (as in a GPU tier worker), the
    twin's forward (padded and not, with labels), greedy generation, KV-cache continuation and training
    step build their masks (which keys each query sees) with transformers' own functions and compile
    nothing: the golden reference shares no mask code with the target. Unsloth replaces transformers' mask builders with torch.compile'd
    wrappers on import (checked: it still does, or this test proves nothing); ``pristine_transformers``
    puts the originals back. Unsloth's other process-wide wrappers (generation config, caches, the
    decoder layer's ``__call__`` for gradient checkpointing) pass through and are not checked here; nor
    is building the twin (its weights load through Unsloth's safetensors opener, and the test above
    compares its logits with a twin's built before Unsloth was imported).
    In a subprocess: the patches are process-wide."""
    got = child.run_json(_UNSLOTH_THEN_TWIN)
    assert "transformers.masking_utils.create_causal_mask" in got["patched_outside"], got  # the premise
    assert got["patched_inside"] == [], f"Unsloth's mask builders left in place: {got['patched_inside']}"
    assert got["called_from_masks"] == [], f"transformers' mask code called Unsloth's: {got}"
    assert got["dynamo_files"] == 0, "the eager twin ran Dynamo (a torch.compile'd function)"
