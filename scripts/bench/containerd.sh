#!/usr/bin/env bash
# Pull start -> first output of a container, lazyblk vs overlayfs, in one
# run, as root. A private containerd 1.6 (Debian's, runc) with the lazyblk
# snapshotter and fetcher daemon; an image of WEIGHTS random bytes + TEXT
# of text (+ busybox) in docker-registry on loopback, reached through a
# proxy that adds DELAY to every request. The container prints
# /etc/os-release.
#   overlayfs: ctr images pull (download, gunzip, unpack) + ctr run
#   lazyblk:   lazyblk pull (manifest, config, chunk index) + ctr run, cold cache
#   WEIGHTS=2G TEXT=64M DELAY=5ms scripts/bench/containerd.sh
default_weights=2G default_text=64M
NO_LAYOUT=1 source "$(dirname "$0")/lib.sh"
lb=$work/lazyblk
port=${BENCH_PORT:-5821} proxy_port=$((port + 1))
delay=${DELAY:-5ms}
go build -o "$work/delayproxy" ./internal/tools/delayproxy
reg_pid=$(scripts/registry.sh "$work/registry" "$port")
"$work/delayproxy" -listen "127.0.0.1:$proxy_port" -target "127.0.0.1:$port" -delay "$delay" &
proxy_pid=$!
pids=()
ctr() { command ctr --address "$work/containerd.sock" "$@"; }
cleanup() {
  set +e
  for id in $(ctr task ls -q 2>/dev/null); do ctr task kill -s SIGKILL "$id"; ctr task delete --force "$id"; done
  ctr images ls -q 2>/dev/null | xargs -r ctr images rm --sync >/dev/null 2>&1
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  for d in $(ls "$work/run/mounts" 2>/dev/null); do
    "$lb" umount --state-dir "$work/run" "$(sed -n 's/.*"dir": "\(.*\)".*/\1/p' "$work/run/mounts/$d/state.json" | head -1)"
  done
  grep -o "$work[^ ]*" /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l
  kill "$proxy_pid" "$reg_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

src=127.0.0.1:$port/bench/app:v1 lazy=127.0.0.1:$port/bench/app:v1-lazyblk
echo "generating and pushing: $(numfmt --to=iec "$weights") random weights + $(numfmt --to=iec "$text") text + busybox"
"$work/genimage" -dir "$work" -weights "$weights" -text "$text" -busybox "$(command -v busybox)" "$src"
rm -f "$work"/genimage-*.tar
"$lb" convert --plain-http --tmp-dir "$work" "$src" "$lazy" >/dev/null

# Daemons, readiness from their own messages.
wait_for() { # FILE TEXT
  for _ in $(seq 600); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "not ready: $1" >&2; cat "$1" >&2; exit 1
}
"$lb" fetcher --root "$work/lib" --state "$work/run" --address "$work/fetcher.sock" 2>"$work/fetcher.log" &
pids+=($!)
echo "plain_http = [\"127.0.0.1:$proxy_port\"]" >"$work/snapshotter.toml"
"$lb" snapshotter --config "$work/snapshotter.toml" --root "$work/snapshotter" --address "$work/snapshotter.sock" \
  --fetcher-address "$work/fetcher.sock" 2>"$work/snapshotter.log" &
pids+=($!)
cat >"$work/containerd.toml" <<TOML
version = 2
root = "$work/containerd/root"
state = "$work/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$work/containerd.sock"
[proxy_plugins.lazyblk]
  type = "snapshot"
  address = "$work/snapshotter.sock"
TOML
wait_for "$work/fetcher.log" "listening on"
wait_for "$work/snapshotter.log" "listening on"
containerd --config "$work/containerd.toml" 2>"$work/containerd.log" &
pids+=($!)
wait_for "$work/containerd.log" "containerd successfully booted"

ms() { date +%s%3N; }
image_size=$("$lb" inspect --plain-http --json "$lazy" | sed -n 's/.*"imageSize": \([0-9]*\).*/\1/p')
echo "== pull start -> first output, $(numfmt --to=iec "$image_size") filesystem, registry on loopback + $delay per request"

t0=$(ms)
ctr images pull --plain-http --snapshotter overlayfs "127.0.0.1:$proxy_port/bench/app:v1" >/dev/null
t1=$(ms)
out=$(ctr run --runc-root "$work/runc" --rm --snapshotter overlayfs "127.0.0.1:$proxy_port/bench/app:v1" o1 cat /etc/os-release)
t2=$(ms)
[ "$out" = "NAME=lazyblk-demo" ] || { echo "overlayfs container printed: $out" >&2; exit 1; }
overlay=$((t2 - t0))
echo "overlayfs: pull+unpack $((t1 - t0)) ms, run $((t2 - t1)) ms, total $overlay ms"

t0=$(ms)
"$lb" pull --address "$work/containerd.sock" --plain-http "127.0.0.1:$proxy_port/bench/app:v1-lazyblk" >/dev/null
t1=$(ms)
out=$(ctr run --runc-root "$work/runc" --rm --snapshotter lazyblk "127.0.0.1:$proxy_port/bench/app:v1-lazyblk" l1 cat /etc/os-release)
t2=$(ms)
[ "$out" = "NAME=lazyblk-demo" ] || { echo "lazyblk container printed: $out" >&2; exit 1; }
lazyms=$((t2 - t0))
grep -q "falling back" "$work/snapshotter.log" && { echo "the lazyblk pull fell back to unpacking" >&2; exit 1; }
fetched=$(ls "$work/lib/cache" >/dev/null 2>&1; du -sb "$work/lib/cache" | cut -f1)
echo "lazyblk:   pull $((t1 - t0)) ms, run $((t2 - t1)) ms, total $lazyms ms; chunk cache holds $(numfmt --to=iec "$fetched") of $(numfmt --to=iec "$image_size")"
echo "ratio lazyblk/overlayfs: $(echo "scale=3; $lazyms / $overlay" | bc)"
