"""Self-tests of ``records.cache_folder``: the folder torch's Inductor would use, found without torch where it can be."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from torch._inductor.runtime.cache_dir_utils import cache_dir

from gemma2_regress import records

ROOT = Path(__file__).resolve().parents[2]
CHILD = (
    "import sys\nfrom gemma2_regress import records\nprint(records.cache_folder(), 'torch' in sys.modules)\n"
)


def test_a_set_folder_is_torchs_own_and_is_found_without_importing_torch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative ``TORCHINDUCTOR_CACHE_DIR`` gives the folder torch's ``cache_dir()`` gives (absolute,
    made), and a child that asks imports no torch."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "cache/inductor")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, check=True)
    assert child.stdout.split() == [str(tmp_path / "cache" / "inductor"), "False"], (
        child.stdout + child.stderr
    )
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
