#!/usr/bin/env bash
# Fetches Debian's 6.12 cloud kernel (it has nbd.ko and ublk_drv.ko; the host
# kernel has neither) and unpacks it under $LAZYBLK_VM_DIR (default
# /var/cache/lazyblk/vm) without installing it: the QEMU-guest tests boot it.
# Prints the directory. Idempotent.
set -euo pipefail
dir=${LAZYBLK_VM_DIR:-/var/cache/lazyblk/vm}
if [ -f "$dir/vmlinuz" ] && [ -d "$dir/modules" ]; then
  echo "$dir"
  exit 0
fi
pkg=$(apt-cache depends linux-image-6.12-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-6.12/ {print $2; exit}')
if [ -z "$pkg" ]; then
  echo "vm-kernel: no linux-image-6.12-cloud-amd64 in apt's lists; install-deps.sh adds bookworm-backports" >&2
  exit 1
fi
mkdir -p "${dir%/*}"
tmp=$(mktemp -d "${dir%/*}/.vm.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
chown _apt "$tmp" 2>/dev/null || true # apt downloads as _apt when it can
(cd "$tmp" && apt-get download -qq "$pkg" >/dev/null)
dpkg-deb -x "$tmp"/*.deb "$tmp/root"
mkdir -p "$tmp/out"
cp "$tmp"/root/boot/vmlinuz-* "$tmp/out/vmlinuz"
mv "$tmp"/root/lib/modules/* "$tmp/out/modules"
rm -rf "$dir"
mv "$tmp/out" "$dir"
echo "$dir"
