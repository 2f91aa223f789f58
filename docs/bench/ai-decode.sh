#!/bin/bash
# decode.sh: one cold import without a trace; prints wall ms and the mount's decode counters
W=/var/tmp/aiexp; lb=${LB:-$W/lazyblk}; mnt=$W/mnt; mkdir -p $mnt; rm -rf $W/cache
sync; echo 3 > /proc/sys/vm/drop_caches
ms() { date +%s%3N; }
$lb mount --state-dir $W/run --plain-http --cache-dir $W/cache --cache-size 100GiB --no-trace --fill-below 0 127.0.0.1:5852/ai/torch:${TAG:-v1-lazyblk} $mnt >/dev/null
mount --bind /dev $mnt/dev
t0=$(ms); chroot $mnt /usr/bin/python3 -c 'import torch' 2>/dev/null; t1=$(ms)
umount $mnt/dev
sock=$(ls $W/run/mounts/*/ctl.sock)
curl -s --unix-socket $sock http://m/stats | python3 -c "
import json,sys; s=json.load(sys.stdin)['image']
print('${TAG:-v1-lazyblk} import_ms $((t1-t0)) decode_cpu_s %.3f decode_wait_s %.3f fetched_MiB %.0f early %d misses %d requests %d' % (s['DecodeSeconds'], s['DecodeWaitSeconds'], s['BytesFetched']/2**20, s.get('EarlyReads', 0), s['Misses'], s['Requests']))"
$lb umount --state-dir $W/run $mnt
