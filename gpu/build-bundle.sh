#!/usr/bin/env bash
# Build an offline bundle of the Python packages that an air-gapped GPU runner's image lacks, so that
# Unsloth can be imported there (such a runner reaches no package index).
#
#   gpu/build-bundle.sh [PINS_FILE] [OUT_TGZ]
#
# PINS_FILE defaults to bundle-unsloth-2026.10.9.txt beside this script (name==version lines);
# OUT_TGZ defaults to .gpu/site.tgz in the current directory (keep .gpu/ in .gitignore).
# On the runner, with the project tree and .gpu/ copied over, start with:
#   tar xzf .gpu/site.tgz -C /tmp && export PYTHONPATH=/tmp/gpusite
# The bundle targets the image's CPython 3.12 on x86-64 with CUDA 13: bitsandbytes keeps only its
# cuda130 and cpu libraries and Unsloth's studio/ web app is dropped, to stay well under the 64 MiB
# that an upload to such a runner usually allows.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
pins=${1:-$here/bundle-unsloth-2026.10.9.txt}
out=${2:-.gpu/site.tgz}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
plat=()
for p in manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_24_x86_64 manylinux_2_27_x86_64 manylinux_2_28_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64 manylinux_2_35_x86_64; do
  plat+=(--platform "$p")
done
grep -v -E '^\s*(#|$)' "$pins" > "$work/pins.txt"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${plat[@]}" -d "$work/wheels" -r "$work/pins.txt" 2>&1 | grep -v '^WARNING: Location' || true
python3 -m pip install -q --no-deps --no-compile --target "$work/gpusite" --only-binary=:all: \
  --python-version 3.12 --implementation cp "${plat[@]}" "$work"/wheels/*.whl 2>&1 | grep -v -E '^WARNING' || true
rm -rf "$work/gpusite/studio" "$work/gpusite/bin"
for f in "$work"/gpusite/bitsandbytes/libbitsandbytes_*.so; do
  case $f in *cuda130.so|*cpu.so) ;; *) rm -f "$f" ;; esac
done
mkdir -p "$(dirname "$out")"
tar czf "$out" -C "$work" gpusite
echo "wrote $out ($(du -h "$out" | cut -f1)); packages: $(ls "$work/wheels" | wc -l)"
