"""Before the first test, is torch.compile right here? If not, the run stops red with one line (a plugin).

Registered from conftest with ``pytest_plugins``. The canary (``compile_check``) starts in a child at
configure, so it runs while tests are collected and xdist's workers start; the controlling process
waits for it just before the first test. Where the compiler computes wrong results, the run ends with
exit status 3 and ``compile_check``'s reason: a red that names torch, not one that blames Unsloth's
compiled kernels for it. ``--no-compile-canary`` or ``GEMMA2_REGRESS_NO_COMPILE_CANARY=1`` skips the
check (``nox -s portability`` checked each setting already); ``--collect-only`` runs and xdist workers
never start it.

The child inherits the vector-ISA decision of ``plugins.vec_isa`` (``child_env``), so it does not run
Inductor's CPU probe on its own, and the run's last lines say how long the first test waited for it.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from gemma2_regress import compile_check
from gemma2_regress.plugins import vec_isa

_CHILD = pytest.StashKey[subprocess.Popen]()
_WAITED = pytest.StashKey[float]()
FLAG = "--no-compile-canary"
OFF_ENV = "GEMMA2_REGRESS_NO_COMPILE_CANARY"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("gemma2-regress").addoption(
        FLAG, action="store_true", help="do not check torch.compile with a canary before the first test"
    )


@pytest.hookimpl(trylast=True)  # after plugins.vec_isa has set what the child inherits
def pytest_configure(config: pytest.Config) -> None:
    off = config.getoption("no_compile_canary") or os.environ.get(OFF_ENV) == "1"
    if off or hasattr(config, "workerinput") or config.option.collectonly:
        return
    config.stash[_CHILD] = compile_check.start(vec_isa.child_env())


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> None:
    child = session.config.stash.get(_CHILD, None)
    if child is None:
        return
    start = time.perf_counter()
    why = compile_check.verdict(child)
    session.config.stash[_WAITED] = time.perf_counter() - start
    if why:
        fix = f"fix torch or unset the setting that breaks it; {FLAG} runs anyway"
        pytest.exit(
            f"{why}: Unsloth's compiled kernels cannot be judged on this machine ({fix})", returncode=3
        )


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    waited = config.stash.get(_WAITED, None)
    if waited is not None:
        terminalreporter.write_line(f"compile canary: the first test waited {waited:.1f} s for it")


def pytest_unconfigure(config: pytest.Config) -> None:
    child = config.stash.get(_CHILD, None)
    if child is not None and child.poll() is None:  # the run ended before it was asked (a collection error)
        child.kill()
        child.communicate()
