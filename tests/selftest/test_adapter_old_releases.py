"""The adapter's reading of releases older than 2026.8.16 (gemma2_regress/unsloth_adapter.py, unsloth_layer.py),
on stand-in modules shaped as those releases' code is, with transformers' real mask helpers: where
``AttentionMaskConverter`` comes from, the eval branch that hands the kernels row 0's 2-D slice, the layer
attributes and rotary tables the old code reads. No Unsloth is imported."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch

from gemma2_regress import unsloth_adapter, unsloth_layer

# The eval branch of LlamaModel_fast_forward as 2024.12.9 .. 2025.6.x write it (row 0's 2-D slice), and as
# 2025.10.x on write it (the 4-D masks); only the source is read.
SLICED = """
def LlamaModel_fast_forward(self, attention_mask, batch_size, seq_length, inputs_embeds, past_key_values_length):
    dynamic_SWA_mask = _prepare_4d_causal_attention_mask_for_sdpa(
        attention_mask,
        (batch_size, seq_length),
        inputs_embeds,
        past_key_values_length,
        sliding_window = self.config.sliding_window,
    )[0][0]
    dynamic_GA_mask = _prepare_4d_causal_attention_mask_for_sdpa(
        attention_mask, (batch_size, seq_length), inputs_embeds, past_key_values_length, sliding_window = None,
    )[0][0]
"""
FOUR_D = SLICED.replace(")[0][0]", ")")


def module_from_source(tmp_path: Path, name: str, source: str) -> types.ModuleType:
    path = tmp_path / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def old_release(llama: types.ModuleType) -> unsloth_adapter.Unsloth:
    from transformers.modeling_attn_mask_utils import _prepare_4d_causal_attention_mask_for_sdpa

    llama._prepare_4d_causal_attention_mask_for_sdpa = _prepare_4d_causal_attention_mask_for_sdpa
    g = types.SimpleNamespace()
    return unsloth_adapter.Unsloth(
        "2024.12.9", types.SimpleNamespace(), llama, g, "kv_len", unsloth_adapter._eval_masks_2d(llama)
    )


def keys_seen(mask: torch.Tensor) -> list[int]:
    return (mask == 0).sum(-1).reshape(-1, mask.shape[-2])[0].tolist()


def test_which_releases_slice_the_eval_masks(tmp_path: Path) -> None:
    assert unsloth_adapter._eval_masks_2d(module_from_source(tmp_path, "llama_sliced", SLICED))
    assert not unsloth_adapter._eval_masks_2d(module_from_source(tmp_path, "llama_4d", FOUR_D))
    assert not unsloth_adapter._eval_masks_2d(types.SimpleNamespace())  # no such function: not sliced


def test_attention_mask_converter_from_transformers_where_the_release_imports_it_locally(
    tmp_path: Path,
) -> None:
    from transformers.modeling_attn_mask_utils import AttentionMaskConverter

    u = old_release(module_from_source(tmp_path, "llama_local_import", FOUR_D))
    base, sliding = u._converters()
    assert base is AttentionMaskConverter and sliding is None
    swa, ga = u.static_masks(19, 16, torch.float32, "cpu")
    assert swa.shape == (19, 19) and keys_seen(swa)[-1] == 17  # the legacy converter: W + 1 keys
    assert keys_seen(ga)[-1] == 19


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_sliced_eval_masks_follow_the_release_eval_branch(tmp_path: Path) -> None:
    u = old_release(module_from_source(tmp_path, "llama_sliced_eval", SLICED))
    assert u.eval_masks_2d
    ones = torch.ones(2, 17, dtype=torch.long)
    swa, ga = u.eval_masks(ones, 17, 16, torch.float32)
    assert swa.shape == ga.shape == (17, 17)  # row 0's 2-D slice, as the release hands the kernels
    assert keys_seen(swa)[-1] == 17
    # The first conversion (with the config's window) comes back unchanged from the second one, so the
    # global layers' per-call mask is the sliding one in these releases.
    assert torch.equal(ga, swa)
    # Within the window an all-ones mask needs none: the helper returns None, the layers keep the static masks.
    swa15, ga15 = u.eval_masks(torch.ones(2, 15, dtype=torch.long), 15, 16, torch.float32)
    static = u.static_masks(15, 16, torch.float32, "cpu")
    assert torch.equal(swa15, static[0]) and torch.equal(ga15, static[1])
    padded = torch.tensor([[0, 0] + [1] * 15, [1] * 17])
    swa_p, _ = u.eval_masks(padded, 17, 16, torch.float32)
    assert swa_p.shape == (17, 17) and bool((swa_p[:, :2] < 0).all())  # row 0's padding, for every row


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_4d_eval_masks_of_later_releases(tmp_path: Path) -> None:
    u = old_release(module_from_source(tmp_path, "llama_4d_eval", FOUR_D))
    swa, ga = u.eval_masks(torch.ones(2, 17, dtype=torch.long), 17, 16, torch.float32)
    assert swa.shape == (2, 1, 17, 17) and keys_seen(swa)[-1] == 17
    assert (
        ga is None
    )  # global, all ones: the helper needs no mask (what the kernels then get is not read here)
    # Within the window the first conversion needs no mask: the layers keep the static masks, as the eval
    # branch does (attention_mask None from there on), rather than a None the kernels cannot take.
    swa15, ga15 = u.eval_masks(torch.ones(2, 15, dtype=torch.long), 15, 16, torch.float32)
    static = u.static_masks(15, 16, torch.float32, "cpu")
    assert torch.equal(swa15, static[0]) and torch.equal(ga15, static[1])


def test_old_code_finds_its_layer_attributes_and_rotary_tables() -> None:
    stub = unsloth_adapter.attention_module_stub(4, 2, 16, 24.0, 50.0)
    assert (stub.num_heads, stub.num_key_value_heads, stub.config.num_attention_heads) == (4, 2, 4)
    rope = unsloth_layer._IdentityRope(16, 17, "cpu")
    assert rope.cos_cached.shape == (17, 16) and bool((rope.cos_cached == 1).all())
    assert bool((rope.sin_cached == 0).all()) and rope.cos_cached.device.type == "cpu"
    assert torch.equal(rope.multi_gpu_cos_cached[None], rope.cos_cached)
    assert rope.get_cached(20)[0].shape == (20, 16)
