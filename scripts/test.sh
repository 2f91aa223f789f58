#!/usr/bin/env bash
# The test suite, as `make test` and CI run it: groups of packages, each
# with its own explicit timeout, then a per-package timing summary.
#
#   race     every package but e2e, with the race detector: they hold the
#            concurrent code (fetcher, cache, blockdev, mounts, snapshotter,
#            fetcherd) and the conversion it serves.
#   e2e      the end-to-end package without the race detector: it drives
#            lazyblk binaries and real components, and the race runtime's
#            shadow memory made its in-process conversions take minutes on
#            some machines (446 s for one test against 28.6 s).
#   e2e-race a subset of e2e with race-built binaries (TestMain builds
#            lazyblk with -race when the test binary has it): mounts served
#            under concurrent readers, prefetch and the fetcher daemon.
#   soak     TestSoak for SOAK (default 2m): faults together, for long
#            (make soak runs it alone, for longer). Its summary line is
#            repeated at the end.
#
# Timeouts: about three times the slowest package measured on the slowest
# machine seen (README, "Tests"), so a slow machine passes and a hang
# still fails within minutes, never at go test's 10-minute default.
set -uo pipefail
cd "$(dirname "$0")/.."

GO=${GO:-go}
RACE_TIMEOUT=${RACE_TIMEOUT:-9m}
E2E_TIMEOUT=${E2E_TIMEOUT:-20m} # 456 s measured in session 15 (QEMU guests: ublk, microVM)
E2E_RACE_TIMEOUT=${E2E_RACE_TIMEOUT:-6m}
E2E_RACE_RUN='^(TestMountTree|TestPrefetchTrace|TestFetcherDaemon|TestCacheBoundAcrossMounts|TestStalledRegistryFailsFast)$'
export SOAK=${SOAK:-2m}
SOAK_TIMEOUT=${SOAK_TIMEOUT:-6m}

log=$(mktemp)
summary=$(mktemp)
trap 'rm -f "$log" "$summary"' EXIT
failed=0
start=$(date +%s)

# group NAME TIMEOUT ARGS...: runs go test, records each package's line.
group() {
  local name=$1 timeout=$2 t0 rc
  shift 2
  t0=$(date +%s)
  echo "== $name (timeout $timeout per package): go test $*"
  "$GO" test -count=1 -timeout "$timeout" "$@" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  ((rc == 0)) || failed=1
  # "ok  <pkg>  12.3s" and "FAIL  <pkg>  12.3s"; a timed-out package prints
  # its panic and then "FAIL <pkg> <time>" too.
  awk -v g="$name" -v to="$timeout" '($1 == "ok" || $1 == "FAIL") && $3 ~ /s$/ {
      t = $3; sub(/s$/, "", t); printf "%s %s %s %s %s\n", $1, g, $2, t, to }' "$log" >>"$summary"
  echo "== $name: $(($(date +%s) - t0)) s, exit $rc"
}

mapfile -t pkgs < <("$GO" list ./... | grep -v '/e2e$')
group race "$RACE_TIMEOUT" -race "${pkgs[@]}"
group e2e "$E2E_TIMEOUT" -skip '^TestSoak$' ./e2e
group e2e-race "$E2E_RACE_TIMEOUT" -race -run "$E2E_RACE_RUN" ./e2e
group soak "$SOAK_TIMEOUT" -v -run '^TestSoak$' ./e2e
soakline=$(grep '^soak: ' "$log" | tail -1)

echo
echo "== per-package times (slowest first), total $(($(date +%s) - start)) s"
sort -k4 -rn "$summary" | awk '{
    to = $5; secs = to; sub(/m$/, "", secs); secs *= 60
    printf "%-4s %-9s %-48s %7.1f s  %3d%% of %s\n", $1, $2, $3, $4, 100 * $4 / secs, to }'
echo "${soakline:-soak: no summary (see the soak group above)}"
exit $failed
