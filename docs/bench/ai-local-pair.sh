#!/bin/bash
# ai-local-pair.sh MODE (after, fresh, or churn: a python3 that allocates and frees 1 GiB first): the erofs image on a loop device; after (import, then weights) or fresh; weights ms
W=/var/tmp/aiexp; mode=$1; m=$W/loopmnt; mkdir -p $m
loop=$(losetup -r -f --show $W/image.erofs); mount -t erofs -o ro $loop $m
sync; echo 3 > /proc/sys/vm/drop_caches
[ $mode = churn ] && python3 -c "b=b\"x\"*(1<<30)"
if [ $mode = after ]; then mount --bind /dev $m/dev; chroot $m /usr/bin/python3 -c 'import torch' 2>/dev/null; umount $m/dev; fi
[ -n "${PERF:-}" ] && { perf record -a -g -o $W/perf-local-$mode.data -- sleep 2 >/dev/null 2>&1 & }
t0=$(date +%s%3N); cat $m/models/weights.bin >/dev/null; t1=$(date +%s%3N)
echo "local $mode $((t1-t0))"; umount -d $m
