#!/usr/bin/env bash
# The main job on a small machine: train the tiny preset on real text, then sample from it.
# Text: ../shared/data/tinyshakespeare.txt.zst when present, else the licence texts every Debian
# system ships in /usr/share/common-licenses, or the file given as the first argument.
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-}
if [ -z "$data" ]; then
  if [ -f ../shared/data/tinyshakespeare.txt.zst ]; then
    data=../shared/data/tinyshakespeare.txt.zst
  else
    data=runs/licences.txt
    mkdir -p runs
    cat /usr/share/common-licenses/{GPL-3,LGPL-3,Apache-2.0,MPL-2.0,Artistic,GFDL-1.3} >"$data" 2>/dev/null || true
    [ -s "$data" ] || { echo "train_tiny: no text found; pass a text file" >&2; exit 1; }
  fi
fi
echo "train_tiny: training on $data"
resume=()
[ -e runs/tiny/latest ] && resume=(--resume)  # a second run continues (or finds nothing to do)
build/frugal train configs/tiny.toml --data.train_path="$data" --train.out_dir=runs/tiny "${resume[@]}"
build/frugal generate runs/tiny --prompt "The " --generate.max_new_tokens=300
