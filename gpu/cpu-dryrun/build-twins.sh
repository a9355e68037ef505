#!/usr/bin/env bash
# Twins of the old-release bundles for THIS machine's Python (same pins, its own wheels), plus a layer of
# gpu/cpu-dryrun, and a plan naming them: for `offline releases --device cpu` where there is no GPU
# (docs/bisect.md, "Before 2026.8.16"). Needs PyPI. The interpreter that then runs the dry run needs torch
# (CPU), pytest, hypothesis and the image's other neighbours (accelerate, peft, numpy, safetensors, ...).
#   bash gpu/cpu-dryrun/build-twins.sh [PLAN [OUT_DIR]]   (default gpu/old-releases.txt .gpu/twins)
# then: GEMMA2_REGRESS_CPU_DRYRUN=1 python -m gemma2_regress.builds.offline releases --device cpu \
#         --plan .gpu/twins/plan.txt --bundle-dir .gpu/twins --seconds 900 --jobs 1
set -u
here=$(cd "$(dirname "$0")" && pwd)
gpu=$(dirname "$here")
plan=${1:-$gpu/old-releases.txt}
out=${2:-.gpu/twins}
py=${PYTHON:-python3}
[ -f "$plan" ] || { echo "build-twins.sh: error: no plan $plan; e.g. bash gpu/cpu-dryrun/build-twins.sh gpu/old-releases.txt" >&2; exit 2; }
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for n in $(sed 's/#.*//' "$plan" | awk 'NF > 1 { for (i = 2; i <= NF; i++) print $i }' | awk '!seen[$0]++'); do
  [ -f "$gpu/bundle-$n.txt" ] || { echo "build-twins.sh: error: no $gpu/bundle-$n.txt for $n" >&2; exit 2; }
  sed 's/#.*//' "$gpu/bundle-$n.txt" | grep -v '^\s*$' > "$work/$n.txt"
  "$py" -m pip install -q --no-deps --no-compile --target "$work/$n/gpusite" -r "$work/$n.txt" || {
    echo "build-twins.sh: error: pip could not install $gpu/bundle-$n.txt here" >&2; exit 1; }
  rm -rf "$work/$n/gpusite/studio" "$work/$n/gpusite/bin"
  [ -d "$work/$n/gpusite/bitsandbytes" ] && find "$work/$n/gpusite/bitsandbytes" -name 'libbitsandbytes_*.so' \
    ! -name '*cpu.so' ! -name '*cuda130.so' -delete
  tar czf "$out/$n.tgz" -C "$work/$n" gpusite
done
mkdir -p "$work/cpu-dryrun/gpusite" && cp "$here/sitecustomize.py" "$work/cpu-dryrun/gpusite/"
tar czf "$out/cpu-dryrun.tgz" -C "$work/cpu-dryrun" gpusite
sed 's/#.*//' "$plan" | awk 'NF > 1 { print $0, "cpu-dryrun" }' > "$out/plan.txt"
echo "twins of $(wc -l < "$out/plan.txt") release(s) in $out; plan $out/plan.txt"
