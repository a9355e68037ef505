"""What a saved verdict was made of, as one digest: a state saved by an earlier run (``builds.reruns``'
portability and flake runs, ``builds.bisect``'s steps) is resumed only where the digest is the same.

``subject_digest(tree)`` covers this interpreter, the installed stack (``versions.versions()`` less the GPU
line), the CPU's flags, the suite's own package, and the tree the tests run from: its Python and config
files, hidden folders, caches and the run's own output folder aside; in git, its commit, its uncommitted
changes to such files and such files untracked (ignored ones aside). Any edit of a test, of the suite or of
its settings, another commit, another torch or Unsloth, is another digest.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from gemma2_regress import versions
from gemma2_regress.plugins.vec_isa import cpu_flags

# Never part of the tree's digest: what runs write beside the sources (caches, outputs, pytest's cache).
_NOT_SOURCE = {"__pycache__", "unsloth_compiled_cache", "reports", "node_modules"}
_SOURCE_SUFFIXES = (".py", ".toml", ".ini", ".cfg")


def subject_digest(tree: Path, out: Path | None = None) -> str:
    """The digest of what a run from ``tree`` that writes to ``out`` depends on (the module says what)."""
    stack = {k: v for k, v in versions.versions().items() if k != "gpu"}
    h = hashlib.sha256(json.dumps([sys.executable, stack, sorted(cpu_flags() or ())]).encode())
    package = Path(__file__).resolve().parents[1]
    h.update(_files_digest(package, sorted(package.rglob("*.py"))))
    tree = tree.resolve()
    skip = out.resolve() if out is not None else None
    git = _git_state(tree)
    if git is None:
        h.update(_files_digest(tree, _source_files(tree, skip)))
    else:
        head, changes, untracked = git
        h.update(head + changes)
        h.update(_files_digest(tree, [f for f in untracked if _is_source(tree, f, skip)]))
    return h.hexdigest()[:16]


def _is_source(tree: Path, f: Path, skip: Path | None) -> bool:
    parts = f.relative_to(tree).parts
    return (
        f.suffix in _SOURCE_SUFFIXES
        and not any(p.startswith(".") or p in _NOT_SOURCE for p in parts[:-1])
        and (skip is None or skip not in f.parents)
    )


def _source_files(tree: Path, skip: Path | None) -> list[Path]:
    """The Python and config files under ``tree`` (``_is_source``), without descending where none counts."""
    found: list[Path] = []
    for folder, dirs, files in os.walk(tree):
        dirs[:] = [
            d for d in dirs if not d.startswith(".") and d not in _NOT_SOURCE and Path(folder, d) != skip
        ]
        found += [Path(folder, f) for f in files if _is_source(tree, Path(folder, f), skip)]
    return sorted(found)


def _files_digest(root: Path, files: Sequence[Path]) -> bytes:
    h = hashlib.sha256()
    for f in files:
        if f.is_file():
            h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.digest()


def _git_state(tree: Path) -> tuple[bytes, bytes, list[Path]] | None:
    """The tree's git commit, a digest of its uncommitted changes to Python and config files, and its
    untracked files (ignored ones aside); None outside git."""

    def git(*args: str) -> bytes | None:
        try:
            proc = subprocess.run(["git", "-C", str(tree), *args], capture_output=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return proc.stdout if proc.returncode == 0 else None

    head = git("rev-parse", "HEAD")
    if head is None:
        return None
    changes = git("diff", "HEAD", "--binary", "--", *(f"*{suffix}" for suffix in _SOURCE_SUFFIXES))
    changes = hashlib.sha256(changes or b"").digest()
    names = (git("ls-files", "--others", "--exclude-standard", "-z") or b"").split(b"\0")
    return head, changes, sorted(tree / os.fsdecode(n) for n in names if n)
