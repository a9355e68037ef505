"""Sums a whole-tier py-spy profile (raw format, ``-s``: child processes included) over the xdist workers' own
samples: by test, the parts of ``test_real_window``, and the per-cell collection of the perf self-tests.

    py-spy record -r 20 -s -f raw -o tier.raw -- python3 -m nox -R -s cpu
    python3 docs/results/cpu-2026-12-05c/spy_by_test.py docs/results/cpu-2026-12-05c/tier-d356d98.pyspy.raw.gz

A worker is a process three deep (nox, the pytest controller, the worker); seconds are samples / 20.
"""

import collections
import gzip
import re
import sys

RATE = 20
TEST = re.compile(r"(?:accept\.<locals>\.)?(test_\w+) \(([^:]+)")


def worker_stacks(path: str):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as fh:
        for line in fh:
            stack, _, n = line.rstrip("\n").rpartition(" ")
            if not n.isdigit():
                continue
            frames = stack.split(";")
            if sum(f.startswith("process ") for f in frames) == 3:
                yield [f for f in frames if not f.startswith("process ")], int(n)


def part_of_real_window(s: str) -> str:
    if "reference/oracle.py" in s and "prepared" in s:
        return "the reference (golden float64, baseline float32)"
    if "attention_floor" in s:
        return "the rounding bound (the rule's floor)"
    if "convert_frame" in s or "_functorch" in s or "_inductor" in s:
        return "torch.compile and the compiled kernel's runs"
    if "flex_attention.py" in s:
        return "Unsloth's eager kernel"
    return "the rest (masks, inputs, comparison, Hypothesis)"


by_test, real, release, total = collections.Counter(), collections.Counter(), 0, 0
for frames, n in worker_stacks(sys.argv[1]):
    total += n
    joined = ";".join(frames)
    name = next((m.group(2).split("/")[-1] + "::" + m.group(1) for f in frames if (m := TEST.match(f))), None)
    if name is None:
        name = "(imports)" if "_find_and_load" in joined else "(pytest, fixtures, other)"
    by_test[name] += n
    if name == "test_slow_kernel.py::test_real_window":
        real[part_of_real_window(joined)] += n
    if "release_memory (gemma2_regress/perf/timing.py" in joined:
        release += n
print(f"the workers' samples: {total / RATE:.1f} s")
for name, n in by_test.most_common(12):
    print(f"{n / RATE:7.1f} s  {name}")
print("\ntest_real_window:")
for part, n in real.most_common():
    print(f"{n / RATE:7.1f} s  {part}")
print(f"\nperf.timing.release_memory: {release / RATE:.1f} s")
