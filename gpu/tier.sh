#!/usr/bin/env bash
# The GPU tier on an air-gapped runner in one bounded call: the offline bundle unpacked (again only when it
# changed), the inductor cache restored, `nox -s gpu --no-venv` cut at SECONDS, reports under $OUT.
#   bash gpu/tier.sh [SECONDS] [pytest args...]     (default 560 s, the whole tier)
#   PACK_CACHE=1|portable  afterwards pack the compile cache (1: the inductor folder, $OUT/inductor.tgz.*;
#                      portable: torch's cache artifacts, $OUT/compile-cache.*) to carry to the next runner (in .gpu/)
# A thin wrapper: python3 -m gemma2_regress.builds.offline tier --help
set -u
secs=${1:-560}
[[ $secs =~ ^[0-9]+$ ]] || {
  echo "tier.sh: error: SECONDS must be a whole number (got '$secs'); e.g. bash gpu/tier.sh 560 [pytest args...]" >&2
  exit 2
}
case ${PACK_CACHE:-0} in
  0) pack=no ;; 1) pack=full ;; portable) pack=portable ;;
  *) echo "tier.sh: error: PACK_CACHE='$PACK_CACHE': use one of 0 1 portable" >&2; exit 2 ;;
esac
[ $# -gt 0 ] && shift
exec python3 -m gemma2_regress.builds.offline tier --seconds "$secs" --pack-cache "$pack" -- "$@"
