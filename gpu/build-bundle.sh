#!/usr/bin/env bash
# Build an offline bundle of the Python packages an air-gapped GPU runner's image lacks (Unsloth and its
# neighbours for the image's CPython 3.12 / CUDA 13, nox, the pinned test tools), where PyPI is reachable.
#   bash gpu/build-bundle.sh [PINS_FILE] [OUT_TGZ]   (default gpu/bundle-unsloth-2026.10.9.txt .gpu/site.tgz)
# A failed download fails the build (exit 1, one line) and writes nothing; OUT_TGZ is replaced only whole.
# A thin wrapper: python3 -m gemma2_regress.builds.offline build --help
set -u
here=$(cd "$(dirname "$0")" && pwd)
exec python3 -m gemma2_regress.builds.offline build --pins "${1:-$here/bundle-unsloth-2026.10.9.txt}" \
  --out "${2:-.gpu/site.tgz}"
