#!/bin/sh
# setup-raid0.sh: stripe several empty block devices (e.g. EBS gp3 volumes,
# 125 MiB/s of writes each) into one RAID0 array with mdadm, make an ext4
# filesystem on it aligned to the stripe, and mount it for lazyblk's chunk
# cache. POSIX sh: it runs under busybox too.
#
#   scripts/setup-raid0.sh --dry-run /dev/nvme1n1 /dev/nvme2n1   # print the plan, change nothing
#   scripts/setup-raid0.sh --mount /var/lib/lazyblk/cache /dev/nvme1n1 /dev/nvme2n1
#
# It refuses, loudly and before changing anything, a device that holds a
# filesystem, a partition table or a RAID member signature, that has
# partitions, or that is mounted or in use by an array: wipe such a device
# yourself (wipefs -a DEVICE) if you mean to lose what is on it.
# (lazyblk can also stripe the cache itself over several mounted volumes:
# [cache] dirs = [...] in the fetcher's configuration; this script is for
# nodes that prefer one md device.)
set -eu

usage() {
	cat <<'EOF'
usage: setup-raid0.sh [--dry-run] [--md /dev/mdN] [--mount DIR] [--chunk KiB] DEVICE DEVICE...

  --dry-run    check the devices and print the plan; change nothing
  --md DEV     the array to create (default /dev/md0; must not exist)
  --mount DIR  where to mount it (default /var/lib/lazyblk/cache)
  --chunk KiB  RAID0 chunk size (default 512: each 4 MiB cache chunk is spread over
               8 RAID chunks, so one chunk write reaches up to 8 volumes)
EOF
}

die() {
	echo "setup-raid0: $*" >&2
	exit 2
}

refuse() {
	echo "setup-raid0: REFUSING to touch $1: $2." >&2
	echo "setup-raid0: nothing was changed. If you mean to destroy what is on $1, wipe it first (wipefs -a $1)." >&2
	exit 3
}

dry=0 md=/dev/md0 mnt=/var/lib/lazyblk/cache chunk=512
while [ $# -gt 0 ]; do
	case "$1" in
	--dry-run) dry=1 ;;
	--md) [ $# -ge 2 ] || die "--md needs a device"; md=$2; shift ;;
	--mount) [ $# -ge 2 ] || die "--mount needs a directory"; mnt=$2; shift ;;
	--chunk) [ $# -ge 2 ] || die "--chunk needs a size in KiB"; chunk=$2; shift ;;
	-h | --help) usage; exit 0 ;;
	--) shift; break ;;
	-*) usage >&2; die "unknown flag $1" ;;
	*) break ;;
	esac
	shift
done
[ $# -ge 2 ] || { usage >&2; die "a stripe needs at least two devices (got $#)"; }
case "$chunk" in '' | *[!0-9]*) die "--chunk $chunk: want KiB, a power of two of at least 4" ;; esac
[ "$chunk" -ge 4 ] && [ $((chunk & (chunk - 1))) -eq 0 ] || die "--chunk $chunk: want KiB, a power of two of at least 4"
case "$mnt" in /*) ;; *) die "--mount $mnt: want an absolute path" ;; esac
[ "$(id -u)" -eq 0 ] || [ "$dry" -eq 1 ] || die "run as root (or try --dry-run)"

# Each device must be a whole, empty, unused block device, named once.
seen=" "
for dev in "$@"; do
	case "$seen" in *" $(readlink -f "$dev") "*) die "$dev is named twice" ;; esac
	seen="$seen$(readlink -f "$dev") "
	[ -b "$dev" ] || refuse "$dev" "it is not a block device"
	name=$(basename "$(readlink -f "$dev")")
	if grep -q "^$(readlink -f "$dev") " /proc/mounts || grep -q "^$dev " /proc/mounts; then
		refuse "$dev" "it is mounted"
	fi
	if [ -r /proc/mdstat ] && grep -q "[[:space:]]$name\[" /proc/mdstat; then
		refuse "$dev" "it is part of a running md array (see /proc/mdstat)"
	fi
	for part in /sys/class/block/"$name"/"$name"*; do
		[ -e "$part" ] && refuse "$dev" "it has partitions ($(basename "$part"))"
	done
	sig=$(blkid "$dev" 2>/dev/null || true)
	[ -z "$sig" ] || refuse "$dev" "it is not empty: $sig"
done
if [ -e "$md" ]; then
	refuse "$md" "it exists already"
fi

n=$#
stride=$((chunk / 4)) # ext4 blocks of 4 KiB per chunk
echo "plan: a RAID0 array of $n devices for lazyblk's chunk cache"
echo "  mdadm --create $md --run --level=0 --chunk=${chunk} --raid-devices=$n $*"
echo "  mkfs.ext4 -q -L lazyblk-cache -E stride=$stride,stripe_width=$((stride * n)) $md"
echo "  mkdir -p $mnt && mount -o noatime $md $mnt"
echo "then: the fetcher's configuration keeps the cache there: [cache] dirs = [\"$mnt\"]"
missing=""
for tool in mdadm mkfs.ext4; do
	command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"
done
if [ "$dry" -eq 1 ]; then
	[ -z "$missing" ] || echo "note: a real run needs$missing (apt-get install mdadm e2fsprogs)"
	echo "dry run: nothing was changed"
	exit 0
fi
[ -z "$missing" ] || die "needs$missing (apt-get install mdadm e2fsprogs)"

# From here on a failure undoes what was done: no half-made array is left.
created=0
cleanup() {
	if [ "$created" -eq 1 ]; then
		echo "setup-raid0: failed; stopping $md and clearing the member signatures" >&2
		mdadm --stop "$md" >/dev/null 2>&1 || true
		mdadm --zero-superblock "$@" >/dev/null 2>&1 || true
	fi
}
trap 'cleanup "$@"' EXIT
mdadm --create "$md" --run --level=0 --chunk="$chunk" --raid-devices="$n" "$@"
created=1
mkfs.ext4 -q -L lazyblk-cache -E stride="$stride",stripe_width=$((stride * n)) "$md"
mkdir -p "$mnt"
mount -o noatime "$md" "$mnt"
created=0
trap - EXIT
echo "done: $md ($n devices) mounted on $mnt"
echo "to keep it across reboots:"
echo "  mdadm --detail --scan >> /etc/mdadm/mdadm.conf"
echo "  echo 'LABEL=lazyblk-cache $mnt ext4 noatime,nofail 0 2' >> /etc/fstab"
