#!/usr/bin/env bash
# Fetch the data that Debian packages ship into $SDSEG_CACHE (default ~/.cache/sdseg/), each checked against its
# known sha256 (docs/data.md): mricron-data (BSD-3-Clause; the Colin27 single-subject T1 MR with the AAL atlas
# drawn on it) and invesalius-examples (GPL-2; a real head CT, texture only).
set -euo pipefail
. "$(dirname "$0")/fetch_lib.sh"
download() {  # download PACKAGE=VERSION FOLDER (apt-get update before a retry)
  (cd "$2" && apt-get download -qq "$1") || { apt-get update -qq || true; false; }
}
fetch() {  # fetch PACKAGE VERSION SHA256
  local file="$dest/$1_$2_all.deb" tmp
  if [ -f "$file" ]; then echo "already there: $file"; return 0; fi
  tmp="$(mktemp -d)"
  retry "$1=$2 with apt-get download" download "$1=$2" "$tmp"
  keep "$tmp/$1_$2_all.deb" "$3" "$file"
  rm -rf "$tmp"
}
fetch mricron-data 1.2.20211006+dfsg-4 d40aa0ed66cf89bf6cafa049ad3884703c9d975c2ee2737525b7196528df9d6f
fetch invesalius-examples 3.1.99998-4 f2f14bdfef6dc3812eafc5013d133c6c18370aaab5666b78d54af2e7db432f97
