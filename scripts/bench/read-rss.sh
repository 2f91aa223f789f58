#!/usr/bin/env bash
# Peak RSS of a cold and a warm full read through the fetcher and cache
# (lazyblk cat), for an image of WEIGHTS random bytes + TEXT of text.
#   WEIGHTS=10G TEXT=256M scripts/bench/read-rss.sh
default_weights=10G default_text=256M
source "$(dirname "$0")/lib.sh"
"$work/lazyblk" convert --no-fallback --tmp-dir "$work" "oci:$work/src:v1" "oci:$work/out:v1" >/dev/null
rm -rf "$work/src"
mkdir "$work/cache"
size=$(( (weights + text) * 2 ))
for pass in cold warm; do
  /usr/bin/time -f "$pass read: peak RSS %M KiB, %e s" \
    "$work/lazyblk" cat --cache-dir "$work/cache" --cache-size "$size" "oci:$work/out:v1" >/dev/null
done
