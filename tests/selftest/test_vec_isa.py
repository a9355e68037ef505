"""gemma2_regress.plugins.vec_isa: Inductor's CPU ISA probe runs once per compile cache folder and key, and
``cpp.vec_isa_ok`` is set only where every candidate passed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
import torch._inductor.config as inductor_config  # noqa: E402

from gemma2_regress import records  # noqa: E402
from gemma2_regress.plugins import vec_isa  # noqa: E402

KEY = {"torch": "t", "python": "p", "machine": "m", "cpu_flags": "f", "compiler": "c"}


class Probe:
    """A stand-in for Inductor's probe that counts its calls."""

    def __init__(self, passed: list[str], candidates: list[str]) -> None:
        self.result, self.calls = (passed, candidates), 0

    def __call__(self) -> tuple[list[str], list[str]]:
        self.calls += 1
        return self.result


def test_probed_once_then_read_back(tmp_path: Path) -> None:
    probe = Probe(["avx512", "avx2"], ["avx512", "avx2"])
    first = vec_isa.recorded(tmp_path, KEY, probe)
    second = vec_isa.recorded(tmp_path, KEY, probe)
    assert first["source"].startswith("probed in ") and (second["source"], probe.calls) == ("recorded", 1)
    assert second["passed"] == ["avx512", "avx2"]
    (path,) = (tmp_path / vec_isa.FOLDER).glob("*.json")
    assert json.loads(path.read_text())["key"] == KEY


def test_another_key_or_a_broken_record_probes_again(tmp_path: Path) -> None:
    probe = Probe(["avx2"], ["avx2"])
    vec_isa.recorded(tmp_path, KEY, probe)
    assert vec_isa.recorded(tmp_path, {**KEY, "compiler": "another"}, probe)["source"] != "recorded"
    (path, _) = sorted((tmp_path / vec_isa.FOLDER).glob("*.json"))
    path.write_text("{cut")
    sources = [vec_isa.recorded(tmp_path, k, probe)["source"] for k in (KEY, {**KEY, "compiler": "another"})]
    assert sources.count("recorded") == 1
    assert probe.calls == 3


@pytest.fixture
def unset(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Inductor's switch unset and its cache folder in ``tmp_path``, both restored after the test."""
    monkeypatch.setattr(inductor_config.cpp, "vec_isa_ok", None)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(vec_isa.USER_ENV, raising=False)


@pytest.mark.usefixtures("unset")
def test_set_only_where_every_candidate_passed() -> None:
    failed = vec_isa.apply(probe=Probe(["avx2"], ["avx512", "avx2"]))
    assert inductor_config.cpp.vec_isa_ok is None and "avx2 of avx512, avx2 passed" in failed
    assert vec_isa.child_env() == {}  # a child probes for itself
    # The same key now reads that record back: still nothing set, and the probe is not run again.
    assert vec_isa.apply(probe=Probe(["avx512", "avx2"], ["avx512", "avx2"])) == failed


@pytest.mark.usefixtures("unset")
def test_all_passed_sets_the_switch(tmp_path: Path) -> None:
    line = vec_isa.apply(probe=Probe(["avx2"], ["avx2"]))
    assert inductor_config.cpp.vec_isa_ok is True and vec_isa.child_env() == {vec_isa.USER_ENV: "1"}
    assert line.startswith("vec ISA: avx2 (probed in ") and line.endswith(" s, once per cache folder)")


@pytest.mark.usefixtures("unset")
def test_the_users_setting_is_left_alone() -> None:
    probe = Probe(["avx2"], ["avx2"])
    assert (
        vec_isa.apply({vec_isa.USER_ENV: "0"}, probe)
        == f"vec ISA: {vec_isa.USER_ENV}=0 (set outside the suite)"
    )
    assert inductor_config.cpp.vec_isa_ok is None and probe.calls == 0


def test_inductors_probe_here(pytestconfig: pytest.Config) -> None:
    """The real probe: what passed is among the candidates, in their order; on x86-64 and Arm Linux there is
    at least one candidate (a torch that stops offering them untested would make the plugin set nothing
    useful). And the plugin ran in this process (its header line)."""
    import platform
    import sys

    passed, candidates = vec_isa.inductor_probe()
    assert [isa for isa in candidates if isa in passed] == passed
    if sys.platform == "linux" and platform.machine() in ("x86_64", "aarch64"):
        assert candidates
    assert pytestconfig.stash[vec_isa.LINE].startswith("vec ISA: ")


def test_a_child_given_child_env_has_the_switch_on() -> None:
    """The variable that ``child_env`` hands down is the switch ``apply`` sets, as torch reads it at import."""
    import os
    import subprocess
    import sys

    code = "import torch._inductor.config as c; print(c.cpp.vec_isa_ok)"
    env = {k: v for k, v in os.environ.items() if k != vec_isa.USER_ENV}
    child = subprocess.run(
        [sys.executable, "-c", code], env={**env, vec_isa.USER_ENV: "1"}, capture_output=True, text=True
    )
    assert child.stdout.strip().splitlines()[-1] == "True", child.stderr[-500:]


def test_records_travel_to_another_cache_and_a_local_one_wins(tmp_path: Path) -> None:
    here, there = tmp_path / "here", tmp_path / "there"
    vec_isa.recorded(here, KEY, Probe(["avx2"], ["avx2"]))
    (here / vec_isa.FOLDER / "cut.json").write_text("{cut")  # skipped, not carried
    other = {**KEY, "cpu_flags": "g"}
    vec_isa.recorded(there, other, Probe([], ["avx2"]))
    carried = [
        *records.export(here, vec_isa.FOLDER),
        {"key": other, "passed": ["avx2"], "candidates": ["avx2"]},
    ]
    assert records.import_(there, vec_isa.FOLDER, carried) == 1
    probe = Probe(["x"], ["x"])
    assert vec_isa.recorded(there, KEY, probe)["passed"] == ["avx2"] and probe.calls == 0
    assert vec_isa.recorded(there, other, probe)["passed"] == []  # the record made there was kept
