#!/usr/bin/env bash
# Installs everything lazyblk's demo and tests need on Debian 12, idempotently.
set -euo pipefail

packages=(
  ca-certificates git make gcc    # build
  docker-registry                 # a real OCI registry on loopback (distribution 2.8)
  umoci                           # an independent unpacker, the flattening reference
  erofs-utils                     # fsck.erofs, dump.erofs
  e2fsprogs                       # mkfs.ext4 -d and debugfs for --fs ext4
  libnbd-bin nbdkit fuse3         # NBD clients and the reference server
  util-linux                      # mount, losetup
  bc time curl                    # benchmark arithmetic, peak RSS, registry readiness
)

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: run as root (sudo make demo / sudo make test)" >&2
  exit 1
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v go >/dev/null && [ ! -x /usr/local/go/bin/go ]; then
  echo "install-deps: Go 1.26 is required (https://go.dev/dl); not found in PATH or /usr/local/go" >&2
  exit 1
fi
echo "install-deps: all dependencies present"
