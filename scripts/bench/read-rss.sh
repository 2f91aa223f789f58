#!/usr/bin/env bash
# Peak RSS of a cold and a warm full read through the fetcher and cache
# (lazyblk cat), for an image of WEIGHTS random bytes + TEXT of text; then
# of a serving process (lazyblk serve, nbdcopy of the whole export, cold),
# at its peak and once idle (IDLE seconds after the read, default 10: it
# gives memory back after 5 s idle). Targets: 256 MiB reading, 64 MiB idle.
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

rm -rf "$work/cache"
mkdir "$work/cache"
"$work/lazyblk" serve --cache-dir "$work/cache" --cache-size "$size" --listen "unix:$work/nbd.sock" "oci:$work/out:v1" 2>/dev/null &
serve_pid=$!
trap 'kill "$serve_pid" 2>/dev/null; rm -rf "$work"' EXIT
while [ ! -S "$work/nbd.sock" ]; do sleep 0.1; done # start-up only, not measured
kib() { awk -v f="$1:" '$1 == f {print $2}' "/proc/$serve_pid/status"; }
t0=$(date +%s%N)
nbdcopy --connections=4 "nbd+unix:///?socket=$work/nbd.sock" null:
t1=$(date +%s%N)
echo "serve, cold read: peak RSS $(kib VmHWM) KiB, $(( (t1 - t0) / 1000000 )) ms"
sleep "${IDLE:-10}" # the idle time being measured
echo "serve, ${IDLE:-10} s idle: RSS $(kib VmRSS) KiB"
