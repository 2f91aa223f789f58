#!/usr/bin/env bash
# Peak RSS of a cold and a warm full read through the fetcher and cache
# (lazyblk cat), for an image of WEIGHTS random bytes + TEXT of text.
#   WEIGHTS=10G TEXT=256M scripts/bench/read-rss.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$PATH:/usr/local/go/bin"
weights=$(numfmt --from=iec "${WEIGHTS:-10G}")
text=$(numfmt --from=iec "${TEXT:-256M}")
work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/lazyblk-rss.XXXXXX")
trap 'rm -rf "$work"' EXIT
go build -o "$work/genimage" ./internal/tools/genimage
go build -o "$work/lazyblk" ./cmd/lazyblk
"$work/genimage" -dir "$work" -weights "$weights" -text "$text" -layout "$work/src"
rm -f "$work"/genimage-*.tar
"$work/lazyblk" convert --no-fallback --tmp-dir "$work" "oci:$work/src:v1" "oci:$work/out:v1" >/dev/null
rm -rf "$work/src"
mkdir "$work/cache"
size=$(( (weights + text) * 2 ))
for pass in cold warm; do
  /usr/bin/time -f "$pass read: peak RSS %M KiB, %e s" \
    "$work/lazyblk" cat --cache-dir "$work/cache" --cache-size "$size" "oci:$work/out:v1" >/dev/null
done
