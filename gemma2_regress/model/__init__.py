"""The whole-model level: Unsloth's Gemma-2 against transformers' eager twin, past the 4096 window.

``tiny`` (the one tiny-config factory and its offline checkpoint), ``cases`` (token batches),
``session`` (what one run shares: the time split, where per-example lines go), ``targets`` (the
``ModelTarget`` interface and the run logic its implementations share), ``eager`` (transformers'
eager twin: the reference), ``fast`` (Unsloth's ``FastLanguageModel``: the target, and the trio the
GPU tier compares), ``properties`` (logits and loss, gradients, KV cache, batch row, padded row,
generation, window probe, evaluate), ``trainer`` (``Trainer.evaluate``, the path of the 2024 crash).
May import ``reference``, ``kernel.cases``, ``plugins.report``, ``unsloth_adapter`` and ``versions``.
"""
