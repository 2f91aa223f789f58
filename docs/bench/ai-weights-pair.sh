#!/bin/bash
# pair.sh MODE: after (import, then weights) or fresh (weights only); prints weights ms
W=/var/tmp/aiexp; lb=$W/lazyblk; mode=$1
mnt=$W/mnt; mkdir -p $mnt; rm -rf $W/cache
sync; echo 3 > /proc/sys/vm/drop_caches
ms() { date +%s%3N; }
$lb mount --state-dir $W/run --plain-http --cache-dir $W/cache --cache-size 100GiB --no-trace 127.0.0.1:5852/ai/torch:v1-lazyblk $mnt >/dev/null 2>&1
if [ $mode = after ]; then
  mount --bind /dev $mnt/dev; chroot $mnt /usr/bin/python3 -c 'import torch' 2>/dev/null; umount $mnt/dev
fi
t0=$(ms); cat $mnt/models/weights.bin > /dev/null; t1=$(ms)
echo "$mode $((t1-t0))"
$lb umount --state-dir $W/run $mnt
