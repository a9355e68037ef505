#!/usr/bin/env bash
# The GPU kill matrix (#4) and the release gate both ways (#5) in one bounded call on a 2-GPU runner:
# the kill matrix spreads its pytest runs round robin over both GPUs; the gate runs candidate-vs-baseline
# on GPU 0 and the reversed gate on GPU 1 at the same time. Best run right after gpu/tier.sh on the same
# machine, so the inductor cache (.cache/inductor) already holds the unmutated graphs.
#   bash gpu/mutants-and-gate.sh [SECONDS]     (default 540: the bound on each part)
# Writes under $OUT: killmatrix.log, killmatrix-gpu.json, gate-fwd.log, gate-rev.log, gate-fwd.tgz, gate-rev.tgz.
# Bundles are unpacked under $BUNDLE_ROOT (default /tmp) and re-unpacked when they change (gpu/bundle.sh);
# a missing bundle or a bad argument is one line on stderr and exit 2, before anything runs.
set -u
. "$(dirname "${BASH_SOURCE[0]}")/bundle.sh"
secs=${1:-540}
check_seconds "$secs" 60  # each kill-matrix run gets SECONDS - 40
unpack_bundle .gpu/site.tgz "$BUNDLE_ROOT" "bash gpu/build-bundle.sh"
unpack_bundle .gpu/site.tgz "$BUNDLE_ROOT/gate-cand" \
  "bash gpu/build-bundle.sh gpu/bundle-unsloth-2026.10.9.txt .gpu/site.tgz"
unpack_bundle .gpu/base-2026.10.1.tgz "$BUNDLE_ROOT/gate-base" \
  "bash gpu/build-bundle.sh gpu/bundle-unsloth-2026.10.1.txt .gpu/base-2026.10.1.tgz"
OUT=${OUT:-reports/gpu}; mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$PWD/.cache/inductor}
echo "inductor cache: $TORCHINDUCTOR_CACHE_DIR ($(du -sh "$TORCHINDUCTOR_CACHE_DIR" 2>/dev/null | cut -f1 || echo empty))"
start=$(date +%s)
# Per-run bound a little under the whole: a run cut by it reads as not-run, the matrix is still written.
( PYTHONPATH=$BUNDLE_ROOT/gpusite:$PWD timeout -s INT "$secs" python3 -m gemma2_regress.mutants.killmatrix --tier gpu --jobs 13 \
    --timeout-s $(( secs - 40 )) --out "$OUT/killmatrix-{tier}.json" > "$OUT/killmatrix.log" 2>&1
  echo "killmatrix rc=$? wall=$(( $(date +%s) - start ))s" >> "$OUT/killmatrix.log" ) &
( CUDA_VISIBLE_DEVICES=0 OUT=$OUT/fwd bash gpu/gate.sh "$secs" > /dev/null 2>&1 ) &
( CUDA_VISIBLE_DEVICES=1 OUT=$OUT/rev REVERSE=1 bash gpu/gate.sh "$secs" > /dev/null 2>&1 ) &
wait
for d in fwd rev; do
  mv "$OUT/$d/gate.log" "$OUT/gate-$d.log" 2>/dev/null
  tar czf "$OUT/gate-$d.tgz" -C "$OUT/$d" gate 2>/dev/null
  rm -rf "${OUT:?}/$d"
done
echo "all done wall=$(( $(date +%s) - start ))s"
tail -40 "$OUT/killmatrix.log"
for d in fwd rev; do echo "== gate $d"; tail -25 "$OUT/gate-$d.log"; done
