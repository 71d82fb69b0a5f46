#!/usr/bin/env bash
# Fetch the PyRadiomics 3.0.1 source distribution (BSD-3-Clause; its data/ folder holds five real lesion cases,
# see docs/data.md) into $SDSEG_CACHE (default ~/.cache/sdseg/), checked against its known sha256. pip prepares an
# sdist's metadata even with --no-deps, and this one needs numpy and versioneer for that, so they go into a
# throw-away virtual environment.
set -euo pipefail
. "$(dirname "$0")/fetch_lib.sh"
file="$dest/pyradiomics-3.0.1.tar.gz"
if [ -f "$file" ]; then echo "already there: $file"; exit 0; fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m venv "$tmp/venv"
download() {
  "$tmp/venv/bin/pip" install -q numpy versioneer setuptools wheel &&
    "$tmp/venv/bin/pip" download -q --no-deps --no-binary :all: --no-build-isolation -d "$tmp/dl" pyradiomics==3.0.1
}
retry "pyradiomics==3.0.1 from the package index" download
keep "$tmp/dl/pyradiomics-3.0.1.tar.gz" 47c57f441d6cb7973fa3b2ea48d3948df78e3348e1c69e1e2ff19001601fc2f5 "$file"
