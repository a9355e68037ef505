"""The catalogue of planted bugs: what each mutant edits in the installed Unsloth, and which tests reach it.

A :class:`Mutant` is a named set of patches (:class:`Patch`), each a few edits (:class:`Edit`: anchor
text -> new text) of one real Unsloth function; ``patching.apply`` plants them. ``cpu_select`` / ``gpu_paths`` /
``gpu_select`` are the fast selections the kill matrix runs per tier. Pure data: imports only
``kernel.selections`` and no third-party module, so nox and the kill matrix's argument checks can
read it anywhere.

``ENV`` names a run's mutant (the plugin's ``--mutant`` default) and ``STATUS_ENV`` the file where the
plugin reports whether it was planted: the contract between the plugin and the kill matrix.
"""

from __future__ import annotations

import dataclasses
import json

from gemma2_regress.kernel.selections import (
    CUDA_COMPILED,
    FLASH_CPU,
    FLASH_LAYER_TESTS,
    KERNEL,
    KERNEL_TESTS,
    MATH_CPU,
    MATH_GPU,
    WINDOW_CPU,
    WINDOW_GPU,
)

ENV = "GEMMA2_REGRESS_MUTANT"
STATUS_ENV = "GEMMA2_REGRESS_MUTANT_STATUS"  # where the plugin writes {"mutant", "applied", "reason"}
TIERS = ("cpu", "gpu")
CPU_PATHS = (*KERNEL_TESTS, *FLASH_LAYER_TESTS)  # every test the CPU tier's kill matrix may run
# The GPU tier's flash-path tests: one layer on CUDA, and the whole model.
FLASH_GPU_TESTS = (*FLASH_LAYER_TESTS, "tests/model/test_unsloth_flash.py")
# Module handles of the adapter (gemma2_regress.unsloth_adapter.Unsloth) that a patch can name.
OWNERS = ("kernels", "llama", "gemma2")


class UnknownMutant(KeyError):
    """A mutant name that is not in the catalogue; the message lists the known ones."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclasses.dataclass(frozen=True)
class Edit:
    """Replace ``old`` (which must occur exactly once in the function's source) by ``new``."""

    old: str
    new: str


@dataclasses.dataclass(frozen=True)
class Patch:
    """Edits to one function: ``owner`` is an adapter handle (one of ``OWNERS``), ``path`` a global or
    ``Class.attr``.

    ``source_from`` names another ``path`` (same owner) whose source is edited, for a method the
    class inherits: the edited copy is then set on the class itself and deleted again on undo.
    """

    owner: str
    path: str
    edits: tuple[Edit, ...]
    source_from: str | None = None

    @property
    def label(self) -> str:
        return f"{self.owner}:{self.path}"


@dataclasses.dataclass(frozen=True)
class Mutant:
    """One planted bug.

    ``tiers``: the tiers whose tests can reach it. ``cpu_paths``/``cpu_select``: the paths (tests/kernel
    unless said) and pytest ``-k`` expression of the fast CPU selection (the cheapest tests that reach
    it); ``gpu_paths``/``gpu_select``: the same for the GPU tier. ``expect``: verdict prefixes a kill must match (e.g. the 2024 crash
    must surface as a crash of the slow path), empty for "any failure".
    """

    name: str
    summary: str
    patches: tuple[Patch, ...]
    tiers: tuple[str, ...] = TIERS
    cpu_select: str = ""
    cpu_paths: tuple[str, ...] = KERNEL_TESTS
    gpu_paths: tuple[str, ...] = ("tests/kernel", "tests/model", "tests/trainer")
    gpu_select: str = ""
    expect: tuple[str, ...] = ()
    note: str = ""
    known_gap: str = ""  # non-empty: measured to survive; says why and which property would catch it


# --- the anchors: text in Unsloth 2026.10.9 (spacing is Unsloth's own `a = b` keyword style) ---------
K_TRAIN = "_compiled_slow_attention_softcapping"  # the torch.compile'd training/eval kernel body
K_INFER = "slow_inference_attention_softcapping"  # the eager kernel (generation)
CAP_TRAIN = "A = t * torch.tanh(A / t)"
CAP_INFER = "A /= t\n    torch_tanh(A, out = A)\n    A *= t"
SOFTMAX_TRAIN = "A = torch.nn.functional.softmax(A, dim = -1, dtype = torch.float32)"
SOFTMAX_INFER = "A = torch_nn_functional_softmax(A, dim = -1, dtype = torch.float32)"
SCALE = "s = self.config.query_pre_attn_scalar"
GQA_K = "K = K[:, :, None, :, :].expand(bsz, n_kv_heads, n_groups, kv_len, head_dim)"
GQA_V = "V = V[:, :, None, :, :].expand(bsz, n_kv_heads, n_groups, kv_len, head_dim)"
MASK_2D = "A += causal_mask[kv_len - actual_q_len : kv_len, :kv_len]"
MASK_4D = "A += causal_mask[..., :actual_q_len, :kv_len]"
SWA_BAND = "sliding_window = sliding_window - 1 if sliding_window is not None else None,"
FLASH_WINDOW = "(sliding_window - 1, 0)"
# Gemma2Attention_fast_forward's two flash-attn kwargs dicts: dense (softcap then softmax_scale) and
# varlen (softcap then window_size); the one-token decode passes its cap on to flash_attn_with_kvcache.
FLASH_CAP_DENSE = '"softcap": self.config.attn_logit_softcapping,\n                "softmax_scale"'
FLASH_CAP_VARLEN = '"softcap": self.config.attn_logit_softcapping,\n                "window_size"'
FLASH_CAP_DECODE = "softcap = softcap,"
FLASH_SCALE = "self._flash_attention_softmax_scale = 1.0 / (self.config.query_pre_attn_scalar**0.5)"
FLASH_VARLEN_CHOICE = "use_varlen = seq_info is not None and not had_cache"
FLASH_DECODE_WINDOW = "window_size = (window - 1, 0) if window is not None else (-1, -1),"
PAD_MERGE = "expanded_attn_mask.bool(), torch.finfo(dtype).min"
TO_4D_START = "input_shape = (attention_mask_2d.shape[0], query_length)"
SWA_CONVERTER = "Gemma2AttentionMaskConverter"


def _both_kernels(train: tuple[Edit, ...], infer: tuple[Edit, ...]) -> tuple[Patch, ...]:
    return (Patch("kernels", K_TRAIN, train), Patch("kernels", K_INFER, infer))


def _same(old: str, new: str) -> tuple[Patch, ...]:
    return _same_both(Edit(old, new))


def _same_both(*edits: Edit) -> tuple[Patch, ...]:
    """The same edits to both slow kernels (they carry identical copies of this code)."""
    return _both_kernels(edits, edits)


def _swa_band(new: str, flash: str) -> tuple[Patch, ...]:
    """The sliding-window converter's band (static and eval masks) and the flash-attn window."""
    return (
        Patch("llama", f"{SWA_CONVERTER}._make_causal_mask", (Edit(SWA_BAND, new),)),
        Patch("gemma2", "Gemma2Attention_fast_forward", (Edit(FLASH_WINDOW, flash),)),
    )


# The fast selections feed the compiled training/eval kernel (the 2024 path) with the mask source that
# reaches the bug. The eager generation copy, which kernel mutants edit too, is left to ``--full``: it
# fails the baseline on Unsloth 2026.10.9 (docs/mutants.md, "A finding").
KERNEL_ONLY = KERNEL_TESTS

CATALOGUE: dict[str, Mutant] = {
    m.name: m
    for m in (
        Mutant(
            "crash2024",
            "the 2024 crash replayed: on the eval path, once the batch is longer than the window, the "
            "sliding-layer mask builder hands back the flash-attn sentinel `True` instead of a tensor",
            (
                Patch(
                    "llama",
                    f"{SWA_CONVERTER}.to_4d",
                    (
                        Edit(
                            TO_4D_START,
                            "if key_value_length is not None and self.sliding_window is not None "
                            "and key_value_length > self.sliding_window:\n"
                            "        return True  # mutant crash2024: the flash-attn sentinel\n"
                            "    " + TO_4D_START,
                        ),
                    ),
                    source_from="AttentionMaskConverter.to_4d",
                ),
            ),
            cpu_select=f"{KERNEL} and unsloth-eval",
            gpu_paths=("tests/trainer/test_evaluate.py",),
            gpu_select="evaluate_past_window and Trainer and not SFT and float32",
            expect=("crash:AttributeError", "crash:TypeError"),
            note="the kill must be a crash of the slow path on a non-tensor mask, as in unslothai/unsloth#853",
        ),
        Mutant(
            "window_off_by_one_wide",
            "sliding layers see W+1 keys (the legacy converter's i-W <= j): Unsloth's band correction dropped",
            _swa_band(
                "sliding_window = sliding_window if sliding_window is not None else None,",
                "(sliding_window, 0)",
            ),
            cpu_select=WINDOW_CPU,
            gpu_paths=("tests/model/test_unsloth_window.py", "tests/kernel"),
            gpu_select=WINDOW_GPU,
        ),
        Mutant(
            "window_off_by_one_narrow",
            "sliding layers see W-1 keys: the band corrected twice",
            _swa_band(
                "sliding_window = sliding_window - 2 if sliding_window is not None else None,",
                "(sliding_window - 2, 0)",
            ),
            cpu_select=WINDOW_CPU,
            gpu_paths=("tests/model/test_unsloth_window.py", "tests/kernel"),
            gpu_select=WINDOW_GPU,
        ),
        Mutant(
            "window_ignored",
            "sliding layers see every earlier key: the window is not applied at all",
            _swa_band("sliding_window = None,", "(-1, -1)"),
            cpu_select=WINDOW_CPU,
            gpu_paths=("tests/model/test_unsloth_window.py", "tests/kernel"),
            gpu_select=WINDOW_GPU,
        ),
        Mutant(
            "flash_window_off_by_one",
            "on the flash-attn path sliding layers see W+1 keys: Gemma-2's window_size (W - 1, 0) -> (W, 0); "
            "the slow path's masks are untouched",
            (Patch("gemma2", "Gemma2Attention_fast_forward", (Edit(FLASH_WINDOW, "(sliding_window, 0)"),)),),
            cpu_select=FLASH_CPU,
            cpu_paths=FLASH_LAYER_TESTS,
            gpu_paths=FLASH_GPU_TESTS,
            gpu_select=f"({FLASH_CPU}) or flash_path_logits_and_loss",
            note="reached only on the flash path (flash-attn with softcapping: unsloth_flash.flash_path), with more keys "
            "than the window; one layer with the reference stand-in (CPU and CUDA) and the whole model (CUDA)",
        ),
        Mutant(
            "flash_softcap_dropped",
            "on the flash-attn path no logit softcapping: flash-attn gets softcap=0.0 (no cap) for prefill, "
            "packed batches and the one-token decode",
            (
                Patch(
                    "gemma2",
                    "Gemma2Attention_fast_forward",
                    (
                        Edit(
                            FLASH_CAP_DENSE,
                            FLASH_CAP_DENSE.replace("self.config.attn_logit_softcapping", "0.0"),
                        ),
                        Edit(
                            FLASH_CAP_VARLEN,
                            FLASH_CAP_VARLEN.replace("self.config.attn_logit_softcapping", "0.0"),
                        ),
                    ),
                ),
                Patch("gemma2", "_gemma2_flash_decode", (Edit(FLASH_CAP_DECODE, "softcap = 0.0,"),)),
            ),
            cpu_select=FLASH_CPU,
            cpu_paths=FLASH_LAYER_TESTS,
            gpu_paths=FLASH_GPU_TESTS,
            gpu_select=f"({FLASH_CPU}) or flash_path_logits_and_loss or flash_decode",
        ),
        Mutant(
            "flash_scale_head_dim",
            "on the flash-attn path logits scaled by head_dim**-0.5 instead of query_pre_attn_scalar**-0.5",
            (
                Patch(
                    "gemma2",
                    "Gemma2Attention_fast_forward",
                    (Edit(FLASH_SCALE, "self._flash_attention_softmax_scale = 1.0 / (self.head_dim**0.5)"),),
                ),
            ),
            cpu_select=FLASH_CPU,
            cpu_paths=FLASH_LAYER_TESTS,
            gpu_paths=FLASH_GPU_TESTS,
            gpu_select=f"({FLASH_CPU}) or flash_path_logits_and_loss",
            note="visible only where query_pre_attn_scalar != head_dim: the flash tests' tiny Gemma-2 has 24 and 16",
        ),
        Mutant(
            "flash_pack_boundaries_ignored",
            "a packed / padding-free batch attends across its sequences: Unsloth never picks flash-attn's "
            "varlen kernel and runs the dense one over the whole pack",
            (
                Patch(
                    "gemma2",
                    "Gemma2Attention_fast_forward",
                    (Edit(FLASH_VARLEN_CHOICE, "use_varlen = False"),),
                ),
            ),
            cpu_select="flash_varlen",
            cpu_paths=FLASH_LAYER_TESTS,
            gpu_paths=FLASH_GPU_TESTS,
            gpu_select="flash_varlen or packed",
        ),
        Mutant(
            "flash_decode_window_off_by_one",
            "the one-token flash decode lets sliding layers see W+1 keys: flash_attn_with_kvcache's window_size "
            "(W - 1, 0) -> (W, 0)",
            (
                Patch(
                    "gemma2",
                    "_gemma2_flash_decode",
                    (
                        Edit(
                            FLASH_DECODE_WINDOW,
                            "window_size = (window, 0) if window is not None else (-1, -1),",
                        ),
                    ),
                ),
            ),
            tiers=("gpu",),
            gpu_paths=("tests/model/test_unsloth_flash.py",),
            gpu_select="flash_decode",
            note="the flash decode runs only inside Unsloth's whole-model generation on CUDA",
        ),
        Mutant(
            "softcap_dropped",
            "no logit softcapping: softmax(QK^T/sqrt(s) + mask) instead of softmax(t*tanh(./t) + mask)",
            _both_kernels((Edit(CAP_TRAIN, "pass"),), (Edit(CAP_INFER, "pass"),)),
            cpu_select=MATH_CPU,
            gpu_paths=KERNEL_ONLY,
            gpu_select=MATH_GPU,
        ),
        Mutant(
            "softcap_after_mask",
            "softcap applied after the mask is added: masked logits become -t instead of -inf-like",
            _both_kernels(
                (Edit(CAP_TRAIN, "pass"), Edit(SOFTMAX_TRAIN, CAP_TRAIN + "\n    " + SOFTMAX_TRAIN)),
                (Edit(CAP_INFER, "pass"), Edit(SOFTMAX_INFER, CAP_INFER + "\n    " + SOFTMAX_INFER)),
            ),
            cpu_select=MATH_CPU,
            gpu_paths=KERNEL_ONLY,
            gpu_select=MATH_GPU,
        ),
        Mutant(
            "scale_head_dim",
            "logits scaled by head_dim**-0.5 instead of query_pre_attn_scalar**-0.5 (Gemma-2 9B: 256 != 224)",
            _same(SCALE, "s = self.head_dim"),
            cpu_select=MATH_CPU,
            gpu_paths=KERNEL_ONLY,
            gpu_select=MATH_GPU,
            note="visible only where query_pre_attn_scalar != head_dim (strategies draw both)",
        ),
        Mutant(
            "gqa_interleaved",
            "query head h reads kv head h % n_kv (interleaved) instead of h // n_groups (repeated)",
            _same_both(
                Edit(GQA_K, "K = K[:, None, :, :, :].expand(bsz, n_groups, n_kv_heads, kv_len, head_dim)"),
                Edit(GQA_V, "V = V[:, None, :, :, :].expand(bsz, n_groups, n_kv_heads, kv_len, head_dim)"),
            ),
            cpu_select=MATH_CPU,
            gpu_paths=("tests/model/test_unsloth_forward.py",),
            gpu_select="test_logits_and_loss",
            note="visible only with n_kv_heads > 1 and n_groups > 1: CPU geometries 4/2 and 8/2; on the GPU "
            "the kernel tests use one MQA geometry (4/1), so the GPU tier reaches it through the tiny "
            "model (4 heads, 2 kv heads)",
        ),
        Mutant(
            "batch_rows_mixed",
            "a per-row 4-D mask is applied to the wrong batch rows (rows rolled by one)",
            _same(MASK_4D, "A += causal_mask.roll(1, 0)[..., :actual_q_len, :kv_len]"),
            cpu_select=f"{KERNEL} and (oracle-4d or unsloth-eval)",
            gpu_paths=("tests/model/test_unsloth_consistency.py", "tests/kernel"),
            gpu_select=f"batch_row or ({CUDA_COMPILED} and (oracle-4d or unsloth-eval))",
            note="visible only with bsz > 1 and rows padded differently",
        ),
        Mutant(
            "eval_padding_dropped",
            "the per-call 4-D evaluation masks lose the padding (causal/window part only)",
            (
                Patch(
                    "llama",
                    "AttentionMaskConverter.to_4d",
                    (
                        Edit(
                            PAD_MERGE,
                            "torch.zeros_like(expanded_attn_mask, dtype = torch.bool), torch.finfo(dtype).min",
                        ),
                    ),
                ),
            ),
            cpu_select=f"{KERNEL} and unsloth-eval",
            gpu_paths=("tests/model/test_unsloth_consistency.py", "tests/kernel"),
            gpu_select=f"padded_row or ({CUDA_COMPILED} and unsloth-eval)",
            note="visible only with padding whose keys a real query can see (left padding, or q_len < kv_len)",
        ),
        Mutant(
            "q_offset_wrong",
            "a 2-D static mask sliced from row 0 instead of row kv_len - q_len when q_len != kv_len",
            _same(MASK_2D, "A += causal_mask[:actual_q_len, :kv_len]"),
            cpu_select=f"{KERNEL} and unsloth-static",
            gpu_paths=("tests/model/test_unsloth_consistency.py", "tests/kernel"),
            gpu_select=f"kv_cache_continuation or ({CUDA_COMPILED} and (oracle-2d or unsloth-static))",
            note="visible only with q_len < kv_len (a cached prefix)",
        ),
        Mutant(
            "softmax_input_dtype",
            "softmax taken in the input dtype (bf16/fp16) instead of float32",
            _both_kernels(
                (Edit(SOFTMAX_TRAIN, "A = torch.nn.functional.softmax(A, dim = -1)"),),
                (Edit(SOFTMAX_INFER, "A = torch_nn_functional_softmax(A, dim = -1)"),),
            ),
            cpu_select=MATH_CPU,
            gpu_paths=KERNEL_ONLY,
            gpu_select=MATH_GPU,
            note="PyTorch's softmax accumulates in float32 for bf16/fp16 inputs; see docs/mutants.md",
            known_gap="equivalent on the compiled kernel: inductor computes the softmax reduction in float32 "
            "whatever its dtype argument and rounds once to the input dtype, so the output is unchanged "
            "(measured: survives the ci examples in fp32/bf16/fp16). No output-comparison property can "
            "catch it; only a white-box check that the kernel's softmax is taken with dtype=float32 could",
        ),
    )
}


def get(name: str) -> Mutant:
    """A mutant by name; an unknown name raises :class:`UnknownMutant` listing the known ones."""
    try:
        return CATALOGUE[name]
    except KeyError:
        raise UnknownMutant(f"unknown mutant {name!r}; known mutants: {', '.join(CATALOGUE)}") from None


def describe(name: str) -> dict:
    """A JSON-able description of one mutant (catalogue listing, matrix JSON)."""
    m = get(name)
    return {
        "name": m.name,
        "summary": m.summary,
        "tiers": list(m.tiers),
        "patches": [p.label for p in m.patches],
        "cpu_select": m.cpu_select,
        "cpu_paths": list(m.cpu_paths),
        "gpu_paths": list(m.gpu_paths),
        "gpu_select": m.gpu_select,
        "expect": list(m.expect),
        "note": m.note,
        "known_gap": m.known_gap,
    }


if __name__ == "__main__":  # python -m gemma2_regress.mutants.catalogue: the catalogue as JSON
    print(json.dumps([describe(n) for n in CATALOGUE], indent=2))
