#!/usr/bin/env bash
# Cold start of an AI-style image, lazyblk against a plain pull, in one run,
# as root. The image: a Debian root from debootstrap with python3 and numpy
# (TORCH=1 adds python3-torch) plus WEIGHTS of random "model weights", in
# docker-registry on loopback behind a shaper: DELAY added to every request
# (the added RTT), CONN_RATE per response, RATE in all.
#
# Each case starts with an empty chunk cache and dropped page cache, and
# times from the first command to the end of the workload:
#   pull          download every layer in parallel, gunzip, unpack (as
#                 containerd does), overlay mount, workload
#   lazy          lazyblk mount (defaults, --no-trace), workload
#   lazy+trace    lazyblk mount replaying the trace recorded by "lazy"
#   warm          lazyblk mount with every chunk cached, workload
# Workloads: sparse (start python3, import numpy and stdlib packages) and
# dense (read the whole weights file, as a model server loads its model).
# The dense throughput is compared with a raw parallel download of the
# image's largest data blob, the weights' region (8 connections, 32 MiB
# ranges), through the same shaper.
#
# The sparse cases run SPARSE_RUNS rounds (default 3; lazy, lazy+trace, warm
# in turn) and report their medians; the dense ones run once.
#
# CHUNK_SIZE passes --chunk-size to convert (default: lazyblk's, 4MiB).
# FILL_BELOW passes --fill-below to every mount (default: lazyblk's, 8GiB,
# so the whole image fills in the background below demand).
#
# Prints a table and the ratios, writes OUT/coldstart.json and, with
# gnuplot, OUT/coldstart.png.
#   WEIGHTS=2G DELAY=2ms CONN_RATE=128MiB RATE=1GiB OUT=bench-out scripts/bench/coldstart.sh
default_weights=2G default_text=0
NO_LAYOUT=1 source "$(dirname "$0")/lib.sh"
[ "$(id -u)" = 0 ] || { echo "coldstart.sh: run as root (mounts, chroot, drop_caches)" >&2; exit 1; }
lb=$work/lazyblk
out_dir=$(realpath -m "${OUT:-bench-out}")
mkdir -p "$out_dir"
port=${BENCH_PORT:-5831} proxy_port=$((port + 1))
delay=${DELAY:-2ms} conn_rate=${CONN_RATE:-128MiB} rate=${RATE:-1GiB}
go build -o "$work/delayproxy" ./internal/tools/delayproxy
go build -o "$work/pullbench" ./internal/tools/pullbench

mnt=$work/mnt state=$work/run
mkdir -p "$mnt" "$work/pullroot"
cleanup() {
  set +e
  restore_page_reporting
  mountpoint -q "$mnt" && "$lb" umount --state-dir "$state" "$mnt"
  mountpoint -q "$work/pullroot" && umount "$work/pullroot"
  kill "${proxy_pid:-}" "${reg_pid:-}" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
stop_page_reporting
reported0=$(reported)

# The root file system, built once and kept in BENCH_CACHE.
pkgs=python3,python3-numpy
[ -n "${TORCH:-}" ] && pkgs=$pkgs,python3-torch
rootfs=$(debian_root "$pkgs")

reg_pid=$(scripts/registry.sh "$work/registry" "$port")
"$work/delayproxy" -listen "127.0.0.1:$proxy_port" -target "127.0.0.1:$port" -delay "$delay" -conn-rate "$conn_rate" -rate "$rate" &
proxy_pid=$!
src=127.0.0.1:$port/bench/ai:v1 lazy=127.0.0.1:$port/bench/ai:v1-lazyblk
via=127.0.0.1:$proxy_port
echo "generating and pushing: $(du -h "$rootfs" | cut -f1) root + $(numfmt --to=iec "$weights") random weights"
"$work/genimage" -dir "$work" -base-tar "$rootfs" -weights "$weights" -text "$text" "$src"
rm -f "$work"/genimage-*.tar
"$lb" convert --plain-http --tmp-dir "$work" ${CHUNK_SIZE:+--chunk-size "$CHUNK_SIZE"} "$src" "$lazy" >/dev/null
"$lb" inspect --plain-http --json "$lazy" >"$work/inspect.json"
field() { sed -n "s/.*\"$1\": \"\{0,1\}\([^\",]*\)\"\{0,1\},\{0,1\}$/\1/p" "$work/inspect.json" | head -1; }
image_size=$(field imageSize)
# The raw download reference: the largest data blob (the weights' region).
read -r data_digest data_size < <(python3 -c 'import json,sys
r = max(json.load(open(sys.argv[1]))["regions"], key=lambda r: r["storedBytes"])
print(r["blob"], r["storedBytes"])' "$work/inspect.json")

ms() { date +%s%3N; }
cold() { sync; echo 3 >/proc/sys/vm/drop_caches; }
sparse() { chroot "$1" /usr/bin/python3 -c 'import numpy, asyncio, json, decimal, email.parser, http.client, sqlite3, ssl, xml.etree.ElementTree; assert numpy.arange(10).sum() == 45'; }
dense() { cat "$1/models/weights.bin" >/dev/null; }
mount_lazy() { # CACHE [FLAGS...]
  local c=$1; shift
  "$lb" mount --state-dir "$state" --plain-http --cache-dir "$c" ${FILL_BELOW:+--fill-below "$FILL_BELOW"} "$@" \
    "$via/bench/ai:v1-lazyblk" "$mnt" >/dev/null
}
umount_lazy() { "$lb" umount --state-dir "$state" "$mnt"; }
declare -A t

echo "== cold start, $(numfmt --to=iec "$image_size") filesystem, registry + ${delay} per request, ${conn_rate}/s per connection, ${rate}/s in all"

# Plain pull: download + unpack once, then each workload on the result.
cold
t0=$(ms)
"$work/pullbench" pull "$via/bench/ai:v1" "$work/pull" >/dev/null
mount -t overlay overlay -o "lowerdir=$work/pull/1:$work/pull/0" "$work/pullroot"
t1=$(ms)
sparse "$work/pullroot"
t[pull_sparse]=$(( $(ms) - t0 ))
cold
t2=$(ms)
dense "$work/pullroot"
t[pull_dense]=$(( t1 - t0 + $(ms) - t2 ))
umount "$work/pullroot"
rm -rf "$work/pull"

# One case: CASE WORKLOAD CACHE [MOUNT FLAGS...]; its ms go into t[CASE_WORKLOAD]
# (sparse: appended to all[CASE], the median taken below).
declare -A all
run_case() {
  local c=$1 w=$2 dir=$3; shift 3
  [ "$c" = warm ] || rm -rf "$dir"
  cold
  local t0; t0=$(ms)
  mount_lazy "$dir" "$@"
  $w "$mnt"
  local took=$(( $(ms) - t0 ))
  if [ "$w" = sparse ]; then all[$c]+="$took "; else t[${c}_$w]=$took; fi
  [ "$w" = sparse ] || disk_io "$c"
  [ -z "${record:-}" ] || { "$lb" prefetch record --state-dir "$state" --duration 0 -o "$work/trace.json" "$mnt" >/dev/null; record=; }
  umount_lazy
}
# disk_io CASE: the serving process's disk reads and writes (MiB), mostly
# the chunk cache's: io[CASE_read], io[CASE_written].
declare -A io
disk_io() {
  local pid
  pid=$(sed -n 's/.*"pid": *\([0-9]*\).*/\1/p' "$state"/mounts/*/state.json)
  io[$1_read]=$(awk '/^read_bytes/ {print int($2 / 1048576)}' "/proc/$pid/io")
  io[$1_written]=$(awk '/^write_bytes/ {print int($2 / 1048576)}' "/proc/$pid/io")
}
median() { printf '%s\n' $1 | sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : int((a[NR/2] + a[NR/2+1]) / 2)}'; }

# Lazy without a trace; its first sparse run records the trace.
record=1 run_case lazy sparse "$work/cache" --no-trace
run_case lazy dense "$work/cache" --no-trace
"$lb" prefetch push --plain-http "$lazy" "$work/trace.json"
# Lazy with the trace.
run_case trace dense "$work/cache"
# Warm: every chunk cached (a cache of its own, filled once).
"$lb" cat --plain-http --cache-dir "$work/warm" --cache-size 1000GiB "$lazy" >/dev/null
run_case warm dense "$work/warm" --cache-size 1000GiB
# The sparse start, SPARSE_RUNS rounds (default 3) of lazy, lazy+trace and
# warm in turn: one start takes a second or two and varies run to run by
# more than the differences measured, so each case reports its median.
for r in $(seq "${SPARSE_RUNS:-3}"); do
  [ "$r" = 1 ] || run_case lazy sparse "$work/cache" --no-trace
  run_case trace sparse "$work/cache"
  run_case warm sparse "$work/warm" --cache-size 1000GiB
done
for c in lazy trace warm; do t[${c}_sparse]=$(median "${all[$c]}"); done

# The reference for dense throughput: the data blob, raw, in parallel.
cold
raw_ms=$("$work/pullbench" get "$via/bench/ai:v1-lazyblk" "$data_digest" | sed -n 's/.*"ms":\([0-9]*\).*/\1/p')

ratio() { echo "scale=3; $1 / $2" | bc | sed 's/^\./0./'; }
mbps() { echo "scale=1; $1 / 1048576 * 1000 / $2" | bc; }
printf '\nsparse runs (ms): lazy %s, lazy+trace %s, warm %s; medians below\n' "${all[lazy]% }" "${all[trace]% }" "${all[warm]% }"
printf '\n%-8s %10s %10s %12s %10s\n' workload pull lazy lazy+trace warm
for w in sparse dense; do
  printf '%-8s %8s ms %7s ms %9s ms %7s ms\n' $w "${t[pull_$w]}" "${t[lazy_$w]}" "${t[trace_$w]}" "${t[warm_$w]}"
done
r_cold_warm=$(ratio "${t[lazy_sparse]}" "${t[warm_sparse]}")
r_cold_pull=$(ratio "${t[lazy_sparse]}" "${t[pull_sparse]}")
r_trace_warm=$(ratio "${t[trace_sparse]}" "${t[warm_sparse]}")
dense_mbps=$(mbps "$weights" "${t[lazy_dense]}") raw_mbps=$(mbps "$data_size" "$raw_ms")
r_dense=$(ratio "$dense_mbps" "$raw_mbps")
cat <<EOF

sparse, cold without trace / warm:   $r_cold_warm   (target <= 1.3)
sparse, cold with trace / warm:      $r_trace_warm
sparse, cold without trace / pull:   $r_cold_pull   (target <= 0.1)
dense, lazy $dense_mbps MiB/s vs raw parallel download $raw_mbps MiB/s: $r_dense   (target >= 0.9)
dense, the serving process's disk I/O for $((weights / 1048576)) MiB read: lazy ${io[lazy_read]} MiB read, ${io[lazy_written]} MiB written; lazy+trace ${io[trace_read]} / ${io[trace_written]}; warm ${io[warm_read]} / ${io[warm_written]}
EOF

cat >"$out_dir/coldstart.json" <<EOF
{
  "image": {"filesystemBytes": $image_size, "weightsBytes": $weights, "packages": "${pkgs}"},
  "hostReportedMiB": $(( ($(reported) - reported0) / 1024 )), "pageReportingStopped": $(page_reporting_stopped),
  "shaper": {"delay": "$delay", "connRate": "$conn_rate", "rate": "$rate"}, "fillBelow": "${FILL_BELOW:-default}", "chunkSize": "${CHUNK_SIZE:-default}",
  "ms": {
    "sparse": {"pull": ${t[pull_sparse]}, "lazy": ${t[lazy_sparse]}, "lazyTrace": ${t[trace_sparse]}, "warm": ${t[warm_sparse]}},
    "sparseRuns": {"lazy": [$(echo ${all[lazy]} | tr ' ' ',')], "lazyTrace": [$(echo ${all[trace]} | tr ' ' ',')], "warm": [$(echo ${all[warm]} | tr ' ' ',')]},
    "dense": {"pull": ${t[pull_dense]}, "lazy": ${t[lazy_dense]}, "lazyTrace": ${t[trace_dense]}, "warm": ${t[warm_dense]}},
    "rawDownload": $raw_ms
  },
  "denseDiskMiB": {"lazy": {"read": ${io[lazy_read]}, "written": ${io[lazy_written]}}, "lazyTrace": {"read": ${io[trace_read]}, "written": ${io[trace_written]}},
                   "warm": {"read": ${io[warm_read]}, "written": ${io[warm_written]}}},
  "ratios": {"sparseColdOverWarm": $r_cold_warm, "sparseTraceOverWarm": $r_trace_warm,
             "sparseColdOverPull": $r_cold_pull, "denseOverRawDownload": $r_dense}
}
EOF
echo "wrote $out_dir/coldstart.json"
if command -v gnuplot >/dev/null; then
  printf '# case sparse dense\npull %s %s\nlazy %s %s\nlazy+trace %s %s\nwarm %s %s\n' \
    "${t[pull_sparse]}" "${t[pull_dense]}" "${t[lazy_sparse]}" "${t[lazy_dense]}" \
    "${t[trace_sparse]}" "${t[trace_dense]}" "${t[warm_sparse]}" "${t[warm_dense]}" >"$work/chart.dat"
  gnuplot <<EOF
set terminal pngcairo size 900,500 font ",11"
set output "$out_dir/coldstart.png"
set title "Cold start to workload done ($(numfmt --to=iec "$image_size") image, +$delay RTT, $conn_rate/s per connection)"
set ylabel "seconds (log scale)"
set logscale y
set style data histogram
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set key top left
set grid ytics
plot "$work/chart.dat" using (\$2/1000):xtic(1) title "sparse: python3 + import numpy", \
     "" using (\$3/1000) title "dense: read all weights"
EOF
  echo "wrote $out_dir/coldstart.png"
fi
