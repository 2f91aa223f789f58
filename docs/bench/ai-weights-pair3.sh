#!/bin/bash
# ai-weights-pair3.sh KIND MODE: one python3 process, as a model server: (after) import torch, then read the
# weights; (fresh) only read them. KIND lazy (fresh lazyblk mount, empty cache) or local (loop device).
# Needs docs/bench/ai-setup.sh first (registry 5851, shaper 5852, the image converted) and, for
# KIND local, the image as a file: lazyblk cat --plain-http 127.0.0.1:5851/ai/torch:v1-lazyblk >/var/tmp/aiexp/image.erofs
W=/var/tmp/aiexp; kind=$1 mode=$2; m=$W/mnt; mkdir -p $m
code=$(cat "$(dirname "$0")/ai-pyload.py")
if [ $kind = lazy ]; then
  rm -rf $W/cache; sync; echo 3 > /proc/sys/vm/drop_caches
  $W/lazyblk mount --state-dir $W/run --plain-http --cache-dir $W/cache --cache-size 100GiB --no-trace ${EXTRA:-} 127.0.0.1:5852/ai/torch:v1-lazyblk $m >/dev/null 2>&1
else
  loop=$(losetup -r -f --show $W/image.erofs); mount -t erofs -o ro $loop $m
  sync; echo 3 > /proc/sys/vm/drop_caches
fi
R=/sys/module/page_reporting/parameters/reported_kib; r0=$(cat $R)
mount --bind /dev $m/dev; ms=$(chroot $m /usr/bin/python3 -c "$code" $mode 2>/dev/null); umount $m/dev
echo "$kind $mode weights $ms ms (reported to the host during the process: $(( ($(cat $R)-r0)/1024 )) MiB)"
if [ $kind = lazy ]; then $W/lazyblk umount --state-dir $W/run $m; else umount -d $m; fi
