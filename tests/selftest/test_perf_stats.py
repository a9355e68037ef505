"""The perf gate's statistic (gemma2_regress.perf.stats) on fixed synthetic timings, and the gate's rows
built on it (gatecheck): a 15 % slowdown in realistic noise is flagged, an unchanged build is not, and
JSONs without per-repeat times still compare, by the bare ratio, saying so."""

from __future__ import annotations

import copy
import random

import pytest

from gemma2_regress.perf import bench, gatecheck, stats

REPEATS = 50  # what `perf sensitivity` times per run by default


def synthetic_run(rng: random.Random, slowdown: float, repeats: int = REPEATS) -> tuple[list, list]:
    """One run's per-round (unsloth, sdpa) times, with the H200's noise at 2B sliding 4096 fwd
    (docs/results/h200-2026-11-28/perf-long): Unsloth 2.41 ms spreading 1.2 % per call, SDPA 0.34 ms
    spreading 5.5 %, 3 % of calls of either 15 % slow (a preempted launch), and a machine-wide shift
    of the whole run (3 %) that the SDPA floor must cancel."""
    shift = rng.lognormvariate(0, 0.03)

    def call(ms: float, spread: float) -> float:
        return ms * shift * rng.lognormvariate(0, spread) * (1.15 if rng.random() < 0.03 else 1.0)

    u = [call(2.41 * slowdown, 0.012) for _ in range(repeats)]
    s = [call(0.34, 0.055) for _ in range(repeats)]
    return u, s


def interval(rng: random.Random, slowdown: float, repeats: int = REPEATS) -> stats.Interval:
    bu, bs = synthetic_run(rng, 1.0, repeats)
    cu, cs = synthetic_run(rng, slowdown, repeats)
    return stats.ratio_interval(cu, bu, cs, bs)


@pytest.mark.parametrize(("slowdown", "flagged"), [(1.0, False), (1.15, True), (1.30, True)])
def test_one_comparison_flags_a_slowdown_and_not_its_absence(slowdown, flagged):
    iv = interval(random.Random(7), slowdown)
    assert iv.low <= iv.ratio <= iv.high
    assert iv.slower() is flagged, iv
    assert abs(iv.ratio - slowdown) < 0.05  # the point estimate recovers the planted size


def test_fifteen_percent_caught_every_time_and_no_false_alarm_on_synthetic_runs():
    """The issue's target on 20 + 20 seeded comparisons with the H200's per-call noise (issue #15: 15 %
    caught every time, no false alarm in 10); 5 % is below the minimum effect and never flagged."""
    rng = random.Random(15)
    assert sum(interval(rng, 1.0).slower() for _ in range(20)) == 0
    assert sum(interval(rng, 1.15).slower() for _ in range(20)) == 20
    assert sum(interval(rng, 1.05).slower() for _ in range(10)) <= 2


def test_interval_is_deterministic_and_widens_with_noise():
    rng = random.Random(3)
    bu, bs = synthetic_run(rng, 1.0)
    cu, cs = synthetic_run(rng, 1.1)
    a = stats.ratio_interval(cu, bu, cs, bs)
    assert a == stats.ratio_interval(cu, bu, cs, bs)  # fixed seed: same inputs, same verdict
    assert a != stats.ratio_interval(cu, bu, cs, bs, seed=1)
    few = stats.ratio_interval(cu[:7], bu[:7], cs[:7], bs[:7])
    assert few.high - few.low > a.high - a.low  # fewer repeats, wider interval


def test_equal_samples_give_an_interval_around_one():
    times = [1.0, 1.1, 0.9, 1.05, 0.95, 1.2, 1.0]
    iv = stats.ratio_interval(times, times)
    assert iv.ratio == 1.0 and iv.low < 1.0 < iv.high and not iv.slower(1.0)


def test_without_floor_and_with_unpaired_floors():
    raw = stats.ratio_interval([2.0] * 5 + [2.2], [1.0] * 6)
    assert raw.ratio == 2.0 and raw.slower(1.5)
    unpaired = stats.ratio_interval([2.0] * 6, [1.0] * 6, [1.0] * 5, [1.0] * 7)
    assert unpaired.ratio == 2.0 and unpaired.low == unpaired.high == 2.0


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (([1.0], [1.0], [1.0]), {}, "both runs or for neither"),
        (([], [1.0]), {}, "cand: need positive"),
        (([1.0], [0.0]), {}, "base: need positive"),
        (([1.0], [float("nan")]), {}, "base: need positive"),
        (([1.0], [1.0]), {"confidence": 1.0}, "between 0 and 1"),
    ],
)
def test_bad_samples_are_refused(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        stats.ratio_interval(*args, **kwargs)


# --- the gate's rows --------------------------------------------------------------------------
def payload_from(u: list[float] | None, s: list[float] | None, u_median: float | None = None) -> dict:
    """A perf JSON with one cell and mode: Unsloth and SDPA per-repeat times (None: an older JSON)."""

    def res(times: list[float] | None, median: float) -> dict:
        r = {"status": "ok", "median_ms": median, "peak_mib": 100.0}
        if times is not None:
            r["times_ms"] = times
        return r

    import statistics

    return {
        "schema": bench.SCHEMA,
        "cells": [
            {
                "key": "2b/sliding/n4096/b1",
                "results": {
                    "unsloth": {"fwd": res(u, u_median or statistics.median(u))},
                    "sdpa": {"fwd": res(s, statistics.median(s) if s else 0.34)},
                },
            }
        ],
    }


def test_gate_uses_the_interval_and_catches_what_the_bare_threshold_missed():
    rng = random.Random(7)
    base = payload_from(*synthetic_run(rng, 1.0))
    slow = payload_from(*synthetic_run(rng, 1.15))
    ok, rows = gatecheck.compare(slow, base)
    (row,) = rows
    assert not ok and row["verdict"] == "slower" and row["stat"] == "bootstrap"
    assert row["ci_low"] > stats.MIN_EFFECT and row["time_ratio"] < 1.25  # the bare 1.25 would pass it
    assert row["repeats"] == [REPEATS, REPEATS]
    ok, rows = gatecheck.compare(payload_from(*synthetic_run(rng, 1.0)), base)
    assert ok and rows[0]["verdict"] == "ok" and rows[0]["ci_low"] < 1.0 < rows[0]["ci_high"]
    # The verdict is the interval's, not the point's: above min_effect but not clear of the noise.
    ok, rows = gatecheck.compare(slow, base, min_effect=rows[0]["ci_high"] + 0.2)
    assert ok


def test_gate_falls_back_to_the_bare_ratio_without_per_repeat_times():
    rng = random.Random(8)
    u, s = synthetic_run(rng, 1.0)
    base = payload_from(u, s)
    old = payload_from(None, None, u_median=2.41 * 1.15)
    old["cells"][0]["results"]["sdpa"]["fwd"]["median_ms"] = base["cells"][0]["results"]["sdpa"]["fwd"][
        "median_ms"
    ]
    ok, rows = gatecheck.compare(old, base)
    assert ok and rows[0]["stat"] == "bare" and "no per-repeat times" in rows[0]["note"]
    assert "1.25x" in rows[0]["note"]
    ok, rows = gatecheck.compare(old, base, threshold=1.1)
    assert not ok and rows[0]["verdict"] == "slower"
    few = copy.deepcopy(base)
    few["cells"][0]["results"]["unsloth"]["fwd"]["times_ms"] = u[:3]
    ok, rows = gatecheck.compare(few, base)
    assert rows[0]["stat"] == "bare" and "only 3 timed repeats" in rows[0]["note"]
    text = gatecheck.render(ok, rows, 1.25)
    assert "bare ratio" in text and f"interval above {stats.MIN_EFFECT}x" in text


def test_gate_refuses_a_min_effect_below_one():
    base = payload_from([1.0] * 5, [1.0] * 5)
    with pytest.raises(ValueError, match=r"min_effect must be at least 1\.0"):
        gatecheck.compare(base, base, min_effect=0.95)
