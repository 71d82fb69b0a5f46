#!/usr/bin/env bash
# Fetch Debian's mricron-data package (BSD-3-Clause; the Colin27 single-subject T1 MR with the AAL atlas drawn on
# it, see docs/data.md) into $SDSEG_CACHE (default ~/.cache/sdseg/), checked against its known sha256.
set -euo pipefail
dest="${SDSEG_CACHE:-$HOME/.cache/sdseg}"
version="1.2.20211006+dfsg-4"
file="$dest/mricron-data_${version}_all.deb"
sha256="d40aa0ed66cf89bf6cafa049ad3884703c9d975c2ee2737525b7196528df9d6f"
if [ -f "$file" ]; then echo "already there: $file"; exit 0; fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# Three tries: a registry hiccup should not fail a CI run.
for attempt in 1 2 3; do
  if (cd "$tmp" && apt-get download -qq "mricron-data=$version"); then break; fi
  if [ "$attempt" = 3 ]; then
    echo "error: could not fetch mricron-data=$version with apt-get download (run apt-get update?)" >&2; exit 1
  fi
  apt-get update -qq || true
  sleep 5
done
echo "$sha256  $tmp/mricron-data_${version}_all.deb" | sha256sum -c --quiet -
mkdir -p "$dest"
mv "$tmp/mricron-data_${version}_all.deb" "$file.partial" && mv "$file.partial" "$file"
echo "fetched $file"
