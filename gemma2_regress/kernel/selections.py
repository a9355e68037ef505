"""Named pytest ``-k`` selections of the kernel tests, by the targets they feed (``kernel.targets``).

``tests/kernel/test_slow_kernel.py::test_small_windows`` runs once per target; a target's name says
which Unsloth kernel it calls and which masks it hands over (``oracle-4d``: the oracle's masks;
``unsloth-static`` / ``unsloth-eval``: Unsloth's own, built as in training or as in evaluation).
The kill matrix picks its fast selections from these, and the offline gate its default.
"""

KERNEL_TESTS = ("tests/kernel",)
KERNEL = "small_windows and slow_attention_softcapping"  # the compiled training/eval kernel (the 2024 path)
CUDA_COMPILED = "small_windows and cuda-slow_attention_softcapping"
WINDOW_CPU = f"{KERNEL} and (unsloth-static or unsloth-eval)"  # Unsloth's own sliding-window masks
WINDOW_GPU = f"window_boundary or ({CUDA_COMPILED} and (unsloth-static or unsloth-eval))"
MATH_CPU = f"{KERNEL} and oracle-4d"  # the kernel's arithmetic, fed the oracle's masks
# Both kernels (compiled training/eval and eager generation) with Unsloth's own masks: the gate's default.
UNSLOTH_MASKS = "small_windows and (unsloth-static or unsloth-eval)"
MATH_GPU = f"{CUDA_COMPILED} and oracle-4d"
# Unsloth's Gemma-2 layer on its flash-attn path, on CPU with the reference stand-in (Gemma2LayerTarget).
FLASH_LAYER_TESTS = ("tests/model/test_unsloth_flash_layer.py",)
FLASH_CPU = "flash_dense or flash_varlen"  # the layer's flash-attn calls (not its slow path)
