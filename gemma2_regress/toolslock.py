"""The suite's own tools, pinned: reading the lock files under ``requirements/``.

Two lock files, both compiled by ``nox -s lock`` (uv, a universal resolve for Python 3.10 and newer):

``requirements/test.txt``
    the tools that live in the environment of the Unsloth under test: pytest, Hypothesis, pytest-xdist,
    packaging, matplotlib, and their dependencies, minus ``NO_EMIT``, the packages Unsloth's own stack
    also brings. It is passed to pip as a constraints file beside Unsloth's neighbours, so it fixes the
    tools and never torch, transformers or numpy. Its digest is printed in every run's header.
``requirements/tools.txt``
    the tools that run in environments of their own: nox, ruff, uv (the lock session), setuptools.

Both hold ``name==version`` lines, some with a ``python_full_version`` marker where a release dropped
Python 3.10. No hashes: a constraints file with hashes puts pip into hash-checking mode for the whole
resolve, which would then demand hashes for the floating subject too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from packaging.markers import Marker, default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

# A checkout's requirements/; in an installed wheel, the copy it carries beside the suite (setup.py).
_CHECKOUT_LOCKS = Path(__file__).resolve().parent.parent / "requirements"
LOCK_DIR = (
    _CHECKOUT_LOCKS
    if _CHECKOUT_LOCKS.is_dir()
    else Path(__file__).resolve().parent / "suite_root" / "requirements"
)
TEST_LOCK = LOCK_DIR / "test.txt"
TOOLS_LOCK = LOCK_DIR / "tools.txt"
# The Pythons the locks must serve (pyproject's requires-python and the GPU image's 3.12).
PYTHONS = ("3.10", "3.11", "3.12")
# Left out of test.txt: Unsloth's stack (torch, transformers, datasets/pandas) sets these, and
# matplotlib and pytest accept wide ranges of them.
NO_EMIT = ("numpy", "pillow", "python-dateutil", "six", "tzdata", "typing-extensions")


class LockError(ValueError):
    """A lock file is missing or holds a line that is not ``name==version [; marker]``."""


@dataclasses.dataclass(frozen=True)
class Pin:
    """One lock line: ``name`` canonicalised, ``version`` exact, ``marker`` the Pythons it is for."""

    name: str
    version: str
    marker: str

    def applies(self, env: dict[str, str] | None = None) -> bool:
        return not self.marker or Marker(self.marker).evaluate(env)  # type: ignore[arg-type]

    def line(self) -> str:
        return f"{self.name}=={self.version}" + (f" ; {self.marker}" if self.marker else "")


def parse(text: str, source: str = "<lock>") -> list[Pin]:
    """The pins of a lock file's text; comments, blank lines and ``# via`` annotations are skipped."""
    pins = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement as exc:
            raise LockError(f"{source}:{n}: {raw.strip()!r} is not a requirement ({exc})") from None
        spec = list(req.specifier)
        if len(spec) != 1 or spec[0].operator != "==" or "*" in spec[0].version or req.url or req.extras:
            raise LockError(
                f"{source}:{n}: {raw.strip()!r} is not an exact pin; regenerate with `nox -s lock`"
            )
        pins.append(Pin(canonicalize_name(req.name), spec[0].version, str(req.marker or "")))
    return pins


def read(*paths: Path | str) -> list[Pin]:
    """The pins of lock files (default: ``TEST_LOCK``); ``LockError`` if one is missing or malformed."""
    pins = []
    for path in paths or (TEST_LOCK,):
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise LockError(
                f"cannot read {path} ({exc.strerror}); restore it with git or run `nox -s lock`"
            ) from None
        pins += parse(text, str(path))
    return pins


def digest(pins: Iterable[Pin]) -> str:
    """``sha256:<12 hex>`` over the sorted pin lines: changes with any pin, not with comments."""
    body = "\n".join(sorted(p.line() for p in pins))
    return "sha256:" + hashlib.sha256(body.encode()).hexdigest()[:12]


def python_env(python: str, platform: str = "linux") -> dict[str, str]:
    """Marker variables of CPython ``python`` (``3.12``) on ``platform``, for evaluating lock lines."""
    env = dict(default_environment())
    env.update(python_version=python, python_full_version=f"{python}.0", sys_platform=platform)
    env["implementation_name"] = env["platform_python_implementation"] = "cpython"
    env["extra"] = ""
    return env


def for_env(pins: Iterable[Pin], env: dict[str, str] | None = None) -> dict[str, str]:
    """``{name: version}`` of the pins that apply to ``env`` (default: this interpreter)."""
    if env is None:
        env = dict(default_environment())
        env["extra"] = ""
    out: dict[str, str] = {}
    for p in pins:
        if p.applies(env):
            if p.name in out and out[p.name] != p.version:
                raise LockError(f"{p.name} is pinned twice for one Python ({out[p.name]}, {p.version})")
            out[p.name] = p.version
    return out


def drift(pins: Iterable[Pin], installed: Callable[[str], str] = importlib.metadata.version) -> list[str]:
    """``name installed != locked`` for each pin of this interpreter whose installed version differs.

    A pinned package that is not installed is no drift (matplotlib is optional, and a missing test
    tool fails the run by itself)."""
    out = []
    for name, want in sorted(for_env(pins).items()):
        try:
            have = installed(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        try:
            same = Version(have) == Version(want)
        except InvalidVersion:
            same = have == want
        if not same:
            out.append(f"{name} {have} != locked {want}")
    return out


_PIN = re.compile(r'"(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^";\s]+)(?P<marker>\s*;[^"]*)?"')
_LINE = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>\S+)", re.M)


def pinned_for(pins: list[Pin], name: str, marker: str = "") -> str:
    """The one locked version of ``name`` on every Python in ``PYTHONS`` where ``marker`` holds."""
    name = canonicalize_name(name)
    seen = set()
    for py in PYTHONS:
        env = python_env(py)
        if marker and not Marker(marker).evaluate(env):  # type: ignore[arg-type]
            continue
        seen.add(for_env(pins, env).get(name))
    if None in seen:
        raise LockError(
            f"{name} is not in the lock for every Python its pin covers; add it to requirements/*.in"
        )
    if len(seen) != 1:
        raise LockError(
            f"{name}{'; ' + marker if marker else ''} covers Pythons locked at different versions "
            f"{sorted(seen)}; split the pin by python_version"
        )
    return seen.pop()


def sync_pyproject(text: str, pins: list[Pin]) -> str:
    """``text`` with each quoted ``"name==version[; marker]"`` of a locked package set to the lock."""

    def fix(m: re.Match[str]) -> str:
        if canonicalize_name(m["name"]) not in {p.name for p in pins}:
            return m[0]
        marker = (m["marker"] or "").strip().lstrip(";").strip()
        return m[0].replace(f"=={m['version']}", f"=={pinned_for(pins, m['name'], marker)}", 1)

    return _PIN.sub(fix, text)


def sync_bundle(text: str, pins: list[Pin], python: str = "3.12") -> str:
    """``text`` (``name==version`` lines) with each locked package set to its version on ``python``."""
    versions = for_env(pins, python_env(python))

    def fix(m: re.Match[str]) -> str:
        want = versions.get(canonicalize_name(m["name"]))
        return f"{m['name']}=={want}" if want else m[0]

    return _LINE.sub(fix, text)
