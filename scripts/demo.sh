#!/usr/bin/env bash
# The lazyblk demo: a registry on loopback, a generated image, convert,
# inspect, a lazy mount, a few reads, timings, and cleanup. Run through
# `sudo make demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
work=$(mktemp -d /tmp/lazyblk-demo.XXXXXX)
port=${LAZYBLK_DEMO_PORT:-5817}
reg_pid=
state="$work/state"
cleanup() {
  [ -d "$state/mounts" ] && bin/lazyblk umount --state-dir "$state" "$work/mnt" 2>/dev/null || true
  [ -n "$reg_pid" ] && kill "$reg_pid" 2>/dev/null && wait "$reg_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

ms() { date +%s%3N; }
step() { printf '\n== %s\n' "$*"; }

step "starting docker-registry on 127.0.0.1:$port"
reg_pid=$(scripts/registry.sh "$work/registry" "$port")

step "generating an image: 256 MiB of random weights, 64 MiB of text, 200 small files"
go build -o "$work/genimage" ./internal/tools/genimage
"$work/genimage" -dir "$work" "127.0.0.1:$port/demo/app:v1"

step "lazyblk convert"
t0=$(ms)
bin/lazyblk convert --plain-http --tmp-dir "$work" "127.0.0.1:$port/demo/app:v1" "127.0.0.1:$port/demo/app:v1-lazyblk"
t1=$(ms)

step "lazyblk inspect"
bin/lazyblk inspect --plain-http "127.0.0.1:$port/demo/app:v1-lazyblk"

step "lazyblk mount (returns once the filesystem is mounted; chunks arrive on first read)"
mkdir -p "$work/mnt" "$work/cache"
t2=$(ms)
bin/lazyblk mount --state-dir "$state" --plain-http --cache-dir "$work/cache" \
  "127.0.0.1:$port/demo/app:v1-lazyblk" "$work/mnt"
ls "$work/mnt" >/dev/null
t3=$(ms)
ls -l "$work/mnt" "$work/mnt/models"

step "reading a few files"
t4=$(ms)
cat "$work/mnt/etc/os-release"
head -c $((16 << 20)) "$work/mnt/models/weights.bin" | sha256sum | sed 's/-$/first 16 MiB of models\/weights.bin/'

t5=$(ms)
fetched=$(du -sb "$work/cache" | cut -f1)
size=$(bin/lazyblk inspect --plain-http --json "127.0.0.1:$port/demo/app:v1-lazyblk" | sed -n 's/.*"imageSize": \([0-9]*\).*/\1/p')

step "lazyblk umount"
bin/lazyblk umount --state-dir "$state" "$work/mnt"

step "timings"
echo "convert (pull, flatten, chunk, push):   $((t1 - t0)) ms"
echo "mount-ready (mount start to first ls):  $((t3 - t2)) ms"
echo "first reads (os-release, 16 MiB):       $((t5 - t4)) ms"
echo "fetched so far: $((fetched >> 20)) MiB of a $((size >> 20)) MiB image"
