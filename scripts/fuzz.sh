#!/usr/bin/env bash
# Fuzzes every parser that faces a peer for FUZZTIME each (default 30s),
# then copies what the fuzzer found interesting into the package's
# testdata/fuzz/<Target>/, the committed corpus `go test` replays every
# run. A crasher lands there too, and the run fails: fix it, keep the file.
#   scripts/fuzz.sh            (make fuzz; FUZZTIME=2m make fuzz)
set -euo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
FUZZTIME=${FUZZTIME:-30s}
cache=$("$GO" env GOCACHE)/fuzz
targets=(
  "blockdev FuzzServeConn"     # NBD negotiation and request loop, client and kernel sockets
  "imagefmt FuzzDecodeIndex"   # the chunk index blob
  "imagefmt FuzzTrace"         # the prefetch trace artifact, and the layout its files order
  "fetcher FuzzContentRange"   # a registry's Content-Range header
  "fetcher FuzzHostsTOML"      # containerd's hosts.toml
  "fetcherd FuzzRequests"      # the daemon's gRPC requests
)
status=0
for t in "${targets[@]}"; do
  read -r pkg target <<<"$t"
  echo "fuzz: $pkg $target for $FUZZTIME"
  if ! "$GO" test -run '^$' -fuzz "^$target\$" -fuzztime "$FUZZTIME" "./$pkg"; then
    echo "fuzz: $pkg $target FAILED: the crasher is in $pkg/testdata/fuzz/$target/" >&2
    status=1
  fi
  mod=$("$GO" list -f '{{.ImportPath}}' "./$pkg")
  if [ -d "$cache/$mod/$target" ]; then
    mkdir -p "$pkg/testdata/fuzz/$target"
    cp -n "$cache/$mod/$target"/* "$pkg/testdata/fuzz/$target/" 2>/dev/null || true
  fi
done
exit $status
