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
  python3-libnbd qemu-utils       # libnbd from a script (EIO tests), qemu-img as an NBD client
  qemu-system-x86 busybox-static  # a QEMU guest with the 6.12 kernel for kernel NBD and ublk tests
  util-linux                      # mount, losetup
  bc time curl                    # benchmark arithmetic, peak RSS, registry readiness
  containerd runc                 # containerd 1.6 for the snapshotter tests
  debootstrap gnuplot-nox         # the cold-start benchmark: a real Debian root, its chart
  mdadm                           # scripts/setup-raid0.sh (run in the QEMU guest by its test)
  dmsetup                         # a cache volume failing with EIO (dm error, in the QEMU guest)
  fio                             # make bench-ublk: ublk against kernel NBD in the QEMU guest
  libseccomp-dev pkg-config       # runc 1.4 built by scripts/build-tools.sh (cgo, seccomp)
)

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: run as root (sudo make demo / sudo make test)" >&2
  exit 1
fi

# The guest kernel (6.12 cloud, with nbd.ko and ublk_drv.ko) comes from
# bookworm-backports; scripts/vm-kernel.sh unpacks it without installing it.
backports=/etc/apt/sources.list.d/lazyblk-backports.sources
if ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
  cat >"$backports" <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  apt-get update -qq
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
"$(dirname "$0")/vm-kernel.sh" >/dev/null
# containerd 2.x, runc 1.4, crictl and distribution v3, built once from
# the Go module proxy (a few minutes on a fresh machine, then cached).
"$(dirname "$0")/build-tools.sh" >/dev/null
echo "install-deps: all dependencies present"
