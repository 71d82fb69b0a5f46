#!/usr/bin/env bash
# Fetch and verify the real lesion data of docs/data.md ("LIDC-IDRI crops with four radiologists", "Soft-tissue
# sarcoma on CT, MR and PET", "Glioma on brain MR"), for a user with internet access; the project never downloads at
# run time, and CI does not run this (its tests use the fixtures in Testing/Data).
#
#   bash scripts/fetch_real_lesions.sh [DEST]             clone the three repositories at the named commits into DEST
#                                                         (default $SDSEG_CACHE/real-lesions, SDSEG_CACHE default
#                                                         ~/.cache/sdseg), then verify them
#   bash scripts/fetch_real_lesions.sh --verify DEST      verify a copy obtained otherwise (same layout)
#   bash scripts/fetch_real_lesions.sh --write-manifest DEST   (maintainers) rewrite the manifest from a checked copy
#
# Layout: DEST/Pulmoseg/LIDC-IDRI-slices/... (--source lidc-slices --input DEST/Pulmoseg/LIDC-IDRI-slices) and
# DEST/data_sets/ibsi_validation/... (--source ibsi-sts --input DEST/data_sets/ibsi_validation) and
# DEST/DeepBrainSeg/sample_volume/brats/... (--source brats-tcga --input DEST/DeepBrainSeg).
# The manifest (scripts/real_lesions.sha256) holds the sha256 of the files the project uses, never of the reserved
# patients (LIDC-IDRI-0901 and above, STS_041 .. STS_051): one digest per LIDC patient folder and per sarcoma
# patient's DICOM modality folder (digest = sha256 of the `sha256sum` lines of its files, sorted by path), one per
# NIfTI file; one per file of a TCGA glioma case that --source brats-tcga reads. Licences: CC BY 3.0 (cite Armato
# et al. 2011 + TCIA; Vallieres et al. 2015 + TCIA; Bakas et al. 2017 + TCIA).
set -euo pipefail
. "$(dirname "$0")/fetch_lib.sh"
manifest="$(cd "$(dirname "$0")" && pwd)/real_lesions.sha256"
PULMOSEG=(https://github.com/periclesanfe/Pulmoseg.git 045c0c6b7 LIDC-IDRI-slices Pulmoseg)
IBSI=(https://github.com/theibsi/data_sets.git 6da9602 ibsi_validation data_sets)
DEEPBRAINSEG=(https://github.com/koriavinash1/DeepBrainSeg.git 5d4f381 sample_volume/brats DeepBrainSeg)

# digest PATH: sha256 of a file, or of a folder's sorted `sha256sum` lines (paths relative to the folder)
digest() {
  if [ -d "$1" ]; then
    (cd "$1" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) | sha256sum | cut -d' ' -f1
  else
    sha256sum "$1" | cut -d' ' -f1
  fi
}

# clone URL COMMIT FOLDER NAME: a sparse, blob-less clone of FOLDER at COMMIT into $root/NAME
clone() {
  local url="$1" commit="$2" folder="$3" target="$root/$4"
  if [ -d "$target/.git" ]; then echo "already there: $target"; else
    retry "$url" git clone --quiet --filter=blob:none --no-checkout "$url" "$target"
    git -C "$target" sparse-checkout set "$folder"
  fi
  git -C "$target" -c advice.detachedHead=false checkout --quiet "$commit"
  case "$(git -C "$target" rev-parse HEAD)" in
    "$commit"*) echo "checked out $4 at $commit" ;;
    *) echo "error: $target is not at commit $commit" >&2; exit 1 ;;
  esac
}

# the entries the project uses (relative to DEST), unreserved patients only
entries() {
  local p n m
  for p in "$root"/Pulmoseg/LIDC-IDRI-slices/LIDC-IDRI-[0-9][0-9][0-9][0-9]; do
    n=$((10#${p##*-})); [ "$n" -lt 901 ] && echo "Pulmoseg/LIDC-IDRI-slices/${p##*/}"
  done
  for p in "$root"/data_sets/ibsi_validation/dicom/STS_[0-9][0-9][0-9]; do
    n=$((10#${p##*_})); [ "$n" -ge 41 ] && [ "$n" -le 51 ] && continue
    for m in CT MR_T1 PET; do
      echo "data_sets/ibsi_validation/dicom/${p##*/}/$m"
      for f in "$root/data_sets/ibsi_validation/nifti/${p##*/}/${m}"_{image,mask}.nii.gz; do
        [ -f "$f" ] && echo "${f#"$root"/}"
      done
    done
  done
  for p in "$root"/DeepBrainSeg/sample_volume/brats/Brats18_TCIA[0-9][0-9]_[0-9][0-9][0-9]_1; do
    for m in t1ce flair t2 seg; do [ -f "$p/${p##*/}_$m.nii.gz" ] && echo "${p#"$root"/}/${p##*/}_$m.nii.gz"; done
  done
  return 0
}

write_manifest() {
  local entry
  entries | while read -r entry; do echo "$(digest "$root/$entry")  $entry"; done > "$manifest"
  echo "wrote $manifest ($(wc -l < "$manifest") entries)"
}

verify() {
  local sum entry bad=0 missing=0 checked=0
  while read -r sum entry; do
    if [ ! -e "$root/$entry" ]; then
      case "$entry" in
        */nifti/*_image.nii.gz) echo "note: $entry missing; the DICOM series stands in" ;;
        *) echo "missing: $entry" >&2; missing=$((missing + 1)) ;;
      esac
      continue
    fi
    if [ "$(digest "$root/$entry")" != "$sum" ]; then echo "differs: $entry" >&2; bad=$((bad + 1)); fi
    checked=$((checked + 1))
  done < "$manifest"
  echo "checked $checked entries of $manifest: $bad differ, $missing missing"
  [ "$bad" -eq 0 ] && [ "$missing" -eq 0 ]
}

case "${1:-}" in
  --verify) root="${2:?usage: $0 --verify DEST}"; verify ;;
  --write-manifest) root="${2:?usage: $0 --write-manifest DEST}"; write_manifest ;;
  *)
    root="${1:-$dest/real-lesions}"
    mkdir -p "$root"
    clone "${PULMOSEG[@]}"
    clone "${IBSI[@]}"
    clone "${DEEPBRAINSEG[@]}"
    verify
    ;;
esac
