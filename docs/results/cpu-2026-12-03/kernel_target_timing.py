"""Time each kernel target of the CPU tier on one case at the real window (run from a checkout, in the
cpu session's environment, one thread as each of the tier's 2 workers has):

    OMP_NUM_THREADS=1 .nox/cpu/bin/python docs/results/cpu-2026-12-03/kernel_target_timing.py

Each target runs twice: the first call may compile (or load from the compile cache), the second only runs.
"""

import time

import torch

from gemma2_regress.kernel import targets
from gemma2_regress.kernel.cases import Case
from gemma2_regress.kernel.properties import prepared

torch.set_num_threads(1)
case = Case(
    bsz=1,
    n_heads=2,
    n_kv_heads=1,
    head_dim=16,
    q_len=8193,
    kv_len=8193,
    window=4096,
    dtype="float32",
    softcap=50.0,
    scalar=256.0,
    logit_std=5.0,
    seed=3,
)
t = time.perf_counter()
inputs, golden, baseline, floor = prepared(case, "cpu")
print("oracle and baseline", round(time.perf_counter() - t, 2))
for target in targets.kernel_targets():
    for i in range(2):
        t = time.perf_counter()
        target.run(case if target.supports(case) else case.unpadded(), inputs.clone())
        print(target.name, i, round(time.perf_counter() - t, 2))
