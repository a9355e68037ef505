"""Records kept in the compile cache folder: facts about this machine and stack, each keyed by what decides it.

A record is a JSON object with a ``key`` (a dict of strings: the torch build, the compiler, the GPU, ...)
and whatever it records. Each kind lives in its own subfolder of Inductor's cache folder, one file per
key, named by the key's digest: ``plugins.vec_isa``'s probe outcome, ``plugins.compile_canary``'s pass,
``plugins.gpu_budget``'s test peaks and seconds, ``gpu_check``'s Unsloth import that passed, the noxfile's
whole GPU tier that passed (the next run is warm: ``suite.workers_per_gpu``). A record whose key differs
from this machine's is never used, so records can travel with a packed compile cache
(``builds.portable_cache``) to a runner of the same image.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

from gemma2_regress.atomic import write_json_atomic
from gemma2_regress.suite import COMPILE_CACHE_ENV

# The kinds, each a subfolder of the compile cache folder.
VEC_ISA = "gemma2-regress-vec-isa"  # plugins.vec_isa: which CPU vector ISAs Inductor may use
CANARY = "gemma2-regress-canary"  # plugins.compile_canary: a passed canary
GPU_PEAKS = "gemma2-regress-gpu-peaks"  # plugins.gpu_budget: each GPU test's peak memory and seconds
UNSLOTH_IMPORT = "gemma2-regress-unsloth-import"  # gpu_check: this stack imported Unsloth
GPU_TIER_PASSED = "gemma2-regress-gpu-tier-passed"  # noxfile: a whole gpu tier passed on this stack (warm)


def cache_folder() -> Path:
    """Inductor's cache folder in this process (``TORCHINDUCTOR_CACHE_DIR`` or torch's default): where the
    records live. Made if missing, and the variable set to it, as torch's ``cache_dir()`` does.

    Where the variable is set (every tier sets it) torch is not imported: importing torch's helper imports
    torch and Inductor (2 s of CPU), which a process that only reads records, such as an xdist controller
    or a GPU plugin's self-test run, does not otherwise need."""
    if os.environ.get(COMPILE_CACHE_ENV):
        folder = os.path.abspath(os.environ[COMPILE_CACHE_ENV])
        os.environ[COMPILE_CACHE_ENV] = folder
        os.makedirs(folder, exist_ok=True)
        return Path(folder)
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return Path(cache_dir())


def path(folder: Path, kind: str, key: dict[str, str]) -> Path:
    """Where the record of ``key`` lives in the compile cache ``folder``, under the subfolder ``kind``."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return folder / kind / f"{digest}.json"


def load(file: Path) -> dict | None:
    """The record in ``file``, or None where it is missing, cut short or not a record (no ``key`` dict)."""
    try:
        record = json.loads(file.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("key"), dict) else None


def read(file: Path, key: dict[str, str]) -> dict | None:
    """The record in ``file`` where it is one for ``key``, else None (missing, cut short, another key)."""
    record = load(file)
    return record if record is not None and record["key"] == key else None


def holds(file: Path, key: Mapping[str, str]) -> bool:
    """Whether ``file`` holds a record for ``key``; never for an empty key (a probe that saw nothing)."""
    return bool(key) and read(file, dict(key)) is not None


def export(folder: Path, kind: str) -> list[dict]:
    """Every readable record of ``kind`` in the compile cache ``folder`` (a cut or foreign file is skipped)."""
    return [r for r in map(load, sorted((folder / kind).glob("*.json"))) if r is not None]


def import_(folder: Path, kind: str, records: list[dict]) -> int:
    """Write each of ``records`` into the compile cache ``folder`` where it has none of ``kind`` for that key
    (a record made here wins); how many were written."""
    written = 0
    for record in records:
        target = path(folder, kind, record["key"])
        if not target.exists():
            write_json_atomic(target, record)
            written += 1
    return written
