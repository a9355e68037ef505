"""Old releases on the GPU runner (gemma2_regress/builds/old_releases.py, ``offline releases``,
gpu/old-releases.sh): the plan read and refused in one line, each release over its own stack of bundles in its
own folder, the verdicts read from a summary JSON, and the reports. No GPU and no Unsloth: the pytest run is
a stand-in that writes a summary JSON in the suite's schema from what it was given."""

from __future__ import annotations

import json
import os
import sys
import tarfile
import threading
from pathlib import Path

import pytest

from gemma2_regress.builds import old_releases as old
from gemma2_regress.builds.runner import Failure, Outcome

ROOT = Path(__file__).resolve().parents[2]
SLOW = "tests/kernel/test_slow_kernel.py::test_window_edge[cuda-{n}-{k}[unsloth-{m}]]"
DENSE = (
    "tests/model/test_unsloth_flash_layer.py::test_unpadded_prefill_takes_flash_dense[cuda-{n}-{s}-{d}-{lg}]"
)
PACKED = "tests/model/test_unsloth_flash_layer.py::test_packed_batch_takes_flash_varlen[cuda-{s}-{lg}]"
MISMATCH = Failure(
    "mismatch", "AssertionError: kernel_matches_oracle failed for x | mismatch: err(target)=0.16"
)


def slow_ids() -> list[str]:
    return [
        SLOW.format(n=n, k=k, m=m)
        for n in ("L15", "L16", "L17", "L33")
        for k in ("slow_attention_softcapping", "slow_inference_attention_softcapping")
        for m in ("static", "eval")
    ]


def dense_ids() -> list[str]:
    return [
        DENSE.format(n=n, s=s, d=d, lg=lg)
        for n in ("L15", "L16", "L17", "L33")
        for s in ("sliding", "global")
        for d in ("bfloat16", "float16")
        for lg in ("cap", "uniform")
    ]


def outcomes(bug: bool, *, other: str | None = None, drop: int = 0) -> list[Outcome]:
    """Every test of the selection: past-the-window ones mismatch where ``bug``; ``other``: the first
    control fails with this message instead; ``drop``: the last so many tests never ran."""
    out = []
    for nodeid in slow_ids() + dense_ids():
        path = "slow" if "window_edge" in nodeid else "flash"
        failing = bug and old._past(nodeid, path)
        out.append(Outcome(nodeid, "failed" if failing else "passed", (MISMATCH,) if failing else ()))
    if other is not None:
        out[0] = Outcome(out[0].nodeid, "failed", (Failure("mismatch", other),))
    out += [
        Outcome(PACKED.format(s=s, lg=lg), "passed")
        for s in ("sliding", "global")
        for lg in ("cap", "uniform")
    ]
    return out[: len(out) - drop] if drop else out


def test_window_mismatch_is_the_tolerance_rule_not_any_assertion() -> None:
    assert old.window_mismatch(Outcome("x", "failed", (MISMATCH,)))
    window = Failure("mismatch", "AssertionError: right bound 16: a query would see later keys")
    assert old.window_mismatch(Outcome("x", "failed", (window,)))  # flash-attn's window, checked by the test
    torch_assert = Failure("mismatch", "AssertionError: Torch not compiled with CUDA enabled")
    assert not old.window_mismatch(Outcome("x", "failed", (torch_assert,)))
    assert not old.window_mismatch(Outcome("x", "passed", (MISMATCH,)))


def test_past_the_window_means_w_plus_1_and_2w_plus_1_on_sliding_layers() -> None:
    assert old._past(SLOW.format(n="L17", k="slow_attention_softcapping", m="eval"), "slow")
    assert not old._past(SLOW.format(n="L16", k="slow_attention_softcapping", m="eval"), "slow")
    assert old._past(DENSE.format(n="L33", s="sliding", d="float16", lg="cap"), "flash")
    assert not old._past(DENSE.format(n="L33", s="global", d="float16", lg="cap"), "flash")
    assert sum(old._past(t, "slow") for t in slow_ids()) == 8
    assert sum(old._past(t, "flash") for t in dense_ids()) == 8


def test_verdicts() -> None:
    bad = old.classify(outcomes(bug=True), 1, "")
    assert bad["verdict"] == "bad" and bad["slow"].verdict == bad["flash"].verdict == "bad"
    assert bad["slow"].reason == "8 of 8 past-the-window tests mismatch; 8 of 8 controls pass"
    assert bad["flash"].reason == "8 of 8 past-the-window tests mismatch; 24 of 24 controls pass"
    assert bad["packed"] == "4 passed"
    good = old.classify(outcomes(bug=False), 0, "")
    assert (
        good["verdict"] == "good"
        and good["flash"].reason == "all 8 past-the-window tests and 24 controls pass"
    )
    # A failing control (here an AssertionError from torch, not the tolerance rule) makes the slow path unclear.
    unclear = old.classify(
        outcomes(bug=True, other="AssertionError: Torch not compiled with CUDA enabled"), 1, ""
    )
    assert unclear["slow"].verdict == "unclear" and "Torch not compiled" in unclear["slow"].reason
    assert unclear["verdict"] == "slow unclear, flash bad"
    # Cut at the time bound: the flash path's last tests never ran.
    cut = old.classify(outcomes(bug=False, drop=4 + 3), 2, "", timed_out=True)
    assert cut["slow"].verdict == "good" and cut["flash"].verdict == "incomplete"
    assert cut["flash"].reason == "29 of 32 tests ran, all passed" and cut["packed"] == "not run"
    partial_bad = old.classify(outcomes(bug=True, drop=4 + 3), 2, "", timed_out=True)
    assert partial_bad["flash"].verdict == "bad" and "(3 test(s) did not run)" in partial_bad["flash"].reason


def test_a_release_that_does_not_import_is_unusable_with_its_reason() -> None:
    why = "UnslothUnavailable: unsloth 2024.11.7 does not import here: ModuleNotFoundError: No module named 'xformers'"
    crash = Failure("crash:UnslothUnavailable@unsloth_adapter.py:load", why)
    tests = [Outcome(t, "failed", (crash,)) for t in slow_ids() + dense_ids()]
    v = old.classify(tests, 1, "")
    assert v["verdict"] == "unusable" and v["reason"] == f"does not import: {why}"
    log = "ImportError while loading conftest\nE   ImportError: tokenizers>=0.22.0,<=0.23.0 is required\n"
    collect = old.classify(None, 4, log)
    assert (
        collect["verdict"] == "unusable"
        and collect["reason"] == "ImportError: tokenizers>=0.22.0,<=0.23.0 is required"
    )
    cut = old.classify(None, -9, "compiling...\n", timed_out=True)
    assert (
        cut["verdict"] == "incomplete"
        and cut["reason"] == "stopped at its time bound before any test finished"
    )


def test_plan_reads_in_order_and_refuses_bad_lines_in_one_line(tmp_path: Path) -> None:
    plan = tmp_path / "plan.txt"
    plan.write_text("# comment\n2026.8.15  a  common  # the end\n\n2024.12.9 b common\n")
    assert old.read_plan(plan) == [
        old.Release("2026.8.15", ("a", "common")),
        old.Release("2024.12.9", ("b", "common")),
    ]
    assert [r.version for r in old.read_plan(plan, ["2024.12.9"])] == ["2024.12.9"]
    for text, needle in [
        ("2026.8.15\n", r"plan.txt:1: want 'VERSION BUNDLE \[BUNDLE...\]'"),
        ("latest a\n", "plan.txt:1: want"),
        ("2026.8.15 a/b\n", "plan.txt:1: want"),
        ("2026.8.15 a\n2026.8.15 b\n", "plan.txt:2: release 2026.8.15 is planned twice"),
        ("# nothing\n", "names no release"),
    ]:
        plan.write_text(text)
        with pytest.raises(old.PlanError, match=needle):
            old.read_plan(plan)
    plan.write_text("2026.8.15 a\n")
    with pytest.raises(old.PlanError, match=r"1999\.1 not in the plan .*; it has 2026\.8\.15"):
        old.read_plan(plan, ["1999.1"])
    with pytest.raises(old.PlanError, match="cannot read the plan"):
        old.read_plan(tmp_path / "absent.txt")


def test_the_repository_plan_names_bundles_that_have_pins() -> None:
    plan = old.read_plan(old.PLAN)
    assert len(plan) <= old.MAX_RELEASES
    for rel in plan:
        for name in rel.bundles:
            assert (ROOT / "gpu" / f"bundle-{name}.txt").is_file(), name


def bundle(path: Path, files: dict[str, str]) -> None:
    src = path.parent / f"src-{path.stem}" / "gpusite"
    for name, text in files.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(text)
    with tarfile.open(path, "w:gz") as tf:
        tf.add(src, arcname="gpusite")


def fake_pytest(bug_for: dict[str, bool], seen: list[dict]):
    """A ``bounded_run`` that records what it was given and writes the summary JSON the suite would."""
    lock = threading.Lock()

    def run(argv, seconds, log, env, *, cwd=None, grace=60.0):
        sites = env["PYTHONPATH"].split(os.pathsep)
        version = Path(cwd).name
        with lock:
            seen.append({"argv": argv, "sites": sites, "cwd": cwd, "env": env, "seconds": seconds})
        tests = outcomes(bug_for[version])
        payload = {
            "tests": {
                t.nodeid: {
                    "outcome": t.outcome,
                    "verdicts": [{"verdict": f.verdict, "message": f.message} for f in t.failures],
                }
                for t in tests
            }
        }
        Path(env["GEMMA2_REGRESS_REPORT"]).write_text(json.dumps(payload))
        Path(log).write_text("gemma2-regress: python=3.12.3 torch=2.11.0 unsloth=" + version + "\n")
        return 1 if bug_for[version] else 0

    return run


def test_each_release_runs_over_its_own_stack_in_its_own_folder(tmp_path: Path) -> None:
    bundles = tmp_path / "bundles"
    bundles.mkdir()
    bundle(bundles / "u-new.tgz", {"unsloth/__init__.py": "V = 'new'\n"})
    bundle(bundles / "u-old.tgz", {"unsloth/__init__.py": "V = 'old'\n"})
    bundle(bundles / "common.tgz", {"pytest_stub.py": ""})
    plan = [
        old.Release("2026.8.15", ("u-new", "common")),
        old.Release("2024.12.9", ("u-old", "common")),
        old.Release("2025.1.1", ("u-missing", "common")),
    ]
    s = old.Settings(bundles, tmp_path / "root", tmp_path / "work", tmp_path / "out", seconds=30, jobs=3)
    seen: list[dict] = []
    lines: list[str] = []
    records = old.run(
        plan,
        s,
        gpus=1,
        cores=16,
        bounded_run=fake_pytest({"2026.8.15": False, "2024.12.9": True}, seen),
        say=lines.append,
    )
    assert [r["version"] for r in records] == ["2026.8.15", "2024.12.9", "2025.1.1"]
    assert [r["verdict"] for r in records] == ["good", "bad", "unusable"]
    assert "no bundle" in records[2]["reason"] and "u-missing.tgz" in records[2]["reason"]
    by = {Path(x["cwd"]).name: x for x in seen}
    assert sorted(by) == ["2024.12.9", "2026.8.15"]  # the release whose bundle is missing never ran
    old_run = by["2024.12.9"]
    sites = old_run["sites"]
    assert (
        sites[0].endswith("u-old/gpusite") and sites[1].endswith("common/gpusite") and sites[2] == str(ROOT)
    )
    assert (Path(sites[0]) / "unsloth" / "__init__.py").read_text() == "V = 'old'\n"
    assert by["2026.8.15"]["sites"][1] == sites[1]  # the shared layer unpacked once, used by both
    env = old_run["env"]
    assert env["GEMMA2_REGRESS_KNOWN_ISSUES"] == "ignore" and env["GEMMA2_REGRESS_REQUIRE_GPU"] == "1"
    assert env["UNSLOTH_COMPILE_LOCATION"] == str(s.work / "2024.12.9" / "unsloth_compiled_cache")
    assert (
        env["TORCHINDUCTOR_COMPILE_THREADS"] == "5" and "CUDA_VISIBLE_DEVICES" not in env
    )  # 16 cores / 3 jobs
    argv = old_run["argv"]
    assert argv[:3] == [sys.executable, "-m", "pytest"] and "--require-gpu" in argv
    assert (
        str(ROOT / "tests/kernel/test_slow_kernel.py") in argv
        and "(window_edge or takes_flash) and cuda" in argv
    )
    assert old_run["seconds"] == 30
    out = sorted(p.name for p in s.out.iterdir())
    assert out == ["2024.12.9.log", "2025.1.1.log", "2026.8.15.log", "releases.json", "releases.md"]
    data = json.loads((s.out / "releases.json").read_text())
    assert [r["verdict"] for r in data["releases"]] == ["good", "bad", "unusable"]
    assert (
        data["releases"][1]["slow"]["reason"] == "8 of 8 past-the-window tests mismatch; 8 of 8 controls pass"
    )
    md = (s.out / "releases.md").read_text()
    assert "| 2024.12.9 | bad | bad: 8 of 8 past-the-window tests mismatch" in md
    assert old.exit_status(records) == 1  # one release unusable: a verdict to read
    assert old.exit_status(records[:2]) == 0
    assert lines[0].startswith("old releases: 3 release(s), 3 at a time, 30 s each, 5 compile thread(s) each")


def test_several_gpus_share_out_the_releases(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    bundles = tmp_path / "b"
    bundles.mkdir()
    bundle(bundles / "x.tgz", {"m.py": ""})
    plan = [old.Release(v, ("x",)) for v in ("2026.1.1", "2026.1.2", "2026.1.3")]
    s = old.Settings(bundles, tmp_path / "root", tmp_path / "work", tmp_path / "out", seconds=5, jobs=3)
    seen: list[dict] = []
    old.run(
        plan,
        s,
        gpus=2,
        cores=8,
        bounded_run=fake_pytest(dict.fromkeys(["2026.1.1", "2026.1.2", "2026.1.3"], False), seen),
        say=lambda _: None,
    )
    gpus = {Path(x["cwd"]).name: x["env"]["CUDA_VISIBLE_DEVICES"] for x in seen}
    assert gpus == {"2026.1.1": "0", "2026.1.2": "1", "2026.1.3": "0"}


def test_a_cpu_dry_run_reads_the_cpu_parameters(tmp_path: Path) -> None:
    assert old.selection("cpu") == (
        old.FLASH_TESTS,
        old.SLOW_TESTS,
        "-k",
        "(window_edge or takes_flash) and cpu",
    )
    assert old.selection("cuda") == old.SELECTION and "-m" in old.SELECTION
    on_cpu = [Outcome(t.nodeid.replace("[cuda-", "[cpu-"), t.outcome, t.failures) for t in outcomes(bug=True)]
    assert old.classify(on_cpu, 1, "", device="cpu")["verdict"] == "bad"
    assert old.classify(on_cpu, 1, "")["verdict"] == "incomplete"  # no cuda test ran
    s = old.Settings(tmp_path, tmp_path, tmp_path, tmp_path, seconds=1, jobs=1, device="cpu")
    argv = old.pytest_argv(s, tmp_path)
    assert "--require-gpu" not in argv and argv[-1] == "(window_edge or takes_flash) and cpu"
    env = old.environment([], tmp_path, tmp_path, 1, None, "cpu")
    assert "GEMMA2_REGRESS_REQUIRE_GPU" not in env and env["GEMMA2_REGRESS_TIER"] == "cpu"
