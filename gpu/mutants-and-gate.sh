#!/usr/bin/env bash
# The GPU kill matrix (#4) and the release gate both ways (#5) in one bounded call on a 2-GPU runner:
# the kill matrix spreads its pytest runs round robin over both GPUs; the gate runs candidate-vs-baseline
# on GPU 0 and the reversed gate on GPU 1 at the same time. Best run right after gpu/tier.sh on the same
# machine, so the inductor cache (.cache/inductor) already holds the unmutated graphs.
#   bash gpu/mutants-and-gate.sh [SECONDS]     (default 540: the bound on each part)
# Writes under $OUT: killmatrix.log, killmatrix-gpu.json, gate-fwd.log, gate-rev.log, gate-fwd.tgz, gate-rev.tgz.
set -u
OUT=${OUT:-reports/gpu}; mkdir -p "$OUT"
secs=${1:-540}
[ -d /tmp/gpusite ] || tar xzf .gpu/site.tgz -C /tmp || exit 2
mkdir -p /tmp/gate-cand /tmp/gate-base
[ -d /tmp/gate-cand/gpusite ] || tar xzf .gpu/site.tgz -C /tmp/gate-cand || exit 2
[ -d /tmp/gate-base/gpusite ] || tar xzf .gpu/base-2026.10.1.tgz -C /tmp/gate-base || exit 2
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$PWD/.cache/inductor}
echo "inductor cache: $TORCHINDUCTOR_CACHE_DIR ($(du -sh "$TORCHINDUCTOR_CACHE_DIR" 2>/dev/null | cut -f1 || echo empty))"
start=$(date +%s)
# Per-run bound a little under the whole: a run cut by it reads as not-run, the matrix is still written.
( PYTHONPATH=/tmp/gpusite:$PWD timeout -s INT "$secs" python3 -m gemma2_regress.killmatrix --tier gpu --jobs 13 \
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
