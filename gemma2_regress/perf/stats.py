"""The perf gate's statistic: a bootstrap interval of the ratio of medians, and when it says "slower".

The rule (stated once; ``gatecheck`` applies it to every compared cell and mode):

    ratio  = (median(cand_unsloth) / median(cand_sdpa)) / (median(base_unsloth) / median(base_sdpa))
    [low, high] = the central ``CONFIDENCE`` (95 %) percentile interval of ``ratio`` over ``N_BOOT``
                  (2000) bootstrap resamples of each run's timed rounds, seed ``SEED`` (fixed: the same
                  inputs give the same interval and verdict on every machine)
    slower iff low > min_effect                         (``MIN_EFFECT`` = 1.05)

Why each piece:

- Medians, not means: a timed call on a shared machine has a floor and a long upper tail (a preempted
  launch, a clock dip); the median ignores the tail, the mean follows it.
- Each side is normalised by its own run's SDPA median, not call by call: the floor is there to cancel
  what changed between the two runs (clocks, a busier machine), which moves every call of a run alike;
  SDPA's call-to-call jitter (2-9 % per call on the H200, below) would be added whole to a per-call
  quotient, while its median carries little of it.
- Resample rounds, not single calls: a round's Unsloth and SDPA calls ran back to back (bench.py
  interleaves them), so drawing the pair together keeps what they shared. Without pairs (runs of
  unequal length) each list is resampled on its own; with ``basis="raw"`` only Unsloth's times are.
- An interval, not the point ratio: it widens by itself when a run is noisy (few repeats, a busy
  machine), so noise alone is not called a slowdown, and narrows when the timings are steady.
- ``MIN_EFFECT`` 1.05, from what the gate must do (issue #15): catch a 15 % slowdown every time and
  raise no false alarm on an unchanged build. The verdict reads the interval's lower end, about
  2 sigma below the point ratio, sigma being the ratio's sampling spread. On the H200 one call of
  Unsloth spreads 0.4-1.7 % and one of SDPA 2-9 % (docs/results/h200-2026-11-28/perf-long), so with
  50 repeats a run's normalised median is good to ~1 % (SDPA's part dominates) and the ratio of two
  runs' to sigma ~1.4 %. A clean ratio is ~1.00 and a 15 % one ~1.15, so ``MIN_EFFECT + 2 sigma``
  belongs midway, at 1.075: ``MIN_EFFECT`` ~1.05, which also leaves clean runs a margin for what the
  SDPA floor does not cancel between two runs (the bootstrap cannot see it). With `run`'s default of
  7 repeats sigma is ~3.5 % and no ``MIN_EFFECT`` does both; ``perf sensitivity`` times 50.
  A 5 % slowdown is flagged only by chance; 10 % when the timings are steady, never promised.
- At least ``MIN_REPEATS`` (5) timed rounds per side: with fewer, a bootstrap interval of a median
  says little about the spread, and the gate falls back to the bare ratio against its ``threshold``.
"""

from __future__ import annotations

import dataclasses
import math
import random
import statistics
from collections.abc import Callable, Sequence

MIN_EFFECT = 1.05
# Rows without per-repeat times (older JSONs, fewer than MIN_REPEATS) fall back to the bare time ratio
# against this: the planted 2x mutant is far beyond it, the spread of medians on one H200 well within.
BARE_THRESHOLD = 1.25
CONFIDENCE = 0.95
N_BOOT = 2000
SEED = 0
MIN_REPEATS = 5


@dataclasses.dataclass(frozen=True)
class Interval:
    """The ratio of (normalised) medians, candidate over baseline, and its bootstrap interval."""

    ratio: float
    low: float
    high: float
    confidence: float
    n_boot: int

    def slower(self, min_effect: float = MIN_EFFECT) -> bool:
        """The rule: the whole interval lies above ``min_effect``."""
        return self.low > min_effect


def _resampler(
    times: Sequence[float], floor: Sequence[float] | None, rng: random.Random
) -> tuple[float, Callable[[], float]]:
    """The side's normalised median, and a function drawing one bootstrap replicate of it."""
    n = len(times)
    if floor is None:
        return statistics.median(times), lambda: statistics.median(rng.choices(times, k=n))
    point = statistics.median(times) / statistics.median(floor)
    if len(floor) == n:  # paired rounds: draw (unsloth, sdpa) of a round together
        idx = range(n)

        def draw() -> float:
            pick = rng.choices(idx, k=n)
            return statistics.median([times[i] for i in pick]) / statistics.median([floor[i] for i in pick])

        return point, draw
    m = len(floor)
    return (
        point,
        lambda: statistics.median(rng.choices(times, k=n)) / statistics.median(rng.choices(floor, k=m)),
    )


def ratio_interval(
    cand: Sequence[float],
    base: Sequence[float],
    cand_floor: Sequence[float] | None = None,
    base_floor: Sequence[float] | None = None,
    *,
    confidence: float = CONFIDENCE,
    n_boot: int = N_BOOT,
    seed: int = SEED,
) -> Interval:
    """The rule's interval for per-round times (ms) of the candidate and the baseline; with
    ``cand_floor`` and ``base_floor`` (each run's SDPA times) each side is normalised by its floor.

    Raises ``ValueError`` on an empty or non-positive sample, or floors given for one side only."""
    if (cand_floor is None) != (base_floor is None):
        raise ValueError("give an SDPA floor for both runs or for neither")
    for name, xs in (("cand", cand), ("base", base), ("cand_floor", cand_floor), ("base_floor", base_floor)):
        if xs is not None and (not xs or not all(math.isfinite(x) and x > 0 for x in xs)):
            raise ValueError(f"{name}: need positive finite times (got {list(xs)[:5]})")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1 (got {confidence})")
    rng = random.Random(seed)
    c_point, c_draw = _resampler(list(cand), None if cand_floor is None else list(cand_floor), rng)
    b_point, b_draw = _resampler(list(base), None if base_floor is None else list(base_floor), rng)
    draws = sorted(c_draw() / b_draw() for _ in range(n_boot))
    tail = (1 - confidence) / 2
    low = draws[math.floor(tail * n_boot)]
    high = draws[min(n_boot - 1, math.ceil((1 - tail) * n_boot) - 1)]
    return Interval(c_point / b_point, low, high, confidence, n_boot)
