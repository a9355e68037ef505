"""Installing one Unsloth release with neighbours it accepts, for a CPU test environment.

Each Unsloth release caps torch / transformers / trl differently, so the set is resolved per
release: ``unsloth`` and ``unsloth_zoo`` are installed with ``--no-deps``, then the rest of their
declared requirements (read from PyPI's metadata for that exact release) are installed in one
resolve (uv's where uv is installed, else pip's: ``envs.install_argv``), leaving out what a CPU run
neither needs nor can load (torchvision, xformers, bitsandbytes, platform-specific wheels). torch is chosen first: the newest CPU-friendly build the
release admits (on this project's CI image torch 2.13.0 is a local CPU wheel).

Network access is PyPI's JSON API (``pypi_json``, release lists and dates) and ``pip download`` of
the two Unsloth wheels into a cache (their METADATA is the requirement list); a failure there is an ``InstallError`` with a
one-line message naming the problem and the fix.
"""

from __future__ import annotations

import datetime as dt
import functools
import http.client
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
import zipfile
from email.parser import Parser
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from gemma2_regress.builds import envs
from gemma2_regress.toolslock import TEST_LOCK

PYPI = "https://pypi.org/pypi"
# Per socket operation, not for the whole download: with no network the CLI fails in seconds, not minutes.
PYPI_TIMEOUT_S = 10.0
# Not needed to import Unsloth and run its pure-PyTorch attention on CPU, and heavy or unloadable there.
EXCLUDED = {"torch", "torchvision", "xformers", "bitsandbytes", "unsloth-zoo", "triton-windows"}
# torch builds tried in order; the first the release admits is used. 2.13.0 is a CPU wheel on CI.
TORCH_PREFERENCE = (
    "2.13.0",
    "2.14.1",
    "2.12.1",
    "2.11.0",
    "2.10.0",
    "2.9.1",
    "2.8.0",
    "2.7.1",
    "2.6.0",
    "2.5.1",
    "2.4.1",
)
# The suite's test tools, from the lock (requirements/test.txt, `nox -s lock`): passed with it as a
# constraints file, which pins them and their dependencies and none of Unsloth's neighbours. Outside a
# source checkout there is no lock: then ranges, and the run header says `tools_lock=none`.
TEST_TOOLS = (
    ("-c", str(TEST_LOCK), "pytest", "hypothesis", "pytest-xdist", "pytest-split")
    if TEST_LOCK.exists()
    else ("pytest>=8", "hypothesis>=6.100", "pytest-xdist>=3.5", "pytest-split>=0.9")
)
WHEEL_CACHE = (
    Path(os.environ.get("GEMMA2_REGRESS_CACHE", Path.home() / ".cache" / "gemma2-regress")) / "wheels"
)


class InstallError(RuntimeError):
    """A release cannot be resolved or installed; the message says why and what to do."""


@functools.cache
def pypi_json(project: str, version: str | None = None) -> dict:
    """PyPI's JSON metadata for a project (or one release of it); any failure is an ``InstallError``
    with a one-line message."""
    url = f"{PYPI}/{project}/json" if version is None else f"{PYPI}/{project}/{version}/json"
    try:
        with urllib.request.urlopen(url, timeout=PYPI_TIMEOUT_S) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise InstallError(
                f"{project} {version or ''} is not on PyPI; list releases with `pip index versions {project}`"
            ) from exc
        raise InstallError(
            f"PyPI answered {exc.code} for {url}; retry later or pass an installed version"
        ) from exc
    except (urllib.error.URLError, TimeoutError, OSError, http.client.HTTPException) as exc:
        why = " ".join(str(getattr(exc, "reason", exc) or type(exc).__name__).split())
        raise InstallError(
            f"cannot reach PyPI ({why}); connect to the network, or test an Unsloth already on this machine "
            "(nox: GEMMA2_REGRESS_UNSLOTH=installed or --no-venv; gate: 'installed', a wheel file or a bundle "
            "folder; bisect: --wheelhouse or --repo)"
        ) from exc
    except ValueError as exc:  # a truncated or non-JSON answer (a captive portal, a proxy's error page)
        raise InstallError(f"PyPI's answer for {url} is not JSON ({exc}); retry later") from exc


def releases(project: str = "unsloth") -> list[tuple[Version, dt.datetime]]:
    """Non-yanked releases with their upload time, oldest first."""
    data = pypi_json(project)
    out = []
    for ver, files in data["releases"].items():
        files = [f for f in files if not f.get("yanked")]
        if not files:
            continue
        try:
            v = Version(ver)
        except InvalidVersion:
            continue
        when = min(dt.datetime.fromisoformat(f["upload_time_iso_8601"].replace("Z", "+00:00")) for f in files)
        out.append((v, when))
    return sorted(out)


def resolve_version(spec: str) -> str:
    """``latest`` -> newest release; an exact version is checked against PyPI's release list."""
    known = releases("unsloth")
    if spec == "latest":
        return str(max(v for v, _ in known if not v.is_prerelease))
    try:
        want = Version(spec)
    except InvalidVersion:
        raise InstallError(f"{spec!r} is not a version; use e.g. 2026.10.9 or 'latest'") from None
    if want not in {v for v, _ in known}:
        near = ", ".join(str(v) for v, _ in known[-5:])
        raise InstallError(f"unsloth {spec} is not on PyPI; recent releases: {near}")
    return str(want)


def wheel(project: str, version: str) -> Path:
    """The release's wheel in the local cache, downloaded once with ``pip download --no-deps``."""
    WHEEL_CACHE.mkdir(parents=True, exist_ok=True)
    stem = f"{project.replace('-', '_')}-{version}-"
    found = [p for p in WHEEL_CACHE.glob(f"{stem}*.whl")]
    if not found:
        argv = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-d",
            str(WHEEL_CACHE),
            f"{project}=={version}",
        ]
        done = subprocess.run(argv, capture_output=True, text=True)
        found = [p for p in WHEEL_CACHE.glob(f"{stem}*.whl")]
        if done.returncode or not found:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise InstallError(
                f"could not download {project}=={version}: {last}; check the network or the version"
            )
    return found[0]


def requires_dist(project: str, version: str) -> list[str]:
    """``Requires-Dist`` lines of one release, read from its wheel's METADATA."""
    with zipfile.ZipFile(wheel(project, version)) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(zf.read(name).decode())
    return meta.get_all("Requires-Dist") or []


def _applicable(reqs: list[str]) -> list[Requirement]:
    env = default_environment()
    env["extra"] = ""
    out = []
    for line in reqs or []:
        r = Requirement(line)
        if r.marker is not None and not r.marker.evaluate(env):
            continue
        out.append(r)
    return out


def zoo_for(version: str) -> str:
    """The unsloth_zoo release paired with an unsloth release: the newest one that satisfies its
    requirement and was uploaded no later than a day after it."""
    spec = SpecifierSet()
    for r in _applicable(requires_dist("unsloth", version)):
        if canonicalize_name(r.name) == "unsloth-zoo":
            spec &= r.specifier
    when = dict(releases("unsloth"))[Version(version)]
    candidates = [v for v, t in releases("unsloth_zoo") if v in spec and t <= when + dt.timedelta(days=1)]
    if not candidates:
        raise InstallError(f"no unsloth_zoo release matches unsloth {version} ({spec}); pass one explicitly")
    return str(max(candidates))


def plan(version: str) -> dict[str, list[str]]:
    """The three install steps for ``version``: torch, the two Unsloth packages, their neighbours."""
    zoo = zoo_for(version)
    specs: dict[str, SpecifierSet] = {}
    for project, ver in (("unsloth", version), ("unsloth_zoo", zoo)):
        for r in _applicable(requires_dist(project, ver)):
            name = canonicalize_name(r.name)
            specs[name] = specs.get(name, SpecifierSet()) & r.specifier
    torch_spec = specs.get("torch", SpecifierSet())
    torch_pin = next((t for t in TORCH_PREFERENCE if Version(t) in torch_spec), None)
    if torch_pin is None:
        raise InstallError(f"unsloth {version} wants torch{torch_spec}; none of {TORCH_PREFERENCE} fits")
    rest = [f"{name}{spec}" for name, spec in sorted(specs.items()) if name not in EXCLUDED]
    return {
        "torch": [f"torch=={torch_pin}"],
        "unsloth": [f"unsloth=={version}", f"unsloth_zoo=={zoo}"],
        "neighbours": [*rest, f"torch=={torch_pin}"],
    }


def install(
    version: str,
    python: str = sys.executable,
    extra: tuple[str, ...] = TEST_TOOLS,
    *,
    installer: str = "auto",
) -> dict[str, list[str]]:
    """Install ``version`` into the environment of ``python`` (three installer calls, each printed).
    ``installer``: ``uv`` (``uv pip install``), ``pip`` or ``auto`` (uv where installed), as ``envs.install_argv``
    chooses; a failed call is a ``subprocess.CalledProcessError``."""
    steps = plan(version)
    try:
        command = envs.install_argv(python, installer=installer)
    except envs.BuildError as exc:
        raise InstallError(str(exc)) from exc
    name = "pip" if command[0] == python else "uv pip"
    for args in (
        steps["torch"],
        ["--no-deps"] + [str(wheel(*r.split("=="))) for r in steps["unsloth"]],
        steps["neighbours"] + list(extra),
    ):
        print("+", name, "install", " ".join(args), flush=True)
        subprocess.run([*command, *args], check=True)
    return steps


def main(argv: list[str] | None = None) -> int:
    """``python -m gemma2_regress.builds.install [--install] [VERSION]``: print (or carry out) the plan."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m gemma2_regress.builds.install", description=main.__doc__)
    ap.add_argument("version", nargs="?", default="latest", help="an unsloth release, or 'latest'")
    ap.add_argument("--install", action="store_true", help="install into this interpreter's environment")
    args = ap.parse_args(argv)
    try:
        version = resolve_version(args.version)
        steps = install(version) if args.install else plan(version)
    except InstallError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"unsloth": version, **steps}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
