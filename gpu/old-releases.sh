#!/usr/bin/env bash
# Old Unsloth releases on an air-gapped GPU runner in one bounded call: each release of gpu/old-releases.txt over
# its own bundles (.gpu/old/*.tgz, gpu/build-old-bundles.sh), the window selections on CUDA, all releases at once,
# each cut at SECONDS; releases.md, releases.json and one log a release under $OUT (docs/bisect.md).
#   bash gpu/old-releases.sh [SECONDS] [--only V1,V2] [--jobs N]      (default 480 s a release)
# A thin wrapper: python3 -m gemma2_regress.builds.offline releases --help
set -u
secs=${1:-480}
[[ $secs =~ ^[0-9]+$ ]] || {
  echo "old-releases.sh: error: SECONDS must be a whole number (got '$secs'); e.g. bash gpu/old-releases.sh 480" >&2
  exit 2
}
[ $# -gt 0 ] && shift
exec python3 -m gemma2_regress.builds.offline releases --seconds "$secs" "$@"
