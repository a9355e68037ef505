"""The pytest plugin: ``--mutant NAME`` (or env ``GEMMA2_REGRESS_MUTANT``) plants a catalogued bug for the run.

Registered in conftest.py (``pytest_plugins = ["gemma2_regress.mutants.plugin"]``). The mutant is
applied at ``pytest_configure`` in every process that runs tests (each xdist worker; not the xdist
controller, which runs none), kept on ``config.stash`` and undone at ``pytest_unconfigure``. Where
``GEMMA2_REGRESS_MUTANT_STATUS`` names a file, the plugin writes there whether the mutant was planted
(``{"mutant", "applied", "reason", "unsloth"}``): the kill matrix reads it to tell "not applicable to
this release" from a survivor. ``--mutant-no-shrink`` drops Hypothesis's shrink phase.

Imports ``catalogue``, ``patching``, ``gemma2_regress.atomic`` and ``gemma2_regress.unsloth_adapter``.
"""

from __future__ import annotations

import os

import pytest

from gemma2_regress.atomic import write_json_atomic
from gemma2_regress.mutants.catalogue import ENV, STATUS_ENV, UnknownMutant, get
from gemma2_regress.mutants.patching import NotApplicable, Planted, apply

PLANTED = pytest.StashKey[Planted]()  # the mutant this process planted, undone at unconfigure


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("gemma2-regress mutants")
    group.addoption(
        "--mutant",
        default=os.environ.get(ENV) or None,
        metavar="NAME",
        help=f"apply a planted bug to the installed Unsloth for this run (env {ENV}); see docs/mutants.md",
    )
    group.addoption(
        "--mutant-no-shrink",
        action="store_true",
        help="with --mutant: report the first failing example unshrunk (each shrink step may recompile)",
    )


def _no_shrink() -> None:
    """Keep the loaded Hypothesis profile but drop the shrink phase (``--mutant-no-shrink``)."""
    from hypothesis import Phase, settings

    current = settings.get_profile(settings._current_profile or "default")
    phases = tuple(p for p in current.phases if p is not Phase.shrink)
    settings.register_profile("gemma2-mutant-noshrink", parent=current, phases=phases)
    settings.load_profile("gemma2-mutant-noshrink")


def _runs_tests(config: pytest.Config) -> bool:
    """True in an xdist worker or a plain run; False in the xdist controller (it runs no tests)."""
    return hasattr(config, "workerinput") or not getattr(config.option, "numprocesses", None)


def _write_status(payload: dict) -> None:
    path = os.environ.get(STATUS_ENV)
    if path:
        write_json_atomic(path, payload)


def pytest_configure(config: pytest.Config) -> None:
    name = config.getoption("--mutant", default=None)
    if not name:
        return
    try:
        mutant = get(name)
    except UnknownMutant as exc:
        raise pytest.UsageError(str(exc)) from None
    if not _runs_tests(config):
        return
    if config.getoption("--mutant-no-shrink", default=False):
        _no_shrink()
    from gemma2_regress import unsloth_adapter  # imports torch: only where a mutant is planted

    try:
        config.stash[PLANTED] = apply(mutant.name)
    except NotApplicable as exc:
        version = unsloth_adapter.installed_version()
        _write_status({"mutant": name, "applied": False, "reason": str(exc), "unsloth": version})
        raise pytest.UsageError(f"mutant {name!r} is not applicable to unsloth {version}: {exc}") from None
    except unsloth_adapter.UnslothUnavailable as exc:
        _write_status({"mutant": name, "applied": False, "reason": str(exc), "unavailable": True})
        raise pytest.UsageError(f"mutant {name!r} needs Unsloth: {exc}") from None
    _write_status(
        {"mutant": name, "applied": True, "reason": "", "unsloth": unsloth_adapter.installed_version()}
    )


def pytest_unconfigure(config: pytest.Config) -> None:
    planted = config.stash.get(PLANTED, None)
    if planted is not None:
        planted.undo()
        del config.stash[PLANTED]


def pytest_report_header(config: pytest.Config) -> list[str]:
    name = config.getoption("--mutant", default=None)
    return [f"gemma2-regress MUTANT ACTIVE: {name} (a planted bug; failures are expected)"] if name else []
