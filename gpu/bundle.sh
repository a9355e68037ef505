# Sourced by gpu/tier.sh, gpu/gate.sh and gpu/mutants-and-gate.sh: argument checks and unpacking the
# offline bundles. Bad input is one line on stderr and exit status 2, before anything is unpacked or run.
#   BUNDLE_ROOT   where bundles are unpacked (default /tmp): $BUNDLE_ROOT/gpusite, $BUNDLE_ROOT/gate-cand/gpusite, ...

BUNDLE_ROOT=${BUNDLE_ROOT:-/tmp}

# die MESSAGE...: the one line, then exit 2.
die() {
  echo "$(basename "$0"): error: $*" >&2
  exit 2
}

# check_seconds VALUE [MIN]: the SECONDS argument is a whole number >= MIN (default 1).
check_seconds() {
  local v=$1 min=${2:-1}
  [[ $v =~ ^[0-9]+$ ]] && ((10#$v >= min)) ||
    die "SECONDS must be a whole number >= $min (got '$v'); e.g. bash $0 560 [pytest args...]"
}

# check_choice NAME VALUE ALLOWED...: an environment switch holds one of the allowed values.
check_choice() {
  local name=$1 v=$2
  shift 2
  local a
  for a in "$@"; do [ "$v" = "$a" ] && return 0; done
  die "$name='$v': use one of $*"
}

# unpack_bundle TGZ PARENT FIX: make PARENT/gpusite the unpacked TGZ and reuse it only while it is that
# bundle. The folder holds the tarball's sha256 in .bundle-sha256; another (or no) stamp means an older
# bundle, so the folder is replaced: unpacked into a temporary folder beside it and renamed into place,
# so a half-unpacked folder is never used. FIX is the command that builds TGZ (said when it is missing).
unpack_bundle() {
  local tgz=$1 parent=$2 fix=$3
  [ -f "$tgz" ] || die "no bundle $tgz; build it where PyPI is reachable: $fix (then copy .gpu/ here)"
  local sum
  sum=$(sha256sum "$tgz" | cut -d' ' -f1)
  [ -n "$sum" ] || die "cannot read $tgz; rebuild it: $fix"
  mkdir -p "$parent" || die "cannot create $parent; set BUNDLE_ROOT to a writable folder"
  (
    # Two scripts sharing a folder (the gate both ways at once) unpack it once, not over each other.
    if command -v flock >/dev/null; then flock 9; fi
    site=$parent/gpusite
    [ -f "$site/.bundle-sha256" ] && [ "$(cat "$site/.bundle-sha256")" = "$sum" ] && exit 0
    tmp=$(mktemp -d "$parent/.gpusite-new.XXXXXX") || die "cannot write in $parent; set BUNDLE_ROOT"
    if ! tar xzf "$tgz" -C "$tmp" 2>/dev/null || [ ! -d "$tmp/gpusite" ]; then
      rm -rf "$tmp"
      die "$tgz is not a bundle (it does not unpack to gpusite/); rebuild it: $fix"
    fi
    echo "$sum" >"$tmp/gpusite/.bundle-sha256"
    if [ -e "$site" ]; then mv "$site" "$tmp/stale"; fi
    mv "$tmp/gpusite" "$site"
    rm -rf "$tmp"
  ) 9>"$parent/.gpusite.lock" || exit 2
}
