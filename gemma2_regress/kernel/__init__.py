"""The attention-kernel level: one attention problem, drawn, built, run by a target and judged.

``cases`` (a ``Case`` and its tensors), ``strategies`` (Hypothesis draws at the window's boundaries),
``targets`` (the registry of kernels under test: Unsloth's, fed with oracle masks or its own),
``properties`` (kernel vs oracle, and metamorphic properties over any attention callable),
``selections`` (named ``-k`` selections of the kernel tests by target, for the kill matrix and the gate).
May import ``reference``, ``plugins.report``, ``unsloth_adapter``, ``unsloth_layer`` and ``versions``.
"""
