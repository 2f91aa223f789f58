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
