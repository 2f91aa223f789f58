#!/usr/bin/env bash
# The AI start-up, as a model server runs it, on one mount: import a Python
# framework (PyTorch from Debian, python3-torch: a 1.4 GB root), then read
# the weights (WEIGHTS, default 1G). As root. The image sits in
# docker-registry on loopback behind a shaper: DELAY per request (2ms),
# RATE in all (200MiB/s).
#
# Cases, each from an empty chunk cache and a dropped page cache:
#   pull      download every layer, unpack, overlay mount, then the workload
#   local     the erofs image on a loop device (the floor: no network); also
#             what a local block device reads for the import
#   cold      lazyblk mount --no-trace of the image as converted by default
#   ordered   the image converted with --startup-trace (the trace "cold"
#             recorded of its import), mounted with its published trace
#   warm      every chunk cached
#   fresh     the weights alone on a fresh mount: the reference for the
#             weights read after the import
# Each lazy case reports the chunk bytes its import touched (lazyblk prefetch
# record) against the bytes the local block device read for it.
#
# Prints a table and the ratios, writes OUT/ai.json and, with gnuplot,
# OUT/ai.png.
#   WEIGHTS=1G DELAY=2ms RATE=200MiB OUT=bench-out scripts/bench/ai.sh
#
# Each case's weights read records the memory the guest reported to its
# host meanwhile (hostReportedMiB; see lib.sh: such reads are slower, lazy
# or not); NO_PAGE_REPORTING=1 stops the reporting for the run.
default_weights=1G default_text=0
NO_LAYOUT=1 source "$(dirname "$0")/lib.sh"
[ "$(id -u)" = 0 ] || { echo "ai.sh: run as root (mounts, chroot, drop_caches)" >&2; exit 1; }
lb=$work/lazyblk
out_dir=$(realpath -m "${OUT:-bench-out}")
mkdir -p "$out_dir"
port=${BENCH_PORT:-5841} proxy_port=$((port + 1))
delay=${DELAY:-2ms} rate=${RATE:-200MiB}
go build -o "$work/delayproxy" ./internal/tools/delayproxy
go build -o "$work/pullbench" ./internal/tools/pullbench

mnt=$work/mnt state=$work/run loopmnt=$work/loopmnt
mkdir -p "$mnt" "$loopmnt" "$work/pullroot"
cleanup() {
  set +e
  restore_page_reporting
  mountpoint -q "$mnt" && "$lb" umount --force --state-dir "$state" "$mnt"
  mountpoint -q "$loopmnt" && umount -d "$loopmnt"
  mountpoint -q "$work/pullroot" && umount "$work/pullroot"
  kill "${proxy_pid:-}" "${reg_pid:-}" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

stop_page_reporting

pkgs=python3,python3-numpy,python3-torch
rootfs=$(debian_root "$pkgs")

reg_pid=$(scripts/registry.sh "$work/registry" "$port")
"$work/delayproxy" -listen "127.0.0.1:$proxy_port" -target "127.0.0.1:$port" -delay "$delay" -rate "$rate" >"$work/proxy.log" 2>&1 &
proxy_pid=$!
reg=127.0.0.1:$port via=127.0.0.1:$proxy_port
echo "generating and pushing: $(du -h "$rootfs" | cut -f1) root + $(numfmt --to=iec "$weights") random weights"
"$work/genimage" -dir "$work" -base-tar "$rootfs" -weights "$weights" -text 0 "$reg/ai/torch:v1"
rm -f "$work"/genimage-*.tar
"$lb" convert --plain-http --tmp-dir "$work" "$reg/ai/torch:v1" "$reg/ai/torch:v1-lazyblk" >/dev/null

ms() { date +%s%3N; }
cold() { sync; echo 3 >/proc/sys/vm/drop_caches; }
# torch opens /dev/urandom: the host's /dev, bound over the image's (lazyblk
# mounts nodev, as containers' roots are).
import() {
  mount --bind /dev "$1/dev"
  chroot "$1" /usr/bin/python3 -c 'import torch; assert torch.ones(2).sum().item() == 2' || { umount "$1/dev"; return 1; }
  umount "$1/dev"
}
declare -A t touched hostmib
# weights DIR CASE: read the weights, noting the memory the guest reported
# to its host meanwhile.
weights() {
  local r0; r0=$(reported)
  cat "$1/models/weights.bin" >/dev/null
  hostmib[$2]=$(( ($(reported) - r0) / 1024 ))
}

# local: the image on a loop device, the floor, and what a block device
# reads for the import.
"$lb" cat --plain-http "$reg/ai/torch:v1-lazyblk" >"$work/image.erofs"
loop=$(losetup -r -f --show "$work/image.erofs")
mount -t erofs -o ro "$loop" "$loopmnt"
sectors() { awk '{print $3}' "/sys/block/$(basename "$loop")/stat"; }
cold
s0=$(sectors) t0=$(ms)
import "$loopmnt"
t[local_import]=$(( $(ms) - t0 ))
local_read=$(( ($(sectors) - s0) * 512 ))
t0=$(ms)
weights "$loopmnt" local
t[local_weights]=$(( $(ms) - t0 ))
umount -d "$loopmnt"
rm -f "$work/image.erofs"

# One lazy case: NAME REF CACHE [MOUNT FLAGS...]: the import, its touched
# chunk bytes (and its trace, kept as $work/NAME.trace.json), the weights.
lazy_case() {
  local c=$1 ref=$2 cache=$3; shift 3
  [ "$c" = warm ] || rm -rf "$cache"
  cold
  local t0; t0=$(ms)
  "$lb" mount --state-dir "$state" --plain-http --cache-dir "$cache" --cache-size 100GiB "$@" "$via/$ref" "$mnt" >/dev/null
  import "$mnt"
  t[${c}_import]=$(( $(ms) - t0 ))
  touched[$c]=$("$lb" prefetch record --state-dir "$state" --duration 0 --json -o "$work/$c.trace.json" "$mnt" |
    sed -n 's/.*"bytes": \([0-9]*\).*/\1/p')
  t0=$(ms)
  weights "$mnt" "$c"
  t[${c}_weights]=$(( $(ms) - t0 ))
  "$lb" umount --state-dir "$state" "$mnt"
}

lazy_case cold ai/torch:v1-lazyblk "$work/cache" --no-trace
"$lb" convert --plain-http --tmp-dir "$work" --startup-trace "$work/cold.trace.json" \
  "$reg/ai/torch:v1" "$reg/ai/torch:v1-ordered" >/dev/null
lazy_case ordered ai/torch:v1-ordered "$work/cache"
cp "$work/cold.trace.json" "$work/ordered.trace.json" "$out_dir/" # what the import read, by file
"$lb" cat --plain-http --cache-dir "$work/warm" --cache-size 100GiB "$reg/ai/torch:v1-lazyblk" >/dev/null
lazy_case warm ai/torch:v1-lazyblk "$work/warm" --no-trace

# fresh: the weights alone on a new mount.
rm -rf "$work/cache"
cold
"$lb" mount --state-dir "$state" --plain-http --cache-dir "$work/cache" --cache-size 100GiB --no-trace "$via/ai/torch:v1-lazyblk" "$mnt" >/dev/null
t0=$(ms)
weights "$mnt" fresh
t[fresh_weights]=$(( $(ms) - t0 ))
"$lb" umount --state-dir "$state" "$mnt"

# pull: download + unpack, then the workload.
cold
t0=$(ms)
"$work/pullbench" pull "$via/ai/torch:v1" "$work/pull" >/dev/null
mount -t overlay overlay -o "lowerdir=$work/pull/1:$work/pull/0" "$work/pullroot"
import "$work/pullroot"
t[pull_import]=$(( $(ms) - t0 ))
t0=$(ms)
weights "$work/pullroot" pull
t[pull_weights]=$(( $(ms) - t0 ))
umount "$work/pullroot"

ratio() { echo "scale=3; $1 / $2" | bc | sed 's/^\./0./'; }
mib() { echo "scale=1; $1 / 1048576" | bc; }
printf '\n%-8s %12s %12s %16s\n' case import weights "import touched"
for c in pull local cold ordered warm; do
  tb=-; [ -n "${touched[$c]:-}" ] && tb="$(mib "${touched[$c]}") MiB"
  [ "$c" = local ] && tb="$(mib "$local_read") MiB read"
  printf '%-8s %9s ms %9s ms %16s\n' "$c" "${t[${c}_import]}" "${t[${c}_weights]}" "$tb"
done
printf '%-8s %12s %9s ms\n' fresh - "${t[fresh_weights]}"
if [ "$(reported)" != 0 ]; then
  printf '\nmemory the guest reported to its host during each weights read (MiB):'
  for c in pull local cold ordered warm fresh; do printf ' %s %s' "$c" "${hostmib[$c]}"; done
  echo; echo "(reads that run while the guest reports are slower, lazy or not: NO_PAGE_REPORTING=1 stops it for a run)"
fi
r_ordered_warm=$(ratio "${t[ordered_import]}" "${t[warm_import]}")
r_cold_warm=$(ratio "${t[cold_import]}" "${t[warm_import]}")
r_weights=$(ratio "${t[fresh_weights]}" "${t[cold_weights]}")
r_touched=$(ratio "${touched[ordered]}" "$local_read")
r_touched_cold=$(ratio "${touched[cold]}" "$local_read")
cat <<EOF

import, cold with a start-up-ordered image and its trace / warm: $r_ordered_warm   (target <= 1.3)
import, cold without a trace / warm:                            $r_cold_warm   (target <= 2.0)
weights after the import, speed against a fresh mount:          $r_weights   (target >= 0.9)
chunk bytes the import touched / bytes a local block device read: ordered $r_touched (target <= 1.0), default layout $r_touched_cold
EOF
cat >"$out_dir/ai.json" <<EOF
{
  "image": {"packages": "$pkgs", "weightsBytes": $weights},
  "shaper": {"delay": "$delay", "rate": "$rate"},
  "ms": {
    "import": {"pull": ${t[pull_import]}, "local": ${t[local_import]}, "cold": ${t[cold_import]}, "ordered": ${t[ordered_import]}, "warm": ${t[warm_import]}},
    "weights": {"pull": ${t[pull_weights]}, "local": ${t[local_weights]}, "cold": ${t[cold_weights]}, "ordered": ${t[ordered_weights]}, "warm": ${t[warm_weights]}, "fresh": ${t[fresh_weights]}}
  },
  "hostReportedMiB": {"pull": ${hostmib[pull]}, "local": ${hostmib[local]}, "cold": ${hostmib[cold]}, "ordered": ${hostmib[ordered]}, "warm": ${hostmib[warm]}, "fresh": ${hostmib[fresh]}},
  "pageReportingStopped": $(page_reporting_stopped),
  "importBytes": {"localBlockDeviceRead": $local_read, "chunksTouchedCold": ${touched[cold]}, "chunksTouchedOrdered": ${touched[ordered]}},
  "ratios": {"orderedOverWarm": $r_ordered_warm, "coldOverWarm": $r_cold_warm, "weightsFreshOverAfterImport": $r_weights,
             "touchedOverLocalOrdered": $r_touched, "touchedOverLocalCold": $r_touched_cold}
}
EOF
echo "wrote $out_dir/ai.json"
if command -v gnuplot >/dev/null; then
  printf '# case import weights\n' >"$work/chart.dat"
  for c in pull local cold ordered warm; do printf '%s %s %s\n' "$c" "${t[${c}_import]}" "${t[${c}_weights]}" >>"$work/chart.dat"; done
  gnuplot <<EOF
set terminal pngcairo size 900,500 font ",11"
set output "$out_dir/ai.png"
set title "import torch, then read $(numfmt --to=iec "$weights") of weights, one mount (+$delay per request, $rate/s)"
set ylabel "seconds"
set style data histogram
set style histogram rowstacked
set style fill solid 0.8 border -1
set key top right
set grid ytics
plot "$work/chart.dat" using (\$2/1000):xtic(1) title "import torch", "" using (\$3/1000) title "then read the weights"
EOF
  echo "wrote $out_dir/ai.png"
fi
