#!/usr/bin/env bash
# Build an offline bundle of the Python packages that an air-gapped GPU runner's image lacks, so that
# Unsloth can be imported there (such a runner reaches no package index).
#
#   gpu/build-bundle.sh [PINS_FILE] [OUT_TGZ]
#
# PINS_FILE defaults to bundle-unsloth-2026.10.9.txt beside this script (name==version lines);
# OUT_TGZ defaults to .gpu/site.tgz in the current directory (keep .gpu/ in .gitignore).
# On the runner, with the project tree and .gpu/ copied over, gpu/tier.sh and gpu/gate.sh unpack it
# (again whenever it changes); by hand:
#   tar xzf .gpu/site.tgz -C /tmp && export PYTHONPATH=/tmp/gpusite
# The bundle targets the image's CPython 3.12 on x86-64 with CUDA 13: bitsandbytes keeps only its
# cuda130 and cpu libraries and Unsloth's studio/ web app is dropped, to stay well under the 64 MiB
# that an upload to such a runner usually allows.
# A failed download or install (a pin not on the index, no network) fails the script: one line on stderr,
# exit 1 (2 for a bad argument), and no OUT_TGZ is written; OUT_TGZ is replaced only by a complete bundle.
set -uo pipefail
die() {
  echo "build-bundle.sh: error: $*" >&2
  exit "${code:-2}"
}
here=$(cd "$(dirname "$0")" && pwd)
pins=${1:-$here/bundle-unsloth-2026.10.9.txt}
out=${2:-.gpu/site.tgz}
[ -f "$pins" ] || die "no pins file $pins; pass one of name==version lines, e.g. gpu/bundle-unsloth-2026.10.9.txt"
case $out in *.tgz | *.tar.gz) ;; *) die "OUT_TGZ $out: give a .tgz path, e.g. .gpu/site.tgz" ;; esac
[ -d "$out" ] && die "OUT_TGZ $out is a folder; give a .tgz path, e.g. .gpu/site.tgz"
python3 -m pip --version >/dev/null 2>&1 || die "python3 has no pip; install it (python3 -m ensurepip)"
work=$(mktemp -d)
tmpout=
trap 'rm -rf "$work"; [ -n "$tmpout" ] && rm -f "$tmpout"' EXIT
grep -v -E '^\s*(#|$)' "$pins" >"$work/pins.txt"
[ -s "$work/pins.txt" ] || die "$pins names no package; write name==version lines"
plat=()
for p in manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_24_x86_64 manylinux_2_27_x86_64 manylinux_2_28_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64 manylinux_2_35_x86_64; do
  plat+=(--platform "$p")
done
code=1
# pip's output goes to a log: pip's exit status decides; its warnings (e.g. an unused local index) are
# left out of what is shown, and a failure is told in one line (its last ERROR line).
pip_step() {
  local what=$1
  shift
  if ! python3 -m pip "$@" >"$work/pip.log" 2>&1; then
    local why
    why=$(grep -E '^ERROR' "$work/pip.log" | tail -1)
    die "pip $what failed: ${why:-$(tail -1 "$work/pip.log")}; check the pins in $pins and the network"
  fi
  grep -v -E '^WARNING' "$work/pip.log" || true
}
pip_step download download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${plat[@]}" -d "$work/wheels" -r "$work/pins.txt"
pip_step install install -q --no-deps --no-compile --target "$work/gpusite" --only-binary=:all: \
  --python-version 3.12 --implementation cp "${plat[@]}" "$work"/wheels/*.whl
rm -rf "$work/gpusite/studio" "$work/gpusite/bin"
for f in "$work"/gpusite/bitsandbytes/libbitsandbytes_*.so; do
  case $f in *cuda130.so | *cpu.so) ;; *) rm -f "$f" ;; esac
done
mkdir -p "$(dirname "$out")" || die "cannot create $(dirname "$out")"
# Written beside OUT_TGZ and renamed: a reader (or a failure) never sees half a bundle.
tmpout=$(mktemp "$(dirname "$out")/.$(basename "$out").XXXXXX") || die "cannot write in $(dirname "$out")"
tar czf "$tmpout" -C "$work" gpusite || die "tar of the bundle failed; check the free space in $(dirname "$out")"
chmod "$(printf '%04o' $((0666 & ~0$(umask))))" "$tmpout" # mktemp made it 0600; a bundle is as readable as tar's
mv -f "$tmpout" "$out" || die "cannot rename $tmpout to $out"
tmpout=
echo "wrote $out ($(du -h "$out" | cut -f1)); packages: $(ls "$work/wheels" | wc -l)"
