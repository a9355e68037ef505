#!/usr/bin/env bash
# The release gate on an air-gapped GPU runner in one bounded call: the candidate bundle (.gpu/site.tgz)
# against a baseline bundle, GPU tier only; logs, gate.json and JUnit under $OUT/gate.
#   BASELINE=.gpu/base-2026.10.1.tgz bash gpu/gate.sh [SECONDS] [pytest args...]   (default: 560 s, the
#   window tests with Unsloth's own masks, ci profile)
#   REVERSE=1 ...   swap the two: the gate must then FAIL on the regressions
# Build the bundles where PyPI is reachable: bash gpu/build-bundle.sh [PINS] [OUT] (docs/bisect.md).
# A thin wrapper: python3 -m gemma2_regress.builds.offline gate --help
set -u
secs=${1:-560}
[[ $secs =~ ^[0-9]+$ ]] || {
  echo "gate.sh: error: SECONDS must be a whole number (got '$secs'); e.g. bash gpu/gate.sh 560 [pytest args...]" >&2
  exit 2
}
case ${REVERSE:-0} in
  0) rev=() ;; 1) rev=(--reverse) ;;
  *) echo "gate.sh: error: REVERSE='$REVERSE': use one of 0 1" >&2; exit 2 ;;
esac
[ $# -gt 0 ] && shift
exec python3 -m gemma2_regress.builds.offline gate --seconds "$secs" --baseline "${BASELINE:-.gpu/base-2026.10.1.tgz}" \
  "${rev[@]}" -- "$@"
