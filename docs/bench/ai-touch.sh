#!/bin/bash
# touch2.sh: after dropping caches, write 8 x 1 GiB into tmpfs, timing each GiB
sync; echo 3 > /proc/sys/vm/drop_caches
for i in 1 2 3 4 5 6 7 8; do
  t0=$(date +%s%3N); dd if=/dev/zero of=/dev/shm/touch$i bs=1M count=1024 status=none; t1=$(date +%s%3N)
  printf "%d:%d " $i $((t1-t0))
done; echo; rm -f /dev/shm/touch*
