"""Files written whole or not at all (temporary file, then rename): state, reports, caches and locks,
so that a reader never sees half of one and an interrupted command leaves nothing half-written."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` (its folder made if missing), whole or not at all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> bool:
    """Write ``text`` (UTF-8) to ``path`` (its folder made if missing); ``False``, writing nothing, if it
    already holds it."""
    path, data = Path(path), text.encode()
    if path.is_file() and path.read_bytes() == data:
        return False
    write_bytes_atomic(path, data)
    return True


def write_json_atomic(path: str | os.PathLike, payload: object) -> None:
    """Write ``payload`` as indented JSON (dataclasses as dicts, anything else unknown as its ``str``)."""
    write_text_atomic(path, json.dumps(payload, indent=2, default=json_default) + "\n")


def json_default(o: object) -> object:
    """``json.dump``'s ``default``: dataclasses as dicts, anything else as its ``str``."""
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    return str(o)
