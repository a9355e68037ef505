#!/usr/bin/env bash
# The release gate on an air-gapped GPU runner, in one bounded call: candidate Unsloth 2026.10.9 against
# baseline 2026.10.1, each from its own offline bundle, GPU tier only; logs, gate.json and JUnit under $OUT/gate.
#   bash gpu/gate.sh [SECONDS] [pytest args...]        (default: 560 s, the kernel tests below, ci profile)
#   REVERSE=1 bash gpu/gate.sh ...                     (swap the two: the gate must then FAIL on the regressions)
# Needs, built where the index is reachable (docs/bisect.md):
#   gpu/build-bundle.sh gpu/bundle-unsloth-2026.10.9.txt .gpu/site.tgz
#   gpu/build-bundle.sh gpu/bundle-unsloth-2026.10.1.txt .gpu/base-2026.10.1.tgz
# Unpacked under $BUNDLE_ROOT (default /tmp) and re-unpacked when a bundle changes (gpu/bundle.sh); a missing
# bundle or a bad argument is one line on stderr and exit 2, before anything runs.
set -u
. "$(dirname "${BASH_SOURCE[0]}")/bundle.sh"
secs=${1:-560}
check_seconds "$secs"
check_choice REVERSE "${REVERSE:-0}" 0 1
# The two directions may run at once (gpu/mutants-and-gate.sh) and share these folders read-only.
unpack_bundle .gpu/site.tgz "$BUNDLE_ROOT/gate-cand" \
  "bash gpu/build-bundle.sh gpu/bundle-unsloth-2026.10.9.txt .gpu/site.tgz"
unpack_bundle .gpu/base-2026.10.1.tgz "$BUNDLE_ROOT/gate-base" \
  "bash gpu/build-bundle.sh gpu/bundle-unsloth-2026.10.1.txt .gpu/base-2026.10.1.tgz"
OUT=${OUT:-reports/gpu}
mkdir -p "$OUT"
unset PYTHONPATH
export HF_HUB_OFFLINE=1
[ $# -gt 0 ] && shift
# The ci profile (12 derandomized examples a test) by default: on an H200 the gpu profile's 40 took
# over 200 s a side cold (2026-11-28), most of it compiling the drawn shapes.
[ $# -eq 0 ] && set -- tests/kernel -k "small_windows and (unsloth-static or unsloth-eval)" --hypothesis-profile ci
cand=$BUNDLE_ROOT/gate-cand/gpusite base=$BUNDLE_ROOT/gate-base/gpusite
[ "${REVERSE:-0}" = 1 ] && { cand=$BUNDLE_ROOT/gate-base/gpusite; base=$BUNDLE_ROOT/gate-cand/gpusite; }
timeout -s INT "$secs" python3 -m gemma2_regress.cli gate --candidate "$cand" --baseline "$base" --tiers gpu --no-perf \
  --out "$OUT/gate" -- "$@" 2>&1 | tee "$OUT/gate.log"
rc=${PIPESTATUS[0]}
echo "gate rc=$rc" | tee -a "$OUT/gate.log"
exit "$rc"
