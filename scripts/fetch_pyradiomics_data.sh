#!/usr/bin/env bash
# Fetch the PyRadiomics 3.0.1 source distribution (BSD-3-Clause; its data/ folder holds five real lesion cases,
# see docs/data.md) into $SDSEG_CACHE (default ~/.cache/sdseg/). pip prepares an sdist's metadata even with
# --no-deps, and this one needs numpy and versioneer for that, so they go into a throw-away virtual environment.
set -euo pipefail
dest="${SDSEG_CACHE:-$HOME/.cache/sdseg}"
file="$dest/pyradiomics-3.0.1.tar.gz"
if [ -f "$file" ]; then echo "already there: $file"; exit 0; fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m venv "$tmp/venv"
# Three tries: a registry hiccup should not fail a CI run.
for attempt in 1 2 3; do
  if "$tmp/venv/bin/pip" install -q numpy versioneer setuptools wheel &&
     "$tmp/venv/bin/pip" download -q --no-deps --no-binary :all: --no-build-isolation -d "$tmp/dl" \
       pyradiomics==3.0.1; then
    break
  fi
  if [ "$attempt" = 3 ]; then echo "error: could not fetch pyradiomics==3.0.1 from the package index" >&2; exit 1; fi
  sleep 5
done
mkdir -p "$dest"
mv "$tmp/dl/pyradiomics-3.0.1.tar.gz" "$file.partial" && mv "$file.partial" "$file"
echo "fetched $file"
