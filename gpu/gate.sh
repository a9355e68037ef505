#!/usr/bin/env bash
# The release gate on an air-gapped GPU runner, in one bounded call: candidate Unsloth 2026.10.9 against
# baseline 2026.10.1, each from its own offline bundle, GPU tier only; logs, gate.json and JUnit under $OUT/gate.
#   bash gpu/gate.sh [SECONDS] [pytest args...]        (default: 560 s, the kernel tests below, ci profile)
#   REVERSE=1 bash gpu/gate.sh ...                     (swap the two: the gate must then FAIL on the regressions)
# Needs, built where the index is reachable (docs/bisect.md):
#   gpu/build-bundle.sh gpu/bundle-unsloth-2026.10.9.txt .gpu/site.tgz
#   gpu/build-bundle.sh gpu/bundle-unsloth-2026.10.1.txt .gpu/base-2026.10.1.tgz
set -u
OUT=${OUT:-reports/gpu}
mkdir -p "$OUT" /tmp/gate-cand /tmp/gate-base
# Unpacked once: the two directions may run at once (gpu/mutants-and-gate.sh) and share these read-only.
[ -d /tmp/gate-cand/gpusite ] || tar xzf .gpu/site.tgz -C /tmp/gate-cand || exit 2
[ -d /tmp/gate-base/gpusite ] || tar xzf .gpu/base-2026.10.1.tgz -C /tmp/gate-base || exit 2
unset PYTHONPATH
export HF_HUB_OFFLINE=1
secs=${1:-560}
[ $# -gt 0 ] && shift
# The ci profile (12 derandomized examples a test) by default: on an H200 the gpu profile's 40 took
# over 200 s a side cold (2026-11-28), most of it compiling the drawn shapes.
[ $# -eq 0 ] && set -- tests/kernel -k "small_windows and (unsloth-static or unsloth-eval)" --hypothesis-profile ci
cand=/tmp/gate-cand/gpusite base=/tmp/gate-base/gpusite
[ "${REVERSE:-0}" = 1 ] && { cand=/tmp/gate-base/gpusite; base=/tmp/gate-cand/gpusite; }
timeout -s INT "$secs" python3 -m gemma2_regress.cli gate --candidate "$cand" --baseline "$base" --tiers gpu --no-perf \
  --out "$OUT/gate" -- "$@" 2>&1 | tee "$OUT/gate.log"
rc=${PIPESTATUS[0]}
echo "gate rc=$rc" | tee -a "$OUT/gate.log"
exit "$rc"
