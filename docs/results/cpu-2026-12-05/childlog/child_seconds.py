"""Sums the lifetimes that sitecustomize.py (beside this file) logged, by the test that started each child.

A child that is a pytest run of its own clears PYTEST_CURRENT_TEST after its last test, so it (and any
process it started that it outlived) shows under "(no test)" with its argv. "with Unsloth" means a module
named ``unsloth`` was imported: the bisect and gate self-tests install fake ones.

    python3 docs/results/cpu-2026-12-05/childlog/child_seconds.py /tmp/childlog
"""

import collections
import json
import sys
from pathlib import Path

records = [json.loads(p.read_text()) for p in Path(sys.argv[1]).glob("*.json")]
by_test: dict[str, list] = collections.defaultdict(lambda: [0, 0.0, 0])
for r in records:
    key = r["test"].split(" ")[0] if r["test"] else "(no test) " + " ".join(r["argv"][:3])
    by_test[key][0] += 1
    by_test[key][1] += r["s"]
    by_test[key][2] += r["unsloth"]
print(
    f"{len(records)} processes; those still under a test's name at exit lived {sum(r['s'] for r in records if r['test']):.1f} s"
)
for key, (n, seconds, unsloth) in sorted(by_test.items(), key=lambda kv: -kv[1][1])[:40]:
    print(f"{seconds:7.1f} s  {n:3d} process(es), {unsloth} with Unsloth  {key[:150]}")
