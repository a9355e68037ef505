"""Self-tests of the bisect logic, with no network: a wheelhouse of fake tiny "unsloth" builds of
known behaviour, a fake test selection, and the real bisect / sources / runner / env-cache code.

Fake builds (version: behaviour): 1.0-1.3 good; 1.4 not installable (a broken wheel); 1.5 does not
import (raises UnslothUnavailable, as the adapter does); 1.6 a mismatch; 1.7-1.9 a TypeError crash
(Hypothesis finds it at n >= 3); 2.0-2.1 fixed (good). The fake project's conftest.py
loads the suite's report plugin, which writes the per-test verdicts into the summary JSON.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import sys
import zipfile
from pathlib import Path

import pytest

from fixtures.gitrepo import commit_all, git
from gemma2_regress import cli
from gemma2_regress.builds import bisect, envs, runner, sources
from gemma2_regress.builds.runner import Failure, Outcome, Selection, classify
from gemma2_regress.builds.sources import BisectError

# The fake project records verdicts with the suite's own report plugin, as every run of the suite does.
CONFTEST = 'pytest_plugins = ["gemma2_regress.plugins.report"]\n'

BEHAVIOUR = {
    "1.0": "good",
    "1.1": "good",
    "1.2": "good",
    "1.3": "good",
    "1.4": "broken",
    "1.5": "noimport",
    "1.6": "mismatch",
    "1.7": "crash",
    "1.8": "crash",
    "1.9": "crash",
    "2.0": "good",
    "2.1": "good",
}

FAKE_INIT = """
BEHAVIOUR = {b!r}


class UnslothUnavailable(RuntimeError):
    pass


def attention(n):
    if BEHAVIOUR == "noimport":
        raise UnslothUnavailable("unsloth {v} does not import here")
    if BEHAVIOUR == "mismatch":
        raise AssertionError("kernel_matches_oracle failed\\n  mismatch: err(target)=1 err(baseline)=0.1 bound=0.2")
    if BEHAVIOUR == "crash" and n >= 3:
        mask = True
        return mask[:n]
    return n
"""

FAKE_TEST = """
from hypothesis import given, settings, strategies as st
import unsloth


@settings(max_examples=20, derandomize=True, database=None, deadline=None)
@given(n=st.integers(0, 10))
def test_attention(n):
    unsloth.attention(n)


def test_other():
    assert True
"""


def _record(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def make_wheel(folder: Path, version: str, behaviour: str, name: str = "unsloth") -> Path:
    """A minimal pure-Python wheel of ``name`` ``version`` (a broken file for ``broken``)."""
    path = folder / f"{name}-{version}-py3-none-any.whl"
    if behaviour == "broken":
        path.write_bytes(b"not a zip file")
        return path
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": FAKE_INIT.format(b=behaviour, v=version).encode(),
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: selftest\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    with zipfile.ZipFile(path, "w") as zf:
        records = []
        for n, data in files.items():
            zf.writestr(n, data)
            records.append(_record(n, data))
        zf.writestr(f"{dist}/RECORD", "\n".join([*records, f"{dist}/RECORD,,"]) + "\n")
    return path


@pytest.fixture(scope="session")
def fakes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A wheelhouse of fake builds, a fake test folder, one environment cache shared by the tests."""
    root = tmp_path_factory.mktemp("fakes")
    house = root / "wheelhouse"
    house.mkdir()
    for v, b in BEHAVIOUR.items():
        make_wheel(house, v, b)
    (house / "dates.json").write_text(
        json.dumps({v: f"2026-01-{i + 1:02d}T12:00:00+00:00" for i, v in enumerate(BEHAVIOUR)})
    )
    tests = root / "proj"
    tests.mkdir()
    (tests / "test_fake.py").write_text(FAKE_TEST)
    (tests / "conftest.py").write_text(CONFTEST)
    return {"root": root, "house": house, "proj": tests, "cache": root / "envcache"}


@pytest.fixture(autouse=True)
def _quiet_pytest(monkeypatch: pytest.MonkeyPatch, memo_runs: None) -> None:
    # The candidates' pytest runs need only Hypothesis's plugin; skipping the others makes them fast.
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


RUNS: dict[tuple, object] = {}


@pytest.fixture
def memo_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run each (build, project, selection, pattern) once per session: a fake build's result is
    deterministic, so the search logic is tested on real runs without repeating them."""
    real = runner.run

    def memo_run(env, sel, step_dir, **kw):
        key = (tuple(env.pythonpath), str(kw["cwd"]), tuple(sel.pytest_args), sel.signature)
        if key not in RUNS:
            RUNS[key] = real(env, sel, step_dir, **kw)
        return RUNS[key]

    monkeypatch.setattr(runner, "run", memo_run)


def make_bisect(
    fakes: dict[str, Path],
    good: str,
    bad: str,
    workdir: Path,
    *,
    find_fix: bool = False,
    signature: str | None = None,
    gpus: list[str] | None = None,
    log=None,
) -> bisect.Bisect:
    sel = Selection(["-p", "hypothesis", "test_fake.py"], signature)
    return bisect.Bisect(
        sources.Wheelhouse(fakes["house"]),
        good,
        bad,
        sel,
        envs.EnvCache(fakes["cache"], 2**30),
        workdir,
        cwd=fakes["proj"],
        find_fix=find_fix,
        gpus=gpus or [],
        log=log or (lambda s: None),
    )


def test_regression_found_past_skips(fakes, tmp_path):
    res = make_bisect(fakes, "1.0", "1.9", tmp_path).run()
    assert res["first_new"] == "1.6" and res["last_old"] == "1.3"
    by = {s["candidate"]: s for s in res["steps"]}
    assert by.get("1.4", {}).get("signature", "uninstallable") == "uninstallable"
    assert all(s["status"] == "skip" for c, s in by.items() if c in ("1.4", "1.5"))
    assert by["1.6"]["signature"] == "mismatch"
    assert res["compare"] == "https://github.com/unslothai/unsloth/compare/1.3...1.6"
    assert (tmp_path / "result.json").exists() and "Regression in unsloth 1.6" in (
        tmp_path / "result.md"
    ).read_text()
    # per step and in all: install and test seconds
    assert res["install_s"] == round(sum(s["install_s"] for s in res["steps"]), 1)
    assert res["test_s"] == round(sum(s["test_s"] for s in res["steps"]), 1)
    assert "| install s | test s |" in res["issue_text"]
    assert f"install {res['install_s']} s and tests {res['test_s']} s in all steps" in res["issue_text"]


def test_signature_narrows_what_bad_means(fakes, tmp_path):
    res = make_bisect(fakes, "1.3", "1.9", tmp_path, signature="crash:TypeError").run()
    assert res["first_new"] == "1.7"  # the 1.6 mismatch is not a TypeError crash: good for this search
    first = next(s for s in res["steps"] if s["candidate"] == "1.7")
    assert first["signature"].startswith("crash:TypeError")
    assert re.match(r"(Falsifying example|Failing test case): test_attention\(", res["falsifying_example"])
    assert "n=3" in res["falsifying_example"]
    assert "n=3" in res["issue_text"]
    assert "- Tested bad: " in res["issue_text"] and "- Tested good: " in res["issue_text"]


def test_steps_within_bound(fakes, tmp_path):
    res = make_bisect(fakes, "1.6", "1.9", tmp_path, signature="crash").run()
    assert res["first_new"] == "1.7"
    assert res["test_runs"] <= res["bound"] == 2 + 2  # 4 candidates: ends + ceil(log2 3)


def test_find_fix(fakes, tmp_path):
    res = make_bisect(fakes, "2.1", "1.7", tmp_path, find_fix=True).run()
    assert res["mode"] == "find-fix" and res["first_new"] == "2.0" and res["last_old"] == "1.9"


def test_only_skips_left_gives_a_range(fakes, tmp_path):
    res = make_bisect(fakes, "1.3", "1.6", tmp_path).run()
    assert (
        res["ambiguous"] == ["1.4", "1.5"]
        and res["first_new"] == "1.6"
        and res["exit"] == bisect.EXIT_AMBIGUOUS
    )


def test_wrong_way_ranges_are_errors(fakes, tmp_path):
    with pytest.raises(bisect.BisectError, match=r"wrong-way range: 1\.9 is newer than 1\.0"):
        make_bisect(fakes, "1.9", "1.0", tmp_path / "a").run()
    with pytest.raises(bisect.BisectError, match=r"wrong-way range.*looks like a fix: pass --find-fix"):
        make_bisect(fakes, "1.8", "2.1", tmp_path / "b").run()  # the "good" end is bad, the "bad" end good
    with pytest.raises(bisect.BisectError, match="both ends are good"):
        make_bisect(fakes, "1.0", "1.2", tmp_path / "c").run()
    with pytest.raises(bisect.BisectError, match="cannot be tested"):
        make_bisect(fakes, "1.0", "1.4", tmp_path / "d").run()


def test_dates_pick_releases(fakes):
    src = sources.Wheelhouse(fakes["house"])
    assert src.pick("2026-01-03").ref == "1.2"  # the newest build up to that day
    with pytest.raises(sources.BisectError, match="no wheelhouse build on or before"):
        src.pick("2025-12-01")


def test_resume_after_interruption(fakes, tmp_path):
    seen: list[str] = []

    def stop_after_two(line: str) -> None:
        seen.append(line)
        if sum(ln.startswith("[step") for ln in seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        make_bisect(fakes, "1.0", "1.9", tmp_path, log=stop_after_two).run()
    saved = json.loads((tmp_path / "state.json").read_text())["steps"]
    assert len(saved) == 2
    lines: list[str] = []
    res = make_bisect(fakes, "1.0", "1.9", tmp_path, log=lines.append).run()
    assert any("resuming" in ln and "2 step(s)" in ln for ln in lines)
    assert sum(ln.startswith("[step") for ln in lines) == res["test_runs"] - 2  # the two are not re-run
    assert res["first_new"] == "1.6"


def test_a_saved_bisect_of_other_code_is_not_resumed(fakes, tmp_path):
    """Steps saved before the tests changed are not mixed with steps of the new tests: the same bisect
    after an edit of the test folder stops before any step and says how to go on."""
    proj = tmp_path / "proj"
    shutil.copytree(fakes["proj"], proj)
    work = tmp_path / "work"

    def stop_after_one(line: str) -> None:
        if line.startswith("[step"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        make_bisect({**fakes, "proj": proj}, "1.0", "1.9", work, log=stop_after_one).run()
    assert len(json.loads((work / "state.json").read_text())["steps"]) == 1
    (proj / "test_fake.py").write_text((proj / "test_fake.py").read_text() + "\n# edited\n")
    again = make_bisect({**fakes, "proj": proj}, "1.0", "1.9", work)
    with pytest.raises(BisectError, match=r"other code or packages.*--fresh"):
        again.run()


def test_k_gpus_test_k_candidates_at_once(fakes, tmp_path):
    res = make_bisect(fakes, "1.6", "1.9", tmp_path, signature="crash", gpus=["0", "1"]).run()
    assert res["first_new"] == "1.7"
    assert {s["gpu"] for s in res["steps"]} == {"0", "1"}
    assert res["test_runs"] <= res["bound"]


def test_cli_exit_codes(fakes, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(fakes["proj"])
    args = ["bisect", "--wheelhouse", str(fakes["house"]), "--cache", str(fakes["cache"]), "--workdir"]
    sel = ["--", "-p", "hypothesis", "test_fake.py"]
    assert (
        cli.main([*args, str(tmp_path / "a"), "--good", "1.6", "--bad", "1.8", "--signature", "crash", *sel])
        == 0
    )
    assert "first bad: 1.7" in capsys.readouterr().out
    assert cli.main([*args, str(tmp_path / "b"), "--good", "1.9", "--bad", "1.0", *sel]) == 2
    assert "wrong-way range" in capsys.readouterr().err
    assert cli.main([*args, str(tmp_path / "d"), "--good", "1.0", "--bad", "1.9"]) == 2  # no selection


@pytest.mark.parametrize(
    ("behaviour", "find_fix", "code"), [("good", False, 0), ("crash", False, 1), ("noimport", True, 125)]
)
def test_script_mode_for_git_bisect_run(fakes, tmp_path, monkeypatch, behaviour, find_fix, code):
    checkout = tmp_path / "unsloth-clone"
    (checkout / "unsloth").mkdir(parents=True)
    (checkout / "unsloth" / "__init__.py").write_text(FAKE_INIT.format(b=behaviour, v="dev"))
    monkeypatch.chdir(fakes["proj"])
    argv = [
        "bisect",
        "--script",
        "--repo",
        str(checkout),
        "--workdir",
        str(tmp_path / "w"),
        *(["--find-fix"] if find_fix else []),
        "--",
        "-p",
        "hypothesis",
        "test_fake.py",
    ]
    assert cli.main(argv) == code


def test_git_commits_are_candidates(fakes, tmp_path):
    repo = tmp_path / "clone"
    (repo / "unsloth").mkdir(parents=True)

    git(repo, "init", "-q")
    for i, b in enumerate(["good", "good", "crash", "crash"]):
        (repo / "unsloth" / "__init__.py").write_text(FAKE_INIT.format(b=b, v=f"c{i}"))
        commit_all(repo, f"c{i} {b}")
    shas = git(repo, "rev-list", "--reverse", "HEAD").split()
    here = envs.Env(sys.executable)
    src = sources.GitCheckout(repo, shas[0], shas[-1], base=lambda: here)
    sel = Selection(["-p", "hypothesis", "test_fake.py"])
    b = bisect.Bisect(
        src,
        shas[0],
        shas[-1],
        sel,
        envs.EnvCache(tmp_path / "cache", 2**30),
        tmp_path / "w",
        cwd=fakes["proj"],
        log=lambda s: None,
    )
    res = b.run()
    assert res["first_new"] == shas[2][:12] and res["test_runs"] <= res["bound"]
    assert res["compare"].endswith(f"{shas[1]}...{shas[2]}")
    with pytest.raises(bisect.BisectError, match="wrong-way range"):
        sources.GitCheckout(repo, shas[-1], shas[0], base=lambda: here).candidates()


def test_another_base_or_torch_is_another_environment_and_workdir(tmp_path):
    """A commit laid over one base is not reused over another, nor a bisect's state: the cache key and
    the default workdir name the base (and a forced torch); without either they stay as they were."""
    (tmp_path / "clone" / ".git").mkdir(parents=True)
    release = sources.Spec.release(sources.Candidate("release", "2026.8.19", "2026-08-20T00:00:00"))
    keys = [
        sources.base_key(release, "2.13.0+cpu"),
        sources.base_key(release),
        sources.base_key(sources.INSTALLED),
    ]
    assert keys[0] == sources.PyPIReleases(torch="2.13.0+cpu").key(sources.Candidate("release", "2026.8.19"))
    sel, cand = Selection(["tests"]), sources.Candidate("commit", "a" * 40)
    gits = [sources.GitCheckout(tmp_path / "clone", "g", "b", base=lambda: None, base_key=k) for k in keys]
    assert len({g.key(cand) for g in gits}) == 3
    assert len({bisect.workdir_for(g, "g", "b", sel, False, tmp_path) for g in gits}) == 3
    assert sources.GitCheckout(tmp_path / "clone", "g", "b", base=lambda: None).key(cand) == f"git-{'a' * 40}"
    plain, forced = sources.PyPIReleases(), sources.PyPIReleases(torch="2.13.0+cpu")
    assert plain.identity() == "pypi" and forced.identity() != plain.identity()
    assert bisect.workdir_for(plain, "1", "2", sel, False, tmp_path) != bisect.workdir_for(
        forced, "1", "2", sel, False, tmp_path
    )
    with pytest.raises(bisect.BisectError, match="not a base"):
        sources.base_key(sources.Spec("site", "/x", "x"))


def test_script_exit_mapping():
    assert [bisect.script_exit(s, False) for s in ("good", "bad", "skip")] == [0, 1, 125]
    assert [bisect.script_exit(s, True) for s in ("good", "bad", "skip")] == [1, 0, 125]  # "new" = fixed


def _failed(nodeid: str, *found: str) -> Outcome:
    return Outcome(nodeid, "failed", tuple(Failure(v) for v in found))


def test_classify():
    sel = Selection(["x"], "crash:TypeError")
    sig = "crash:TypeError@flex_attention.py:slow_attention_softcapping"
    assert classify(sel, 1, [_failed("t", sig)])[0] == "bad"
    assert classify(sel, 1, [_failed("t", "mismatch")])[0] == "good"
    # Hypothesis found two distinct failures in one test: bad if either matches, and that one is quoted
    assert classify(sel, 1, [_failed("t", "mismatch", sig)]) == ("bad", f"1/1 tests {sig}: t", sig)
    assert classify(sel, 2, [])[0] == "skip"  # collection error: the build does not import
    assert classify(sel, 5, None)[0] == "skip"
    assert classify(sel, 1, [_failed("t", "crash:UnslothUnavailable@x.py:load")])[0] == "skip"
    assert classify(sel, 0, [Outcome("t", "passed"), Outcome("u", "xfailed")])[0] == "good"


def test_a_run_without_verdicts_is_unjudged_never_good():
    sel = Selection(["x"], "crash:TypeError")
    # no summary JSON at all: whatever pytest's exit status, the run cannot be judged
    assert classify(sel, 0, None) == (
        "skip",
        "unjudged: pytest exit 0 left no summary JSON with per-test verdicts",
        "unjudged",
    )
    assert classify(sel, 1, None)[0] == "skip"
    # a failed test without a recorded verdict: bad for "any failure", unknown for a narrower pattern
    bare = Outcome("t", "failed")
    assert bare.verdict == "unjudged"
    assert classify(Selection(["x"]), 1, [bare])[:2] == ("bad", "1/1 tests unjudged: t")
    status, reason, sig = classify(sel, 1, [bare, _failed("u", "mismatch")])
    assert (status, sig) == ("skip", "unjudged") and "1 failed test(s) have no recorded verdict" in reason
    status, _, sig = classify(sel, 1, [bare, _failed("u", "crash:TypeError@a.py:f")])
    assert (status, sig) == ("bad", "crash:TypeError@a.py:f")  # a matching failure still decides


def test_a_project_without_the_hook_is_unjudged(fakes, tmp_path):
    """The same fake test without the verdict hook: pytest passes it, the runner still says skip."""
    proj = tmp_path / "nohook"
    proj.mkdir()
    (proj / "test_fake.py").write_text(FAKE_TEST)
    env, _, _ = envs.EnvCache(fakes["cache"], 2**30).get(
        "wheelhouse-1.0",
        lambda d: sources.Wheelhouse(fakes["house"]).build(sources.Candidate("release", "1.0"), d),
    )
    res = runner.run(env, Selection(["-p", "hypothesis", "test_fake.py"]), tmp_path / "step", cwd=proj)
    assert (res.exit_code, res.status, res.signature) == (0, "skip", "unjudged")
    assert (tmp_path / "step" / "junit.xml").exists()  # JUnit is still written, for CI; it is not read
