"""Before the first test, is torch.compile right here? If not, the run stops red with one line (a plugin).

Registered from conftest with ``pytest_plugins``. The canary (``compile_check``) starts in a child at
configure, so it runs while tests are collected and xdist's workers start; the controlling process
waits for it just before the first test. Where the compiler computes wrong results, the run ends with
exit status 3 and ``compile_check``'s reason: a red that names torch, not one that blames Unsloth's
compiled kernels for it. ``--no-compile-canary`` or ``GEMMA2_REGRESS_NO_COMPILE_CANARY=1`` skips the
check (``nox -s portability`` checked each setting already); ``--collect-only`` runs and xdist workers
never start it.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from gemma2_regress import compile_check

_CHILD = pytest.StashKey[subprocess.Popen]()
FLAG = "--no-compile-canary"
OFF_ENV = "GEMMA2_REGRESS_NO_COMPILE_CANARY"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("gemma2-regress").addoption(
        FLAG, action="store_true", help="do not check torch.compile with a canary before the first test"
    )


def pytest_configure(config: pytest.Config) -> None:
    off = config.getoption("no_compile_canary") or os.environ.get(OFF_ENV) == "1"
    if off or hasattr(config, "workerinput") or config.option.collectonly:
        return
    config.stash[_CHILD] = compile_check.start()


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> None:
    child = session.config.stash.get(_CHILD, None)
    if child is None:
        return
    why = compile_check.verdict(child)
    if why:
        fix = f"fix torch or unset the setting that breaks it; {FLAG} runs anyway"
        pytest.exit(
            f"{why}: Unsloth's compiled kernels cannot be judged on this machine ({fix})", returncode=3
        )


def pytest_unconfigure(config: pytest.Config) -> None:
    child = config.stash.get(_CHILD, None)
    if child is not None and child.poll() is None:  # the run ended before it was asked (a collection error)
        child.kill()
        child.communicate()
