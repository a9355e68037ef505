"""The oracle against transformers' eager Gemma-2 attention, with transformers' own masks.

This pins the oracle's conventions to transformers' (the reference Unsloth is compared with at
model level): the window (``masking_utils`` for a Gemma-2 sliding layer: ``i - W < j <= i``), the
scale (``Gemma2Attention.scaling = query_pre_attn_scalar**-0.5``), the cap
(``attn_logit_softcapping``), GQA (``repeat_kv``) and padding. The attention module is a real
``Gemma2Attention`` built from ``tiny.tiny_config``; the masks come from
``create_sliding_window_causal_mask`` / ``create_causal_mask`` (the calls ``Gemma2Model.forward``
makes) and, for q_len < kv_len, from ``eager_mask`` with the query offset a KV cache would give;
all inside ``pristine_transformers``, so they stay transformers' own where the process imported Unsloth.
"""

from __future__ import annotations

import functools

import torch
from hypothesis import example, given

from gemma2_regress.kernel.cases import Case, make_inputs
from gemma2_regress.kernel.strategies import small_window_cases
from gemma2_regress.model import tiny
from gemma2_regress.model.eager import pristine_transformers
from gemma2_regress.reference import masks, oracle, tolerance


@functools.lru_cache(maxsize=64)
def attention_layer(n_heads: int, n_kv: int, head_dim: int, scalar: float, window: int | None):
    """A real Gemma2Attention: layer 0 (sliding) for a window, layer 1 (global) for None."""
    from transformers.models.gemma2 import modeling_gemma2 as g2

    cfg = tiny.tiny_config(
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv,
        head_dim=head_dim,
        query_pre_attn_scalar=int(
            scalar
        ),  # Gemma2Config insists on an int; the strategies draw integral ones
        sliding_window=window or 4096,
    )
    layer = g2.Gemma2Attention(cfg, layer_idx=0 if window is not None else 1).eval()
    assert layer.sliding_window == window, (
        f"transformers gives layer {layer.layer_idx} window {layer.sliding_window}"
    )
    return layer


def transformers_mask(layer, case: Case, key_valid: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """The additive ``(bsz, 1, q, kv)`` mask transformers builds for this layer and case, with its own
    code even where this process imported Unsloth (which replaces transformers' mask builders)."""
    with pristine_transformers():
        return _transformers_mask(layer, case, key_valid, dtype)


def _transformers_mask(layer, case: Case, key_valid: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    from transformers import masking_utils as mu

    cfg = layer.config
    if case.q_len == case.kv_len:
        create = mu.create_sliding_window_causal_mask if case.window is not None else mu.create_causal_mask
        embeds = torch.empty(case.bsz, case.q_len, cfg.hidden_size, dtype=dtype)
        return create(config=cfg, inputs_embeds=embeds, attention_mask=key_valid, past_key_values=None)
    fn = (
        mu.causal_mask_function
        if case.window is None
        else mu.sliding_window_causal_mask_function(case.window)
    )
    return mu.eager_mask(
        batch_size=case.bsz,
        q_length=case.q_len,
        kv_length=case.kv_len,
        q_offset=case.kv_len - case.q_len,
        mask_function=fn,
        attention_mask=None if key_valid is None else key_valid.bool(),
        dtype=dtype,
    )


def transformers_attention(case: Case, x, dtype: torch.dtype) -> torch.Tensor:
    from transformers.models.gemma2 import modeling_gemma2 as g2

    layer = attention_layer(case.n_heads, case.n_kv_heads, case.head_dim, case.scalar, case.window)
    with pristine_transformers(), torch.no_grad():  # one scope for the mask and the attention
        mask = _transformers_mask(layer, case, x.key_valid, dtype)
        out, _ = g2.eager_attention_forward(
            layer,
            x.q.to(dtype),
            x.k.to(dtype),
            x.v.to(dtype),
            mask,
            dropout=0.0,
            scaling=layer.scaling,
            softcap=layer.attn_logit_softcapping,
        )
    return out.reshape(case.bsz, case.q_len, -1)


@given(case=small_window_cases())
@example(case=Case(bsz=3, q_len=70, kv_len=70, window=32, pad_side="left", pads=(5, 0, 70), logit_std=50.0))
@example(case=Case(bsz=2, q_len=5, kv_len=66, window=64, pad_side="right", pads=(0, 3), dtype="bfloat16"))
# bfloat16 logits near the cap round by 0.2: a false red (ratio 1.85) under the old constant floor.
@example(
    case=Case(
        n_heads=2,
        n_kv_heads=2,
        head_dim=32,
        q_len=2,
        kv_len=32,
        window=16,
        dtype="bfloat16",
        scalar=32.0,
        logit_std=25.0,
        seed=31781,
    )
)
def test_transformers_eager_matches_oracle(case: Case) -> None:
    """transformers' eager attention, in float64 and in the case's dtype, within the tolerance rule."""
    x = make_inputs(case)
    kw = dict(scalar=case.scalar, softcap=case.softcap, window=case.window, key_valid=x.key_valid)
    golden = oracle.attention(x.q, x.k, x.v, dtype=torch.float64, **kw)
    valid = masks.valid_queries(x.key_valid, case.q_len)
    # transformers' eager softmax is float32 even for float64 inputs: its float64 run is judged as float32
    for run_dtype, rule_dtype in ((torch.float64, torch.float32), (case.torch_dtype, case.torch_dtype)):
        target = transformers_attention(case, x, run_dtype)
        baseline = oracle.attention(x.q, x.k, x.v, dtype=rule_dtype, **kw)
        floor = torch.as_tensor(tolerance.attention_floor(x.q, x.k, x.v, dtype=rule_dtype, **kw))
        floor, g = floor.expand_as(golden), golden
        # A fully padded query row is NaN in float16 eager (-inf + -inf): real rows only.
        if valid is not None:
            target, g, baseline, floor = target[valid], g[valid], baseline[valid], floor[valid]
        cmp = tolerance.compare(target, g, baseline, dtype=rule_dtype, floor=floor)
        assert cmp.ok, f"transformers eager ({run_dtype}) vs oracle for {case.short()}: {cmp.describe()}"


@given(case=small_window_cases(dtypes=("float32",)))
@example(case=Case(bsz=1, q_len=9, kv_len=9, window=4))
@example(case=Case(bsz=2, q_len=3, kv_len=10, window=4, pad_side="left", pads=(2, 10)))
def test_window_convention_is_transformers(case: Case) -> None:
    """masks.allowed is exactly the visibility transformers' mask gives (0 = seen), key by key."""
    x = make_inputs(case)
    layer = attention_layer(case.n_heads, case.n_kv_heads, case.head_dim, case.scalar, case.window)
    theirs = transformers_mask(layer, case, x.key_valid, torch.float32)[:, 0] == 0
    ours = masks.allowed(case.q_len, case.kv_len, case.window, x.key_valid)
    ours = ours.expand(case.bsz, -1, -1) if ours.dim() == 2 else ours
    valid = masks.valid_queries(x.key_valid, case.q_len)
    if valid is not None:  # transformers may unmask a fully padded query row; it is never compared
        theirs, ours = theirs[valid], ours[valid]
    diff = (theirs != ours).nonzero()
    assert diff.numel() == 0, (
        f"window convention differs from transformers at (row, q, kv) {diff[:5].tolist()} for {case.short()}"
    )


def test_sliding_window_admits_exactly_w_keys() -> None:
    """The convention spelled out on transformers' side: at W = 4096 the last of 4098 queries sees W keys."""
    case = Case(bsz=1, n_heads=2, n_kv_heads=1, q_len=1, kv_len=4098, window=4096)
    layer = attention_layer(2, 1, 16, 16.0, 4096)
    seen = (transformers_mask(layer, case, None, torch.float32)[0, 0, -1] == 0).nonzero().flatten()
    assert seen.numel() == 4096 and int(seen[0]) == 4098 - 4096 and int(seen[-1]) == 4097, seen
