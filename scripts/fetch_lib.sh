# Shared by the fetch_*.sh scripts (sourced, not run): where the data go and how a download is tried and kept.
dest="${SDSEG_CACHE:-$HOME/.cache/sdseg}"

# retry WHAT COMMAND...: three tries, five seconds apart (a registry hiccup should not fail a CI run).
retry() {
  local what="$1" attempt
  shift
  for attempt in 1 2 3; do
    if "$@"; then return 0; fi
    [ "$attempt" = 3 ] || sleep 5
  done
  echo "error: could not fetch $what" >&2
  exit 1
}

# keep DOWNLOADED SHA256 FILE: check the download against its known sha256, then move it to FILE (never a partial
# file under the final name).
keep() {
  echo "$2  $1" | sha256sum -c --quiet -
  mkdir -p "$(dirname "$3")"
  mv "$1" "$3.partial" && mv "$3.partial" "$3"
  echo "fetched $3"
}
