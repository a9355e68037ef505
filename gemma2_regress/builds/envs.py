"""Isolated per-candidate environments for bisect and gate, kept in a size-limited LRU cache.

An ``Env`` is how to run Python "inside" one candidate: an interpreter plus directories put in
front of ``sys.path`` (PYTHONPATH). Two ways to build one:

- ``venv``     a virtual environment of its own with the release and the neighbours it accepts
               (``install.plan``), resolved as of the release's upload date where uv is used
               (``--exclude-newer``). With uv, files are hard-linked from uv's cache, so ten
               environments that share torch cost about one torch on disk.
- ``overlay``  packages installed with ``--target`` into ``<env>/site`` and run with a base
               interpreter (the one running this, by default): cheap, for wheel files and for a
               source checkout laid over a base release's environment.

The cache (``EnvCache``) keys an environment by the candidate and everything that shapes it; an
environment counts only once its ``ready.json`` is written (atomically, last), so an interrupted
build is rebuilt. Each use touches ``ready.json``; when the cache exceeds its limit the least
recently used environments are removed. Sizes count a hard-linked file as size / link count,
i.e. this environment's share of it.
"""

from __future__ import annotations

import configparser
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from gemma2_regress.atomic import write_json_atomic

CACHE_ROOT = Path(os.environ.get("GEMMA2_REGRESS_CACHE", Path.home() / ".cache" / "gemma2-regress")) / "envs"
DEFAULT_LIMIT_GB = float(os.environ.get("GEMMA2_REGRESS_ENV_CACHE_GB", "20"))
READY = "ready.json"


class BuildError(RuntimeError):
    """A candidate's environment could not be built (uninstallable build): the candidate is a skip."""


@dataclasses.dataclass
class Env:
    """An interpreter and the directories to put first on ``sys.path`` when running it."""

    python: str
    pythonpath: list[str] = dataclasses.field(default_factory=list)
    info: dict = dataclasses.field(default_factory=dict)

    def environ(
        self, extra: dict[str, str] | None = None, base: dict[str, str] | None = None
    ) -> dict[str, str]:
        """A process environment for this Env: PYTHONPATH = own dirs, then ``base``'s, then ``extra``."""
        env = dict(os.environ if base is None else base)
        env.update(extra or {})
        parts = [*self.pythonpath, *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]]
        if parts:
            env["PYTHONPATH"] = os.pathsep.join(parts)
        env.pop("VIRTUAL_ENV", None)
        return env

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> Env:
        return cls(python=d["python"], pythonpath=list(d.get("pythonpath", [])), info=dict(d.get("info", {})))


def uv_binary() -> str | None:
    """The uv executable if one is installed: beside this interpreter, on PATH, or the ``uv`` package's
    own (where nox looks too: nox's choice of venv backend and this choice of installer agree)."""
    near = Path(sys.executable).with_name("uv")
    if near.exists():
        return str(near)
    found = shutil.which("uv")
    if found:
        return found
    try:
        from uv import find_uv_bin  # a `pip install --user uv` whose folder is not on PATH

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        return None


def pick_uv(installer: str = "auto", find_uv: Callable[[], str | None] | None = None) -> str | None:
    """The uv executable to install with, or None for pip. ``installer``: ``uv`` (a ``BuildError`` where
    uv is not installed), ``pip`` (never uv) or ``auto`` (uv where installed). ``find_uv`` looks uv up
    (default ``uv_binary``)."""
    if installer not in ("auto", "uv", "pip"):
        raise ValueError(f"installer {installer!r}: use auto, uv or pip")
    uv = (find_uv or uv_binary)() if installer in ("auto", "uv") else None
    if installer == "uv" and uv is None:
        raise BuildError("uv is not installed; `pip install uv` or pass --installer pip")
    return uv


def _pip_setting(name: str) -> list[str]:
    """A list-valued pip setting (``find-links``, ``constraint``) as pip would read it: ``PIP_<NAME>``, else
    the last of pip's configuration files to set it (global, user, site, ``PIP_CONFIG_FILE``; in each,
    ``[install]`` over ``[global]``)."""
    env = os.environ.get("PIP_" + name.upper().replace("-", "_"))
    if env is not None:
        return env.split()
    given = os.environ.get("PIP_CONFIG_FILE")
    if given == os.devnull:
        return []
    home = Path.home()
    xdg = [d for d in os.environ.get("XDG_CONFIG_DIRS", "/etc/xdg").split(os.pathsep) if d]
    files = [*(Path(d) / "pip" / "pip.conf" for d in xdg), Path("/etc/pip.conf")]
    if not (given and Path(given).exists()):  # pip skips the user's files when PIP_CONFIG_FILE exists
        user = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")
        files += [home / ".pip" / "pip.conf", user / "pip" / "pip.conf"]
    files += [Path(sys.prefix) / "pip.conf", *([Path(given)] if given else [])]
    value = ""
    for path in files:
        config = configparser.ConfigParser(interpolation=None)
        try:
            config.read(path)
        except (configparser.Error, OSError, UnicodeDecodeError):
            continue  # pip would stop on a broken file; pip then fails loudly on its own
        for section in ("global", "install"):
            value = config.get(section, name, fallback=value)
    return value.split()


def pip_config_for_uv() -> list[str]:
    """What pip reads from its configuration and uv does not, as ``uv pip install`` options: pip's
    find-links (on this project's machines the local CPU torch wheel) and constraint files. pip's extra
    indexes are left out: uv takes a package from the first index that has it, not the best version."""
    links = [a for link in _pip_setting("find-links") for a in ("--find-links", link)]
    return links + [a for c in _pip_setting("constraint") for a in ("--constraint", c)]


def install_argv(
    python: str | None = None,
    *,
    target: Path | None = None,
    installer: str = "auto",
    find_links: Sequence[str] = (),
    offline: bool = False,
    find_uv: Callable[[], str | None] | None = None,
) -> list[str]:
    """The install command up to its requirements: ``uv pip install`` (with pip's own find-links and
    constraints, ``pip_config_for_uv``) or ``python -m pip install``, into ``target`` or the env of
    ``python`` (default: this interpreter). ``installer`` and ``find_uv`` as in ``pick_uv``."""
    uv = pick_uv(installer, find_uv)
    links = [a for fl in find_links for a in ("--find-links", fl)]
    if uv:
        # --compile-bytecode: .pyc files at install, as pip writes them. Without them every test process
        # compiles torch and transformers from source where PYTHONDONTWRITEBYTECODE is set (the runner sets
        # it): 4 s more per process start measured here, the CPU tier 21 % slower.
        argv = [uv, "pip", "install", "-q", "--compile-bytecode", *pip_config_for_uv(), *links]
        argv += ["--offline", "--no-index"] if offline else []
        return argv + (["--target", str(target)] if target else ["--python", python or sys.executable])
    argv = [python or sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", *links]
    argv += ["--no-index"] if offline else []
    return argv + (["--target", str(target)] if target else [])


def _run(argv: Sequence[str], what: str, **kw: object) -> subprocess.CompletedProcess:
    done = subprocess.run(list(argv), capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    if done.returncode:
        tail = [ln for ln in (done.stderr or done.stdout).strip().splitlines() if ln.strip()][-3:]
        raise BuildError(f"{what} failed: {' | '.join(tail) or 'no output'}")
    return done


def pip_install(
    args: Sequence[str],
    *,
    target: Path | None = None,
    python: str | None = None,
    installer: str = "auto",
    find_links: Sequence[str] = (),
    offline: bool = False,
    extra: Sequence[str] = (),
) -> float:
    """``pip install`` (or ``uv pip install``) ``args`` into ``target`` or the env of ``python``
    (``install_argv``); returns seconds taken. ``installer``: ``uv``, ``pip`` or ``auto`` (uv when installed)."""
    argv = install_argv(python, target=target, installer=installer, find_links=find_links, offline=offline)
    t0 = time.time()
    _run([*argv, *extra, *args], "install " + " ".join(str(a) for a in args)[:200])
    return time.time() - t0


def make_venv(path: Path, python: str = sys.executable, installer: str = "auto") -> str:
    """Create a virtual environment at ``path``; return its interpreter."""
    uv = pick_uv(installer)
    base = getattr(sys, "_base_executable", python) if python == sys.executable else python
    if uv:
        _run([uv, "venv", "-q", "-p", base, str(path)], f"uv venv {path}")
    else:
        _run([base, "-m", "venv", str(path)], f"python -m venv {path}")
    return str(path / "bin" / "python")


def tree_size(path: Path) -> int:
    """Bytes under ``path``, a hard-linked file counted as its size divided by its link count."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            total += st.st_size // max(1, st.st_nlink)
    return total


class EnvCache:
    """Environments under ``root``, one directory per key, at most ``limit_bytes`` in all (LRU)."""

    def __init__(self, root: Path | str = CACHE_ROOT, limit_bytes: int = int(DEFAULT_LIMIT_GB * 2**30)):
        self.root = Path(root)
        self.limit_bytes = int(limit_bytes)

    def dir(self, key: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "._-+" else "_" for c in key)
        return self.root / safe

    def ready(self, key: str) -> bool:
        return (self.dir(key) / READY).exists()

    def get(self, key: str, build: Callable[[Path], Env]) -> tuple[Env, bool, float]:
        """The environment for ``key``: (env, cache hit?, seconds spent building). ``build(dir)``
        fills an empty directory and returns the Env; a ``BuildError`` leaves nothing behind."""
        d = self.dir(key)
        marker = d / READY
        if marker.exists():
            os.utime(marker)
            return Env.from_json(json.loads(marker.read_text())), True, 0.0
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        t0 = time.time()
        try:
            env = build(d)
        except BaseException:
            shutil.rmtree(d, ignore_errors=True)
            raise
        spent = time.time() - t0
        env.info.setdefault("build_s", round(spent, 1))
        write_json_atomic(marker, env.to_json())
        self.evict(keep=key)
        return env, False, spent

    def entries(self) -> list[tuple[float, Path]]:
        """(last use, directory) of every ready environment, least recently used first."""
        if not self.root.exists():
            return []
        out = [((p / READY).stat().st_mtime, p) for p in self.root.iterdir() if (p / READY).exists()]
        return sorted(out)

    def evict(self, keep: str | None = None) -> list[str]:
        """Remove least recently used environments until the cache fits its limit; return their names.
        Half-built directories (no ready.json, older than an hour) are removed too."""
        removed = []
        if self.root.exists():
            for p in self.root.iterdir():
                if p.is_dir() and not (p / READY).exists() and time.time() - p.stat().st_mtime > 3600:
                    shutil.rmtree(p, ignore_errors=True)
        entries = self.entries()
        sizes = {p: tree_size(p) for _, p in entries}
        total = sum(sizes.values())
        for _, p in entries:
            if total <= self.limit_bytes:
                break
            if keep is not None and p == self.dir(keep):
                continue
            shutil.rmtree(p, ignore_errors=True)
            total -= sizes[p]
            removed.append(p.name)
        return removed
