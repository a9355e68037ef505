"""Self-tests of ``records.cache_folder``: the folder torch's Inductor would use, found without torch where it can be."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from torch._inductor.runtime.cache_dir_utils import cache_dir

from fixtures import child
from gemma2_regress import records

CHILD = """
import json, sys
from gemma2_regress import records
print(json.dumps({"folder": str(records.cache_folder()), "torch": "torch" in sys.modules}))
"""


def test_a_set_folder_is_torchs_own_and_is_found_without_importing_torch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative ``TORCHINDUCTOR_CACHE_DIR`` gives the folder torch's ``cache_dir()`` gives (absolute,
    made), and a child that asks imports no torch."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "cache/inductor")
    assert child.run_json(CHILD) == {"folder": str(tmp_path / "cache" / "inductor"), "torch": False}
    ours = records.cache_folder()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(ours) and ours.is_dir()  # set, as torch sets it
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "cache/inductor")
    assert ours == Path(cache_dir())


def test_without_the_variable_it_is_torchs_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Set, then removed: the test's end puts back the value from before it, or none, over what torch sets.
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "")
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # torch's default lives in the temporary folder
    monkeypatch.setattr("tempfile.tempdir", None)
    folder = records.cache_folder()
    assert folder.parent == tmp_path and folder.name.startswith("torchinductor_"), folder
