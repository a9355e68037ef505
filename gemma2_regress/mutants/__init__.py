"""Planted bugs in the *installed* Unsloth, and the kill matrix that proves the suite catches them.

``catalogue``   the mutants as data: each a named set of textual edits to real Unsloth functions, with
                the tests that reach it per tier; ``ENV`` / ``STATUS_ENV``, how a run names its mutant
                and reports whether it was planted. Imports only ``kernel.selections``.
``patching``    the engine: ``apply(name)`` edits the functions' source, recompiles and installs it
                wherever Unsloth holds the original, and returns a ``Planted`` handle whose ``undo()``
                restores everything; ``check(name)`` builds without installing; ``NotApplicable`` when
                a release lacks an anchor. Imports ``catalogue`` and ``unsloth_adapter``.
``plugin``      the pytest plugin (conftest.py's ``pytest_plugins``): ``--mutant NAME`` /
                ``GEMMA2_REGRESS_MUTANT`` plants it in every process that runs tests. Imports
                ``catalogue``, ``patching``, ``atomic`` and ``unsloth_adapter``.
``matrix``      what the kill matrix is: each mutant's selection per tier, a run's results as cells
                and a row status, the exit status, the printed table. Pure functions; imports
                ``catalogue`` and ``reference.verdicts``.
``killmatrix``  ``python -m gemma2_regress.mutants.killmatrix``: runs the suite once per mutant (pytest
                child processes that load the plugin) with ``Options`` from its command line, and
                writes the matrix. Imports ``catalogue`` and ``matrix`` (never ``patching`` or
                ``plugin``: it plants nothing itself), ``builds`` (the pytest runner) and the top-level ``argcheck``, ``atomic``, ``versions``, ``progress`` and ``gpu_check``.

Nothing else of the package imports this subpackage; conftest.py loads ``plugin``, noxfile.py reads
``catalogue`` and ``killmatrix``'s argument checks.
"""
