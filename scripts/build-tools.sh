#!/usr/bin/env bash
# Builds the tools the CRI and registry tests need that Debian 12 does not
# ship, from the Go module proxy at pinned versions, into a cache that
# survives clones: /var/cache/lazyblk/tools/NAME-VERSION/. A tool already
# built is not built again. Prints the bin directory of each, one per line,
# for PATH; `make deps` runs it.
#   containerd 2.x and its runc shim   (CRI on containerd 2.x)
#   runc v1.4.x                        (Debian's 1.1.5 cannot start containerd 2.x's pods)
#   crictl                             (the kubelet's side of CRI, for tests)
#   distribution v3 registry           (the second registry of the registry tests)
set -euo pipefail

cache=${LAZYBLK_TOOLS:-/var/cache/lazyblk/tools}
GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}

# build NAME VERSION MODULE/PATH... [-- ENV...]: go install each package
# of MODULE at VERSION into $cache/NAME-VERSION; atomically, so an
# interrupted build leaves nothing that looks built.
build() {
  local name=$1 version=$2 module=$3; shift 3
  local dir=$cache/$name-$version
  if [ -f "$dir/.built" ]; then echo "$dir"; return; fi
  local tmp=$dir.tmp.$$
  rm -rf "$tmp"; mkdir -p "$tmp"
  echo "build-tools: building $name $version (once; cached in $dir)" >&2
  local start=$SECONDS pkg
  for pkg in "$@"; do
    local path=$module/$pkg; [ "$pkg" = . ] && path=$module
    if ! GOBIN=$tmp GOFLAGS=-mod=mod CGO_ENABLED=${CGO:-0} "$GO" install ${TAGS:+-tags "$TAGS"} "$path@$version" >&2; then
      rm -rf "$tmp"
      echo "build-tools: building $name $version failed" >&2
      return 1
    fi
  done
  touch "$tmp/.built"
  rm -rf "$dir"; mv "$tmp" "$dir"
  echo "build-tools: $name $version built in $((SECONDS - start)) s" >&2
  echo "$dir"
}

build containerd v2.4.2 github.com/containerd/containerd/v2 cmd/containerd cmd/containerd-shim-runc-v2
CGO=1 TAGS=seccomp build runc v1.4.4 github.com/opencontainers/runc .
build crictl v1.37.0 sigs.k8s.io/cri-tools cmd/crictl
build distribution v3.0.0 github.com/distribution/distribution/v3 cmd/registry
