"""gemma2_regress: a reproduction and regression suite for Unsloth's Gemma-2 attention path.

One test case flows through the subpackages in this order:

    kernel.strategies -> kernel.cases (inputs) -> kernel.targets (Unsloth) and reference.oracle
        -> reference.tolerance.compare -> reference.verdicts (ok | mismatch | nan | crash:<type>@<frame>)

``reference/``  what attention must compute and how close is close enough: masks, oracle, the
                tolerance rule, rounding bounds, verdicts. Imports nothing else of the package.
``kernel/``     the attention-kernel level: cases, strategies, targets, property functions.
``model/``      the whole-model level: the tiny Gemma-2, its cases, targets, properties, the trainer harness.
``mutants/``    planted bugs in the real Unsloth and the kill matrix that proves the tests catch them.
``builds/``     Unsloth builds and runs of the suite against them: install, environments, the one
                pytest runner, bisect, gate, the portability runs and the flake census.
``plugins/``    pytest plugins every run loads: the report, the suite's cost, test order, strict xfails
                for recorded upstream bugs, ``--require-gpu``.
``perf/``       the performance benchmark and its gate.
``standins/``   stand-ins for dependencies that cannot be installed here (flash-attn's interface in plain
                PyTorch), proven in tests/oracle, importable as themselves only inside a test process.

At the top: ``unsloth_adapter`` (the one door to Unsloth: the only module that imports ``unsloth``),
``unsloth_flash`` (Unsloth's flash-attn path, given on any device) and ``unsloth_layer`` (one Gemma-2
layer's attention run through Unsloth), both working on the handle ``unsloth_adapter.load()`` returns,
``suite`` (where the suite's tests are, in a checkout or the installed wheel, and what a tier is),
``versions``, ``gpu_check``, ``toolslock``, ``argcheck``, ``atomic``, ``progress`` (done / total and time left on long
work) and ``cli`` (the ``gemma2-regress`` command).
"""

__version__ = "0.1.0"
