"""Unsloth builds, and runs of the suite against them.

``install`` (one release with the neighbours it accepts), ``envs`` (isolated environments, cached),
``sources`` (what can be installed and how: PyPI releases, a wheelhouse, commits of a checkout, and a
build named on a command line turned into an environment), ``runner`` (the one pytest runner: a
selection run in an environment, read per test from the run's summary JSON), ``bisect`` (first bad /
first fixed build, given a source and a runner), ``gate`` (candidate against baseline), ``nightly``
(gate, reruns of the failures, bisect of the stable ones, the issue text), ``reruns``
(the same selection under other CPU settings, or many times: portability and flakes), ``bundle``
(the offline bundle an air-gapped GPU runner installs from), ``offline`` (that runner's compile
cache and bounded tier, gate and old-release runs) and ``old_releases`` (old releases, each over its own
stack of bundles, through the window selections: a verdict each).
May import ``reference.verdicts``, ``plugins``, ``kernel.selections``, ``perf`` (the gate's timing), and the top-level
``argcheck``, ``gpu_check``, ``compile_check``, ``toolslock``, ``progress`` and ``atomic``; nothing imports it but ``mutants.killmatrix``
and ``cli``.
"""
