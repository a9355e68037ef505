"""Sums the CPU seconds that sitecustomize.py (beside this file) logged, by the test each child started under,
and lists the children that imported torch with the frames that first imported it (innermost first).

    python3 docs/results/cpu-2026-12-05b/childcpu/child_cpu.py /tmp/childcpu
"""

import collections
import json
import sys
from pathlib import Path

records = [json.loads(p.read_text()) for p in Path(sys.argv[1]).glob("*.json")]
children = [r for r in records if r["born"]]
for flag in (True, False):
    group = [r for r in children if r["torch"] == flag]
    print(
        f"children {'with' if flag else 'without'} torch: {len(group)}, {sum(r['cpu'] for r in group):.1f} s CPU"
    )
by_test: dict[str, list] = collections.defaultdict(lambda: [0, 0.0])
for r in children:
    by_test[r["born"].split(" ")[0]][0] += 1
    by_test[r["born"].split(" ")[0]][1] += r["cpu"]
print("\nCPU seconds of children, by the test they started under:")
for key, (n, cpu) in sorted(by_test.items(), key=lambda kv: -kv[1][1])[:30]:
    print(f"{cpu:7.1f} s  {n:3d} process(es)  {key[:140]}")
print("\nchildren that imported torch, and what first imported it:")
for r in sorted(children, key=lambda r: -r["cpu"]):
    if r["torch"]:
        print(
            f"{r['cpu']:6.1f} s  {r['born'].split(' ')[0].split('::')[-1][:60]:60s}  {' <- '.join(r['who'][::-1])}"
        )
