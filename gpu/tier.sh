#!/usr/bin/env bash
# The GPU tier on an air-gapped runner, in one bounded call: `nox -s gpu --no-venv` (every `gpu` test) over
# the offline bundle (gpu/build-bundle.sh), with a persistent inductor cache; reports under $OUT.
#   bash gpu/tier.sh [SECONDS] [pytest args...]       (default 560 s, the whole tier)
# Writes $OUT/tier.log, $OUT/junit.xml, $OUT/summary.json, $OUT/costs.json.
# The inductor cache: Unsloth's kernel is compiled with max-autotune, about 30 s per new graph on an H200;
# a warm cache turns that into seconds (docs/gpu.md, "Keeping compilation down").
#   TORCHINDUCTOR_CACHE_DIR  default .cache/inductor; when absent it is restored from .gpu/inductor.tgz.*
#   PACK_CACHE=1             afterwards write the cache to $OUT/inductor.tgz.* (15 MiB parts) to carry on;
#                            the whole tier's was 1.1 GB (173 MB packed) on an H200. PACK_CACHE=lean packs only
#                            fxgraph/ and aotautograd/ (not yet measured: how small, and how much it saves)
# The bundle .gpu/site.tgz is unpacked to $BUNDLE_ROOT/gpusite (default /tmp) and re-unpacked when it changes
# (gpu/bundle.sh); a missing bundle or a bad argument is one line on stderr and exit 2, before anything runs.
set -u
. "$(dirname "${BASH_SOURCE[0]}")/bundle.sh"
secs=${1:-560}
check_seconds "$secs"
check_choice PACK_CACHE "${PACK_CACHE:-0}" 0 1 lean
unpack_bundle .gpu/site.tgz "$BUNDLE_ROOT" "bash gpu/build-bundle.sh"
OUT=${OUT:-reports/gpu}; mkdir -p "$OUT"
export PYTHONPATH=$BUNDLE_ROOT/gpusite:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
# A GPU runner: no GPU, a broken driver or no Unsloth fails the run instead of skipping it (0 to skip).
export GEMMA2_REGRESS_REQUIRE_GPU=${GEMMA2_REGRESS_REQUIRE_GPU:-1}
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$PWD/.cache/inductor}
if [ ! -d "$TORCHINDUCTOR_CACHE_DIR" ] && ls .gpu/inductor.tgz.* >/dev/null 2>&1; then
  # Unpacked beside it and renamed: a cut-off restore leaves no half cache that would count as present.
  mkdir -p "$(dirname "$TORCHINDUCTOR_CACHE_DIR")"
  tmpc=$(mktemp -d "$TORCHINDUCTOR_CACHE_DIR.new.XXXXXX")
  if cat .gpu/inductor.tgz.* | tar xzf - -C "$tmpc"; then mv "$tmpc" "$TORCHINDUCTOR_CACHE_DIR"
  else rm -rf "$tmpc"; echo "inductor cache: .gpu/inductor.tgz.* did not unpack; starting cold"; fi
fi
echo "inductor cache: $TORCHINDUCTOR_CACHE_DIR ($(du -sh "$TORCHINDUCTOR_CACHE_DIR" 2>/dev/null | cut -f1 || echo empty))"
python3 -c "import sys,torch,transformers;print(sys.version.split()[0],torch.__version__,transformers.__version__,torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')" 2>&1 | tail -1
[ $# -gt 0 ] && shift
start=$(date +%s)
GEMMA2_REGRESS_REPORT=$OUT/summary.json GEMMA2_REGRESS_COSTS=$OUT/costs.json timeout -s INT "$secs" python3 -m nox -s gpu --no-venv -- \
  -q -p no:cacheprovider --durations=15 --junitxml "$OUT/junit.xml" "$@" > "$OUT/tier.log" 2>&1
rc=$?
echo "tier rc=$rc wall=$(( $(date +%s) - start ))s"
tail -60 "$OUT/tier.log"
python3 -c 'import collections, json, sys
d = json.load(open(sys.argv[1]))
print("tests:", dict(collections.Counter(t["outcome"] for t in d.get("tests", {}).values())),
      "examples:", dict(collections.Counter(r["property"] for r in d["records"])))' "$OUT/summary.json" 2>/dev/null
if [ "${PACK_CACHE:-0}" != 0 ]; then
  du -sh "$TORCHINDUCTOR_CACHE_DIR"/* 2>/dev/null | sort -h | tail -8
  # lean: only the FX-graph and AOTAutograd entries (the compiled graphs, autotuning already decided);
  # Triton then rebuilds the chosen kernels from source on load, and the autotune candidates stay behind.
  parts=.; [ "$PACK_CACHE" = lean ] && parts="fxgraph aotautograd"
  (cd "$TORCHINDUCTOR_CACHE_DIR" && tar czf - $parts) | split -b 15m - "$OUT/inductor.tgz."
  echo "cache packed ($PACK_CACHE): $(du -sh "$TORCHINDUCTOR_CACHE_DIR" | cut -f1) -> $(cat "$OUT"/inductor.tgz.* | wc -c) bytes"
fi
exit $rc
