#!/usr/bin/env bash
# Build every bundle gpu/old-releases.txt names (NAME from gpu/bundle-NAME.txt into .gpu/old/NAME.tgz), where PyPI
# is reachable: the old releases' own bundles and the layers they share (docs/bisect.md, "Before 2026.8.16").
#   bash gpu/build-old-bundles.sh [PLAN [OUT_DIR]]   (default gpu/old-releases.txt .gpu/old)
# Each is a thin call of gpu/build-bundle.sh; the first that fails stops the build (exit 1, its one line).
set -u
here=$(cd "$(dirname "$0")" && pwd)
plan=${1:-$here/old-releases.txt}
out=${2:-.gpu/old}
[ -f "$plan" ] || { echo "build-old-bundles.sh: error: no plan $plan; e.g. bash gpu/build-old-bundles.sh gpu/old-releases.txt" >&2; exit 2; }
names=$(sed 's/#.*//' "$plan" | awk 'NF > 1 { for (i = 2; i <= NF; i++) print $i }' | awk '!seen[$0]++')
[ -n "$names" ] || { echo "build-old-bundles.sh: error: $plan names no bundle; write 'VERSION BUNDLE [BUNDLE...]' lines" >&2; exit 2; }
for n in $names; do
  [ -f "$here/bundle-$n.txt" ] || { echo "build-old-bundles.sh: error: $plan names $n but there is no $here/bundle-$n.txt" >&2; exit 2; }
done
for n in $names; do
  bash "$here/build-bundle.sh" "$here/bundle-$n.txt" "$out/$n.tgz" || exit 1
done
du -ch "$out"/*.tgz | tail -1
