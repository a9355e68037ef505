"""The whole-model level: Unsloth's Gemma-2 against transformers' eager twin, past the 4096 window.

``tiny`` (the one tiny-config factory and its offline checkpoint), ``cases`` (token batches),
``targets`` (Unsloth's model and the eager reference behind one interface), ``properties`` (logits
and loss, gradients, KV cache, batch row, padded row, generation, window probe, evaluate),
``trainer`` (``Trainer.evaluate``, the path of the 2024 crash). May import ``reference``,
``kernel.cases``, ``plugins.report``, ``unsloth_adapter`` and ``versions``.
"""
