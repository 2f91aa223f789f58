# Shared set-up for the benchmark scripts (sourced, not run).
# Sets $weights, $text (bytes, from WEIGHTS/TEXT with K/M/G suffixes), $work (a
# temp dir removed on exit), builds $work/lazyblk and $work/genimage, and
# writes the generated image as the OCI layout $work/src (tag v1) unless
# NO_LAYOUT is set.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export PATH="$PATH:/usr/local/go/bin"
weights=$(numfmt --from=iec "${WEIGHTS:-$default_weights}")
text=$(numfmt --from=iec "${TEXT:-$default_text}")
work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/lazyblk-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
go build -o "$work/genimage" ./internal/tools/genimage
go build -o "$work/lazyblk" ./cmd/lazyblk
if [ -z "${NO_LAYOUT:-}" ]; then
  echo "generating: $(numfmt --to=iec "$weights") random weights + $(numfmt --to=iec "$text") text"
  "$work/genimage" -dir "$work" -weights "$weights" -text "$text" -layout "$work/src"
  rm -f "$work"/genimage-*.tar
fi

# debian_root PKGS: prints the path of a tar of a Debian bookworm minbase
# root with PKGS (comma-separated), built once with debootstrap and kept
# in BENCH_CACHE.
debian_root() {
  local pkgs=$1 cache_dir=${BENCH_CACHE:-/var/tmp/lazyblk-bench-cache}
  local rootfs=$cache_dir/rootfs-${pkgs//,/-}.tar
  if [ ! -f "$rootfs" ]; then
    echo "debootstrap: Debian bookworm minbase + ${pkgs//,/ } (once; kept in $rootfs)" >&2
    mkdir -p "$cache_dir"
    rm -rf "$cache_dir/rootfs.tmp"
    debootstrap --variant=minbase --include="$pkgs" bookworm "$cache_dir/rootfs.tmp" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$cache_dir/debootstrap.log" 2>&1 ||
      { tail -20 "$cache_dir/debootstrap.log" >&2; return 1; }
    rm -rf "$cache_dir"/rootfs.tmp/var/cache/apt/archives/*.deb
    tar -C "$cache_dir/rootfs.tmp" --numeric-owner -cf "$rootfs.tmp" . && mv "$rootfs.tmp" "$rootfs"
    rm -rf "$cache_dir/rootfs.tmp"
  fi
  echo "$rootfs"
}

# Free page reporting. A VM whose guest reports freed memory to its host
# (virtio-balloon; /sys/module/page_reporting) runs a read several times
# slower while it reports, lazily or from a local disk alike: a process
# that exits frees its memory, the guest reports it, and the host faults
# it back in under the next reader (docs/bench/ai-weights-reporting.txt).
# reported prints the KiB reported so far (0 without reporting);
# NO_PAGE_REPORTING=1 makes stop_page_reporting stop it for the run
# (page_reporting_order past the largest order; then it touches most free
# memory once, so the run does not pay for what was reported before), and
# restore_page_reporting, which the script's cleanup calls, restores it.
reporting=/sys/module/page_reporting/parameters
reported() { cat "$reporting/reported_kib" 2>/dev/null || echo 0; }
stop_page_reporting() {
  if [ -n "${NO_PAGE_REPORTING:-}" ] && [ -w "$reporting/page_reporting_order" ]; then
    saved_order=$(cat "$reporting/page_reporting_order")
    echo 11 >"$reporting/page_reporting_order"
    # What the guest reported before stays with the host until touched
    # again, and a first touch is as slow: write most free memory once.
    local gib t0
    local shm; shm=$(df --output=avail -B1G /dev/shm | tail -1)
    gib=$(awk -v shm="$shm" '/MemAvailable/ {g = int($2 / 1048576) - 4; if (g > shm - 1) g = shm - 1; print (g > 16 ? 16 : (g < 0 ? 0 : g))}' /proc/meminfo)
    t0=$(date +%s)
    dd if=/dev/zero of=/dev/shm/lazyblk-bench-touch bs=1M count=$((gib * 1024)) status=none || true
    rm -f /dev/shm/lazyblk-bench-touch
    echo "free page reporting stopped for the run (page_reporting_order $saved_order -> 11); $gib GiB of memory touched in $(( $(date +%s) - t0 )) s"
  fi
}
restore_page_reporting() {
  if [ -n "${saved_order:-}" ]; then echo "$saved_order" >"$reporting/page_reporting_order"; fi
}
page_reporting_stopped() { if [ -n "${saved_order:-}" ]; then echo true; else echo false; fi; }
