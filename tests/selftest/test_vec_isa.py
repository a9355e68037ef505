"""gemma2_regress.plugins.vec_isa: Inductor's CPU ISA probe runs once per compile cache folder and key, every
build check's outcome recorded; other processes replay the record into Inductor's own caches, with the same
answer and no build."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
import torch._inductor.config as inductor_config  # noqa: E402
from torch._inductor import cpu_vec_isa  # noqa: E402

from gemma2_regress import records  # noqa: E402
from gemma2_regress.plugins import vec_isa  # noqa: E402

KEY = {"torch": "t", "python": "p", "machine": "m", "cpu_flags": "f", "compiler": "c"}


class Probe:
    """A stand-in for Inductor's probe that counts its calls."""

    def __init__(self, passed: list[str], checks: dict[str, bool]) -> None:
        self.result, self.calls = (passed, checks), 0

    def __call__(self) -> tuple[list[str], dict[str, bool]]:
        self.calls += 1
        return self.result


def test_probed_once_then_read_back(tmp_path: Path) -> None:
    probe = Probe(["avx512", "avx2"], {"a": True, "b": True})
    first = vec_isa.recorded(tmp_path, KEY, probe)
    second = vec_isa.recorded(tmp_path, KEY, probe)
    assert first["source"].startswith("probed in ") and (second["source"], probe.calls) == ("recorded", 1)
    assert (second["passed"], second["checks"]) == (["avx512", "avx2"], {"a": True, "b": True})
    (path,) = (tmp_path / vec_isa.FOLDER).glob("*.json")
    assert json.loads(path.read_text())["key"] == KEY and second["path"] == str(path)


def test_another_key_a_broken_record_or_one_without_checks_probes_again(tmp_path: Path) -> None:
    probe = Probe(["avx2"], {"a": True})
    vec_isa.recorded(tmp_path, KEY, probe)
    assert vec_isa.recorded(tmp_path, {**KEY, "compiler": "another"}, probe)["source"] != "recorded"
    (path, _) = sorted((tmp_path / vec_isa.FOLDER).glob("*.json"))
    path.write_text("{cut")
    sources = [vec_isa.recorded(tmp_path, k, probe)["source"] for k in (KEY, {**KEY, "compiler": "another"})]
    assert sources.count("recorded") == 1
    assert probe.calls == 3
    # A record from before the checks were noted (it only says which ISAs passed) cannot be replayed.
    older = records.path(tmp_path, vec_isa.FOLDER, KEY)
    older.write_text(json.dumps({"key": KEY, "passed": ["avx2"], "candidates": ["avx2"]}))
    assert vec_isa.recorded(tmp_path, KEY, probe)["source"] != "recorded" and probe.calls == 4


def forget() -> None:
    """Inductor's probe as in a process that never asked: its per-process caches cleared."""
    cpu_vec_isa.valid_vec_isa_list.cache_clear()
    for isa in cpu_vec_isa.supported_vec_isa_list:
        for name in ("__bool__", "_VecISA__bool__impl"):
            cached = getattr(type(isa), name, None)
            if hasattr(cached, "cache_clear"):
                cached.cache_clear()


@pytest.fixture(scope="module")
def probed() -> tuple[list[str], dict[str, bool], Path]:
    """Inductor's real probe on this machine, once for the module: ``(passed, checks, the cache folder that
    holds the check libraries)``. In the run's own compile cache, where the plugin's probe built them before
    (a fresh folder costs a compile per check)."""
    folder = records.cache_folder()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(inductor_config.cpp, "vec_isa_ok", None)
        forget()
        try:
            yield (*vec_isa.inductor_probe(), folder)
        finally:
            forget()


@pytest.fixture
def inductor_fresh(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Inductor's probe as in a process that never asked (again so after the test: later tests ask for
    themselves), its cache folder in ``tmp_path``, and every build check counted in ``built``."""
    monkeypatch.setattr(inductor_config.cpp, "vec_isa_ok", None)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(vec_isa.USER_ENV, raising=False)
    built: list[str] = []
    real = cpu_vec_isa.VecISA.check_build
    monkeypatch.setattr(
        cpu_vec_isa.VecISA, "check_build", lambda isa, code: built.append(code) or real(isa, code)
    )
    forget()
    yield built
    forget()


def test_the_real_probe_then_its_replay_answer_the_same_without_a_build(probed, inductor_fresh) -> None:
    """On this machine: Inductor's own probe, recorded; then, in a process that has not asked, the replay gives
    the same ISAs in the same order without building anything. Inductor's settings are not touched."""
    passed, checks, _ = probed
    assert all(isinstance(ok, bool) for ok in checks.values())
    if passed:  # a passed ISA was built at least once
        assert checks
    assert vec_isa.replay(checks) == passed
    assert inductor_fresh == [] and inductor_config.cpp.vec_isa_ok is None
    assert [str(isa) for isa in cpu_vec_isa.valid_vec_isa_list()] == passed  # Inductor's own cache holds it


def test_a_replay_answers_from_the_record_and_builds_what_it_lacks(
    probed, inductor_fresh, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every check answered "no" by the record: no ISA is allowed, and nothing is built. A record that lacks
    a check has that one built for real (in the probe's folder, where its library is already built)."""
    passed, checks, folder = probed
    assert vec_isa.replay(dict.fromkeys(checks, False)) == [] and inductor_fresh == []
    if checks:
        forget()
        monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(folder))
        rest = list(checks)[1:]
        assert vec_isa.replay({k: checks[k] for k in rest}) == passed
        assert len(inductor_fresh) == 1


@pytest.mark.usefixtures("inductor_fresh")
def test_apply_probes_once_then_replays_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    first, path = vec_isa.apply(probe=Probe(["avx2"], {"a": True}))
    assert first.startswith("vec ISA: avx2 (probed in ") and first.endswith(" s, once per cache folder)")
    assert path and Path(path).is_file()
    replayed = []
    monkeypatch.setattr(vec_isa, "replay", lambda checks: replayed.append(checks) or ["avx2"])
    forget()  # as in another process
    again, same = vec_isa.apply(probe=Probe(["x"], {}))
    assert same == path and again == "vec ISA: avx2 (recorded, once per cache folder)"
    assert replayed == [{"a": True}]
    # A process whose Inductor asked before the plugin keeps that answer.
    with vec_isa._check_build(lambda real, isa, code: False):  # asked, cheaply
        cpu_vec_isa.valid_vec_isa_list()
    assert vec_isa.apply(probe=Probe(["x"], {})) == (
        "vec ISA: probed in this process before the suite's set-up",
        None,
    )


@pytest.mark.usefixtures("inductor_fresh")
def test_the_users_setting_is_left_alone() -> None:
    probe = Probe(["avx2"], {})
    line, path = vec_isa.apply({vec_isa.USER_ENV: "0"}, probe)
    assert line == f"vec ISA: {vec_isa.USER_ENV}=0 (set outside the suite)"
    assert (path, probe.calls, inductor_config.cpp.vec_isa_ok) == (None, 0, None)


def test_a_child_handed_the_record_replays_it(probed, tmp_path: Path) -> None:
    """The canary's child code replays the record it is handed: here one that says no check passed, so the
    child allows no ISA (what the record says, not what this CPU can do)."""
    from gemma2_regress import compile_check

    _, checks, _ = probed
    record = tmp_path / "record.json"
    record.write_text(json.dumps({"key": KEY, "passed": [], "checks": dict.fromkeys(checks, False)}))
    prelude = compile_check._CANARY.split("import torch")[0]
    code = (
        prelude
        + "from torch._inductor.cpu_vec_isa import valid_vec_isa_list; print(len(valid_vec_isa_list()))"
    )
    env = {k: v for k, v in os.environ.items() if k != vec_isa.USER_ENV}
    env.update({vec_isa.RECORD_ENV: str(record), "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    child = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert child.stdout.strip().splitlines()[-1] == "0", child.stderr[-500:]


def test_the_plugin_ran_here(pytestconfig: pytest.Config) -> None:
    assert pytestconfig.stash[vec_isa.LINE].startswith("vec ISA: ")


def test_records_travel_to_another_cache_and_a_local_one_wins(tmp_path: Path) -> None:
    here, there = tmp_path / "here", tmp_path / "there"
    vec_isa.recorded(here, KEY, Probe(["avx2"], {"a": True}))
    (here / vec_isa.FOLDER / "cut.json").write_text("{cut")  # skipped, not carried
    other = {**KEY, "cpu_flags": "g"}
    vec_isa.recorded(there, other, Probe([], {"a": False}))
    carried = [
        *records.export(here, vec_isa.FOLDER),
        {"key": other, "passed": ["avx2"], "checks": {"a": True}},
    ]
    assert records.import_(there, vec_isa.FOLDER, carried) == 1
    probe = Probe(["x"], {})
    assert vec_isa.recorded(there, KEY, probe)["passed"] == ["avx2"] and probe.calls == 0
    assert vec_isa.recorded(there, other, probe)["passed"] == []  # the record made there was kept
