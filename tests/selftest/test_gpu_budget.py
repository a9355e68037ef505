"""The GPU memory budget: claims wait their turn and never sum past the GPU, under xdist too."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from gemma2_regress import records
from gemma2_regress.plugins import gpu_budget
from gemma2_regress.plugins.gpu_budget import Ledger, Peaks

ROOT = Path(__file__).resolve().parents[2]


def _ledger(tmp_path: Path, capacity: float, dead: set[int] | None = None) -> Ledger:
    dead = dead if dead is not None else set()
    return Ledger(tmp_path / "gpu.json", capacity, alive=lambda pid: pid not in dead, poll_s=0.01)


def _claim_in_thread(ledger: Ledger, pid: int, gib: float, done: list) -> threading.Thread:
    thread = threading.Thread(
        target=lambda: done.append((pid, ledger.claim(pid, gib, base=1.0))), daemon=True
    )
    thread.start()
    return thread


def _queued(ledger: Ledger, pid: int, timeout_s: float = 10.0) -> None:
    """Wait until ``pid`` waits in the ledger's line: a thread's first look at the ledger may come late on a
    busy machine, and the order of asking is what these tests are about."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            if str(pid) in json.loads(ledger.path.read_text()).get("queue", []):
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.01)
    raise AssertionError(f"process {pid} never joined the line")


def _granted(ledger: Ledger) -> list[str]:
    """The processes holding a claim, in the order they were granted (the ledger keeps that order). Not the
    order of the threads' own records: a thread may be descheduled between its grant and its append."""
    return list(json.loads(ledger.path.read_text())["claim"])


def test_a_claim_waits_until_it_fits_and_comes_in_turn(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path, capacity=100.0)
    assert ledger.claim(1, 60.0, base=1.0)[0] == 60.0
    done: list = []
    big = _claim_in_thread(ledger, 2, 60.0, done)  # 1 + 60 + 1 + 60 > 100: waits for process 1
    _queued(ledger, 2)
    small = _claim_in_thread(ledger, 3, 10.0, done)  # would fit now, but asked after process 2
    _queued(ledger, 3)
    time.sleep(0.1)  # it keeps looking: still in line
    assert done == [] and ledger.held() == {"1": 61.0, "2": 1.0, "3": 1.0}
    ledger.release(1, base=1.0)
    big.join(5)
    small.join(5)
    assert sorted(pid for pid, _ in done) == [2, 3] and _granted(ledger) == ["2", "3"]
    assert ledger.held() == {"1": 1.0, "2": 61.0, "3": 11.0}


def test_a_small_claim_passes_a_waiting_large_one_until_that_has_waited_long(tmp_path: Path) -> None:
    now = [1000.0]
    ledger = Ledger(tmp_path / "gpu.json", 100.0, alive=lambda pid: True, poll_s=0.01, clock=lambda: now[0])
    ledger.claim(1, 60.0, base=1.0)
    done: list = []
    big = _claim_in_thread(ledger, 2, 60.0, done)  # waits for process 1
    _queued(ledger, 2)
    _claim_in_thread(ledger, 3, gpu_budget.SMALL_GIB, done).join(5)  # passes it: there is room
    assert [pid for pid, _ in done] == [3], "a small claim waited behind a large one that had just asked"
    done.clear()
    ledger.release(3, base=1.0)
    now[0] += gpu_budget.HOLD_S  # the large claim has now waited HOLD_S
    small = _claim_in_thread(ledger, 3, gpu_budget.SMALL_GIB, done)
    _queued(ledger, 3)
    time.sleep(0.1)  # it keeps looking: still in line
    assert done == [], "a small claim passed a large one that had waited HOLD_S"
    ledger.release(1, base=1.0)
    big.join(5)
    small.join(5)
    assert sorted(pid for pid, _ in done) == [2, 3] and _granted(ledger) == ["2", "3"]


def test_a_dead_process_claim_is_dropped(tmp_path: Path) -> None:
    dead: set[int] = set()
    ledger = _ledger(tmp_path, capacity=100.0, dead=dead)
    ledger.claim(1, 90.0, base=1.0)
    done: list = []
    waiting = _claim_in_thread(ledger, 2, 50.0, done)
    _queued(ledger, 2)
    assert done == []
    dead.add(1)  # process 1 crashed holding its claim
    waiting.join(5)
    assert [pid for pid, _ in done] == [2] and ledger.held() == {"2": 51.0}


def test_a_claim_larger_than_the_gpu_is_cut_to_what_the_bases_leave(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path, capacity=40.0)
    ledger.release(1, base=3.0)  # another worker, between tests
    granted, _ = ledger.claim(2, 99.0, base=1.0)
    assert granted == 36.0 and sum(ledger.held().values()) == 40.0


@pytest.mark.parametrize(
    ("workers", "gpus", "gib", "environ", "on"),
    [
        (4, 1, 140.0, {}, False),  # the GPU tier's own choice on an H200: 4 fit at 34 GiB each
        (8, 1, 140.0, {}, True),  # GEMMA2_REGRESS_WORKERS_PER_GPU=8 there
        (8, 2, 140.0, {}, False),  # 4 per GPU
        (8, 1, None, {}, False),  # no GPU memory known: no GPU to share
        (4, 1, 140.0, {"GEMMA2_REGRESS_GPU_BUDGET": "1"}, True),
        (8, 1, 140.0, {"GEMMA2_REGRESS_GPU_BUDGET": "0"}, False),
    ],
)
def test_the_budget_applies_where_more_workers_share_a_gpu_than_its_memory_holds(
    workers: int, gpus: int, gib: float | None, environ: dict, on: bool
) -> None:
    assert gpu_budget.wanted(workers, gpus, gib, environ)[0] is on


def test_a_bad_switch_is_named_with_its_fix() -> None:
    with pytest.raises(pytest.UsageError, match=r"GEMMA2_REGRESS_GPU_BUDGET='yes': use 1 \(always\) or 0"):
        gpu_budget.wanted(8, 1, 140.0, {"GEMMA2_REGRESS_GPU_BUDGET": "yes"})


def test_claims_from_records_have_headroom_and_unknown_tests_claim_a_workers_share() -> None:
    assert gpu_budget.claim_for(None) == gpu_budget.UNKNOWN_GIB
    assert gpu_budget.claim_for(4.0) == 5.0  # at least 1 GiB more
    assert gpu_budget.claim_for(30.0) == pytest.approx(33.0)  # 10 % more


def test_a_recorded_peak_holds_only_while_its_module_is_unchanged_and_never_drops(tmp_path: Path) -> None:
    peaks = Peaks(tmp_path / "peaks.json", {"gpu": "x"})
    assert peaks.get("t.py::a", "src1") is None
    peaks.put("t.py::a", "src1", 12.3456)
    peaks.put("t.py::b", "src1", 2.0)
    assert peaks.get("t.py::a", "src1") == 12.346 and peaks.get("t.py::b", "src1") == 2.0
    assert peaks.get("t.py::a", "src2") is None
    peaks.put("t.py::a", "src1", 5.0)
    assert peaks.get("t.py::a", "src1") == 12.346
    peaks.put("t.py::a", "src2", 5.0)  # the module changed: its new peak
    assert peaks.get("t.py::a", "src2") == 5.0
    assert Peaks(peaks.path, {"gpu": "y"}).get("t.py::a", "src2") is None  # another machine's record


def test_recorded_seconds_are_the_latest_and_go_with_their_modules_source(tmp_path: Path) -> None:
    peaks = Peaks(tmp_path / "peaks.json", {"gpu": "x"})
    peaks.put("t.py::a", "src1", 12.0, 40.0)  # a cold run
    peaks.put("t.py::a", "src1", 11.0, 3.25)  # then warm: faster, and its peak stays the largest
    peaks.put("t.py::b", "src1", 2.0)  # no time given

    def seconds(sources: dict[str, str]) -> dict[str, float]:
        return gpu_budget.seconds_in(json.loads(peaks.path.read_text())["tests"], sources)

    assert seconds({"t.py::a": "src1", "t.py::b": "src1", "t.py::c": "src1"}) == {"t.py::a": 3.25}
    assert peaks.get("t.py::a", "src1") == 12.0
    peaks.put("t.py::a", "src1", 1.0)  # a put without a time keeps the last one
    assert seconds({"t.py::a": "src1"}) == {"t.py::a": 3.25}
    assert seconds({"t.py::a": "src2"}) == {}  # the module changed since
    peaks.put("t.py::a", "src2", 1.0)
    assert seconds({"t.py::a": "src2"}) == {}  # and its old time went with the old source


def test_the_last_line_says_what_was_claimed_waited_and_exceeded() -> None:
    assert gpu_budget.summary_line([]) is None
    lines = [
        {"test": "a", "claim_gib": 5.0, "recorded": True, "peak_gib": 6.0, "waited_s": 0.5},
        {"test": "b", "claim_gib": 33.0, "recorded": False, "peak_gib": 20.0, "waited_s": 2.0},
    ]
    assert gpu_budget.summary_line(lines) == (
        "GPU memory budget: 2 claim(s), 1 from recorded peaks, the rest 33 GiB; 2.5 s waited for memory in all, "
        "at most 2.0 s (b); largest peak 20.0 GiB (b); 1 recorded test(s) went over their claim"
    )


FAKE_GPU = "from fixtures.fake_gpu import pytest_configure\n"  # 100 GiB for claims; each test peaks at 50

TESTS = """
import os, pathlib, time
import pytest

@pytest.mark.gpu
def test_holds_memory():
    out = pathlib.Path(__file__).parent / f"span_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"
    start = time.time()
    time.sleep(1.0)
    out.write_text(f"{start} {time.time()}")

def test_needs_no_gpu():
    pass

@pytest.mark.gpu
def test_fails_before_its_peak():
    assert False

@pytest.mark.gpu
def test_skips():
    pytest.skip("no peak to learn from")

@pytest.mark.gpu
@pytest.mark.xfail(strict=True, reason="a known bug: fails where it always fails")
def test_known_bug():
    assert False

@pytest.mark.gpu
@pytest.mark.xfail(reason="not strict: may fail anywhere")
def test_loose_xfail():
    assert False
"""


def test_xdist_workers_sharing_a_gpu_never_hold_more_than_it_has(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers run the same tests at once (``--dist each``). The GPU test is recorded at 45 GiB (a claim
    of 49.5) on a 100 GiB budget: with the workers' bases, two cannot run at once. It peaks at 50 GiB,
    which is recorded, and so is the strict xfail (a known bug fails where it always fails); the failed,
    the skipped and the loose xfail are not."""
    pytester.makeconftest(FAKE_GPU)
    module = pytester.makepyfile(test_budget=TESTS)
    args = ["-n", "2", "--dist", "each", "-p", "no:cacheprovider", "-p", "gemma2_regress.plugins.markers"]
    args += ["-p", "gemma2_regress.plugins.report", "-p", "gemma2_regress.plugins.gpu_budget"]
    cache, tmp = pytester.path / "inductor", pytester.mkdir("tmp")
    peaks = Peaks(records.path(cache, records.GPU_PEAKS, {"gpu": "fake"}), {"gpu": "fake"})
    holds = "test_budget.py::test_holds_memory"
    peaks.put(holds, gpu_budget.source_digest(module), 45.0)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(cache))
    monkeypatch.setenv(gpu_budget.SWITCH_ENV, "1")
    monkeypatch.setenv("TMPDIR", str(tmp))  # where the controller makes the run's ledger folder
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    result = pytester.runpytest_subprocess(*args, timeout=120)
    result.assert_outcomes(passed=4, failed=2, skipped=2, xfailed=4)
    result.stdout.fnmatch_lines(
        [
            "GPU memory budget: on (GEMMA2_REGRESS_GPU_BUDGET=1)",
            "GPU memory budget: 10 claim(s), * from recorded peaks, the rest 33 GiB; * waited for memory in all*",
        ]
    )
    (a_start, a_end), (b_start, b_end) = (
        map(float, (pytester.path / f"span_gw{i}").read_text().split()) for i in range(2)
    )
    assert a_end <= b_start or b_end <= a_start, "two 49.5 GiB claims ran at once on a 100 GiB budget"
    recorded = json.loads(peaks.path.read_text())["tests"]
    assert {k: e["gib"] for k, e in recorded.items()} == {holds: 50.0, "test_budget.py::test_known_bug": 50.0}
    assert not list(tmp.glob("gemma2-gpu-ledger-*")), "the run's ledger folder was left behind"


@pytest.mark.parametrize("xdist", [["-n", "2", "--dist", "each"], ["-p", "no:xdist"]], ids=["workers", "one"])
def test_without_the_budget_peaks_are_still_recorded(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, xdist: list[str]
) -> None:
    """A run whose workers fit the GPU (or one process) claims nothing, and still records what its passed
    GPU tests peaked at, for a later run that shares the GPU among more workers."""
    pytester.makeconftest(FAKE_GPU)
    pytester.makepyfile(test_budget=TESTS)
    args = [*xdist, "-p", "no:cacheprovider", "-p", "gemma2_regress.plugins.markers"]
    args += ["-p", "gemma2_regress.plugins.report", "-p", "gemma2_regress.plugins.gpu_budget"]
    cache = pytester.path / "inductor"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(cache))
    monkeypatch.setenv(gpu_budget.SWITCH_ENV, "0")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    result = pytester.runpytest_subprocess(*args, timeout=120)
    result.assert_outcomes(
        **(
            {"passed": 4, "failed": 2, "skipped": 2, "xfailed": 4}
            if "-n" in xdist
            else {"passed": 2, "failed": 1, "skipped": 1, "xfailed": 2}
        )
    )
    assert "GPU memory budget" not in result.stdout.str()
    peaks = records.path(cache, records.GPU_PEAKS, {"gpu": "fake"})
    entries = json.loads(peaks.read_text())["tests"]
    assert {k: e["gib"] for k, e in entries.items()} == {
        "test_budget.py::test_holds_memory": 50.0,
        "test_budget.py::test_known_bug": 50.0,
    }
    assert entries["test_budget.py::test_holds_memory"]["seconds"] >= 1.0  # it sleeps 1 s
