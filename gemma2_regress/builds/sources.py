"""Unsloth builds: what can be installed, and how an environment is made for one.

A ``Source`` lists ``Candidate`` builds oldest first and builds an environment (``envs.Env``) for
one into an empty folder of the environment cache:

- ``PyPIReleases``  Unsloth releases on PyPI, each in its own venv with the neighbours it accepts
                    (``install.plan``), resolved as of the release's upload date where uv is used;
- ``Wheelhouse``    a folder of ``unsloth-<version>-*.whl`` builds, each laid ``--no-deps`` over an interpreter;
- ``GitCheckout``   first-parent commits of an Unsloth checkout, each laid as source over a base environment.

A ``Spec`` is one build named on a command line (``installed``, a release version, an unpacked site
folder, a wheel file, a git ref of a checkout), checked without building anything: the gate's
``--candidate`` / ``--baseline`` by ``check_spec``, bisect's ``--base`` (``installed`` or a release
that ``PyPIReleases.pick`` finds) by the command line. ``environment`` is the one way from a spec to
an environment (from the cache when it is there).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

from packaging.version import InvalidVersion, Version

from gemma2_regress import toolslock
from gemma2_regress.builds import envs, install


class BisectError(RuntimeError):
    """Bad input to bisect or gate (an unknown build, a wrong-way range, an untestable end, a spec or
    option that cannot be used); the message names the problem and the fix."""


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One build: ``release`` (a version of a source), ``commit`` (sha of a checkout) or ``wheel``."""

    kind: str
    ref: str
    date: str = ""

    @property
    def label(self) -> str:
        return (
            self.ref[:12]
            if self.kind == "commit"
            else Path(self.ref).name
            if self.kind == "wheel"
            else self.ref
        )


class Source:
    """Lists candidates and builds an environment for one (into an empty cache directory)."""

    name = "source"
    empty_hint = "check the source"

    def candidates(self) -> list[Candidate]:
        raise NotImplementedError

    def build(self, cand: Candidate, d: Path) -> envs.Env:
        raise NotImplementedError

    def key(self, cand: Candidate) -> str:
        """The environment cache's name for ``cand``'s environment: everything that shapes it."""
        return f"{self.name}-{cand.ref}"

    def identity(self) -> str:
        """What, besides the build, shapes a test run's environment (a forced torch, a base environment):
        two sources with one identity test a build alike, so a bisect's workdir is named by it."""
        return self.name

    def pick(self, spec: str) -> Candidate:
        """A candidate by version/ref or by date (``YYYY-MM-DD``: the newest one up to that day)."""
        cands = self.candidates()
        if not cands:
            raise BisectError(f"no {self.name} builds to choose from; {self.empty_hint}")
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", spec):
            upto = [c for c in cands if c.date and c.date[:10] <= spec]
            if not upto:
                raise BisectError(
                    f"no {self.name} build on or before {spec}; the oldest is {cands[0].label} ({cands[0].date[:10]})"
                )
            return upto[-1]
        for c in cands:
            if spec in (c.ref, c.label) or (c.kind == "commit" and c.ref.startswith(spec)):
                return c
        near = ", ".join(c.label for c in cands[-5:])
        raise BisectError(
            f"{spec!r} is not a known {self.name} build (latest: {near}); pass a version or a YYYY-MM-DD date"
        )


class PyPIReleases(Source):
    """Unsloth releases on PyPI, each in its own venv with the neighbours it accepts.

    ``torch``: a torch version to use even where a release caps torch lower (recorded; it keeps a CPU
    bisect affordable: one local CPU torch for every release). ``installer``: uv | pip | auto."""

    name = "pypi"

    def __init__(self, torch: str | None = None, installer: str = "auto", find_links: tuple[str, ...] = ()):
        # pip's own find-links (PIP_FIND_LINKS, pip.conf) reach uv too: envs.install_argv
        self.torch, self.installer, self.find_links = torch, installer, find_links

    def candidates(self) -> list[Candidate]:
        return [
            Candidate("release", str(v), t.isoformat())
            for v, t in install.releases("unsloth")
            if not v.is_prerelease
        ]

    def key(self, cand: Candidate) -> str:
        return (
            f"pypi-{cand.ref}-torch{self.torch or 'auto'}-py{sys.version_info.major}{sys.version_info.minor}"
        )

    def identity(self) -> str:
        return f"{self.name}-torch{self.torch}" if self.torch else self.name

    def build(self, cand: Candidate, d: Path) -> envs.Env:
        try:
            steps = install.plan(cand.ref)
            wheels = [str(install.wheel(*r.split("=="))) for r in steps["unsloth"]]
        except install.InstallError as exc:
            raise envs.BuildError(str(exc)) from exc
        torch = f"torch=={self.torch}" if self.torch else steps["torch"][0]
        neighbours = [r for r in steps["neighbours"] if not r.startswith("torch==")]
        python = envs.make_venv(d / "venv", installer=self.installer)
        extra: list[str] = []
        uv = envs.pick_uv(self.installer)
        if uv:  # resolve the neighbours as of the release's upload date (+1 day), torch forced
            cutoff = (dt.datetime.fromisoformat(cand.date) + dt.timedelta(days=1)).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            )
            (d / "override.txt").write_text(torch + "\n")
            extra = ["--exclude-newer", cutoff, "--override", str(d / "override.txt")]
            # The suite's own tools are pinned (requirements/test.txt) and may be newer than the release.
            now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            for name in sorted({p.name for p in toolslock.read()}):
                extra += ["--exclude-newer-package", f"{name}={now}"]
        t = envs.pip_install(
            [torch, *neighbours, *install.TEST_TOOLS],
            python=python,
            installer=self.installer,
            find_links=self.find_links,
            extra=extra,
        )
        t += envs.pip_install(["--no-deps", *wheels], python=python, installer=self.installer)
        return envs.Env(
            python,
            [],
            {
                "unsloth": cand.ref,
                "zoo": steps["unsloth"][1],
                "torch": torch,
                "install_s": round(t, 1),
                "installer": "uv" if uv else "pip",
            },
        )


class Wheelhouse(Source):
    """A directory of Unsloth builds as wheels (``unsloth-<version>-*.whl``): nightlies kept locally,
    or a test fixture. Each is installed with ``--no-deps`` over the base interpreter (``python``),
    which must already hold the neighbours. Dates come from ``dates.json`` ({version: iso}) if present."""

    name = "wheelhouse"
    empty_hint = "put unsloth-<version>-*.whl files in the --wheelhouse folder"

    def __init__(self, path: str | Path, python: str = sys.executable, installer: str = "auto"):
        self.path, self.python, self.installer = Path(path), python, installer
        if not self.path.is_dir():
            raise BisectError(f"wheelhouse {path} is not a directory; pass a folder of unsloth-*.whl files")

    def candidates(self) -> list[Candidate]:
        dates = {}
        if (self.path / "dates.json").exists():
            dates = json.loads((self.path / "dates.json").read_text())
        out = []
        for w in self.path.glob("unsloth-*.whl"):
            ver = w.name.split("-")[1]
            try:
                Version(ver)
            except InvalidVersion:
                continue
            out.append(Candidate("release", ver, dates.get(ver, "")))
        return sorted(out, key=lambda c: Version(c.ref))

    def build(self, cand: Candidate, d: Path) -> envs.Env:
        wheel = next(self.path.glob(f"unsloth-{cand.ref}-*.whl"))
        t = envs.pip_install(
            ["--no-deps", str(wheel)],
            target=d / "site",
            python=self.python,
            installer=self.installer,
            offline=True,
        )
        return envs.Env(self.python, [str(d / "site")], {"install_s": round(t, 1)})


class GitCheckout(Source):
    """Commits of a local Unsloth checkout between two refs (first-parent history), each laid as
    source over a base environment (a release's venv, or the current interpreter).

    ``base_key`` names that base (``base_key``, the function): it is part of each commit's cache key and
    of the source's identity, so a commit laid over one base is never reused over another."""

    name = "git"

    def __init__(
        self, repo: str | Path, good: str, bad: str, base: Callable[[], envs.Env], base_key: str = ""
    ):
        self.repo, self.base, self.base_key = Path(repo), base, base_key
        if not (self.repo / ".git").exists() and not (self.repo / "HEAD").exists():
            raise BisectError(f"{repo} is not a git checkout; pass --repo PATH to an Unsloth clone")
        self.range = (good, bad)

    def _git(self, *args: str) -> str:
        done = subprocess.run(["git", "-C", str(self.repo), *args], capture_output=True, text=True)
        if done.returncode:
            first = (done.stderr.strip().splitlines() or ["no output"])[0][:200]
            raise BisectError(f"git {' '.join(args)} failed: {first}; check the ref and --repo {self.repo}")
        return done.stdout.strip()

    def candidates(self) -> list[Candidate]:
        a, b = (self.commit(r) for r in self.range)
        if self._git("merge-base", a, b) != a:  # not an ancestor: maybe the other way round
            if self._git("merge-base", a, b) == b:
                raise BisectError(
                    f"wrong-way range: {self.range[0]} is newer than {self.range[1]}; swap them (or use --find-fix)"
                )
            raise BisectError(
                f"{self.range[0]} is not an ancestor of {self.range[1]}; pick refs on one branch"
            )
        shas = self._git("rev-list", "--first-parent", "--reverse", f"{a}..{b}").split()
        out = []
        for sha in [a, *shas]:
            out.append(Candidate("commit", sha, self._git("show", "-s", "--format=%cI", sha)))
        return out

    def key(self, cand: Candidate) -> str:
        return f"{self.name}-{cand.ref}" + (f"-on-{self.base_key}" if self.base_key else "")

    def identity(self) -> str:
        return f"{self.name}-on-{self.base_key}" if self.base_key else self.name

    def commit(self, ref: str) -> str:
        """The full sha of ``ref`` (a branch, tag or sha) in the checkout."""
        return self._git("rev-parse", ref + "^{commit}")

    def pick(self, spec: str) -> Candidate:
        sha = self.commit(spec)
        return next(c for c in self.candidates() if c.ref == sha)

    def build(self, cand: Candidate, d: Path) -> envs.Env:
        src = d / "src"
        src.mkdir()
        tar = subprocess.run(
            ["git", "-C", str(self.repo), "archive", "--format=tar", cand.ref], capture_output=True
        )
        if tar.returncode:
            raise envs.BuildError(f"git archive {cand.ref} failed: {tar.stderr.decode()[:200]}")
        (d / "src.tar").write_bytes(tar.stdout)
        with tarfile.open(d / "src.tar") as tf:
            tf.extractall(src, filter="data") if sys.version_info >= (3, 12) else tf.extractall(src)
        (d / "src.tar").unlink()
        base = self.base()
        return envs.Env(base.python, [str(src), *base.pythonpath], {"commit": cand.ref})


# ---------------------------------------------------------------------------------------------------
# Builds named on a command line.


@dataclasses.dataclass(frozen=True)
class Spec:
    """A checked candidate or baseline: ``kind`` installed | site | wheel | git | release, ``ref`` the
    folder, wheel path, commit sha or version, ``date`` a release's upload time."""

    kind: str
    ref: str
    label: str
    date: str = ""

    @classmethod
    def release(cls, cand: Candidate) -> Spec:
        """A release picked from a source (``Source.pick``)."""
        return cls("release", cand.ref, cand.label, cand.date)


INSTALLED = Spec("installed", "", "installed")


def check_spec(spec: str, role: str, repo: str | None = None) -> Spec:
    """Check a ``--candidate`` / ``--baseline`` spec without building anything: the version is on
    PyPI, the wheel file exists, the git ref resolves in ``repo``, the site folder holds Unsloth.
    Raises ``BisectError`` or ``install.InstallError`` (no network) with a one-line message."""
    flag = f"--{role}"
    if spec == "installed":
        if importlib.util.find_spec("unsloth") is None:
            raise BisectError(
                f"{flag} installed: this interpreter ({sys.executable}) has no unsloth; install one or pass a version"
            )
        return INSTALLED
    path = Path(spec).expanduser()
    if path.is_dir():  # an unpacked site folder (an offline GPU bundle) over this interpreter
        if not (path / "unsloth" / "__init__.py").is_file():
            raise BisectError(
                f"{flag} {spec}: not an unpacked bundle (no unsloth/ package inside); unpack one "
                "(tar xzf .gpu/site.tgz -C /tmp, then pass /tmp/gpusite) or pass a version"
            )
        site = str(path.resolve())
        return Spec("site", site, f"{_site_version(site)} ({site})")
    if spec.endswith(".whl"):
        if not path.is_file():
            raise BisectError(f"{flag} {spec}: no such wheel file; pass a path to an unsloth-*.whl")
        if not path.name.startswith("unsloth-") or not zipfile.is_zipfile(path):
            raise BisectError(
                f"{flag} {spec}: not an unsloth wheel (a zip named unsloth-<version>-*.whl); rebuild or re-download it"
            )
        return Spec("wheel", str(path.resolve()), path.name)
    if repo and role == "candidate":
        src = GitCheckout(repo, spec, spec, base=lambda: envs.Env(sys.executable))
        try:
            sha = src.commit(spec)
        except BisectError:
            raise BisectError(
                f"{flag} {spec}: not a commit of {repo}; pass a branch, tag or sha there (git -C {repo} log)"
            ) from None
        return Spec("git", sha, f"{spec} ({sha[:12]})")
    if os.sep in spec or spec.startswith((".", "~")):
        raise BisectError(
            f"{flag} {spec}: no such file or folder; pass a version, a wheel file or an unpacked bundle folder"
        )
    try:
        version = install.resolve_version(spec)
        when = dict(install.releases("unsloth"))[Version(version)]
    except install.InstallError as exc:
        raise install.InstallError(f"{flag} {spec}: {exc}") from exc
    return Spec("release", version, version, when.isoformat())


def environment(
    spec: Spec,
    cache: envs.EnvCache,
    *,
    base: envs.Env | None = None,
    repo: str | None = None,
    torch: str | None = None,
    installer: str = "auto",
) -> tuple[envs.Env, float, bool]:
    """The environment of a checked spec (``check_spec``): (env, seconds to get it, cache hit).

    ``installed`` is this interpreter as it is; a site folder is put in front of this interpreter's
    path; a release gets its own venv (``PyPIReleases``, ``torch`` and ``installer`` as there); a wheel
    file is laid ``--no-deps`` over ``base`` (this interpreter when None) and a git ref of ``repo``
    over ``base`` (required), each cached under a key naming what it was laid over."""
    t0 = time.time()
    if spec.kind == "installed":
        return envs.Env(sys.executable, [], {"unsloth": "installed"}), 0.0, True
    if spec.kind == "site":
        return envs.Env(sys.executable, [spec.ref], {"site": spec.ref}), 0.0, True
    if spec.kind == "wheel":
        wheel = Path(spec.ref)
        over = base if base is not None else envs.Env(sys.executable, [], {"unsloth": "installed"})

        def build(d: Path) -> envs.Env:
            envs.pip_install(
                ["--no-deps", str(wheel)],
                target=d / "site",
                python=over.python,
                installer=installer,
            )
            return envs.Env(over.python, [str(d / "site"), *over.pythonpath], {"wheel": wheel.name})

        key = f"wheel-{wheel.name}-{int(wheel.stat().st_mtime)}-on-{_tag(over)}"
        env, hit, _ = cache.get(key, build)
        return env, round(time.time() - t0, 1), hit
    if spec.kind == "git":
        if base is None or repo is None:
            raise BisectError("a git ref is laid over the baseline's environment; pass --baseline")
        layer = base
        src = GitCheckout(repo, spec.ref, spec.ref, base=lambda: layer)
        cand = Candidate("commit", spec.ref)
        env, hit, _ = cache.get(f"git-{cand.ref}-on-{_tag(base)}", lambda d: src.build(cand, d))
        return env, round(time.time() - t0, 1), hit
    pypi = PyPIReleases(torch=torch, installer=installer)
    cand = Candidate("release", spec.ref, spec.date)
    env, hit, _ = cache.get(pypi.key(cand), lambda d: pypi.build(cand, d))
    return env, round(time.time() - t0, 1), hit


def base_key(spec: Spec, torch: str | None = None, installer: str = "auto") -> str:
    """A name for the environment ``environment(spec, ...)`` gives an ``installed`` or ``release`` spec,
    without building it: ``GitCheckout``'s ``base_key``."""
    if spec.kind == "installed":
        return f"installed-{_tag(envs.Env(sys.executable))}"
    if spec.kind == "release":
        return PyPIReleases(torch=torch, installer=installer).key(Candidate("release", spec.ref, spec.date))
    raise BisectError(f"a {spec.kind} spec is not a base for commits; pass 'installed' or a release")


def _site_version(site: str) -> str:
    found = sorted(Path(site).glob("unsloth-*.dist-info"))
    return "unsloth " + found[0].name[len("unsloth-") : -len(".dist-info")] if found else "unsloth ?"


def _tag(env: envs.Env) -> str:
    return hashlib.sha1(json.dumps([env.python, env.pythonpath]).encode()).hexdigest()[:10]
