#!/bin/bash
set -e
cd /work/main
W=/var/tmp/aiexp
reg_pid=$(scripts/registry.sh $W/registry 5851)
echo $reg_pid > $W/reg.pid
$W/delayproxy -listen 127.0.0.1:5852 -target 127.0.0.1:5851 -delay 2ms -rate 200MiB > $W/proxy.log 2>&1 &
echo $! > $W/proxy.pid
$W/genimage -dir $W -base-tar /var/tmp/lazyblk-bench-cache/rootfs-python3-python3-numpy-python3-torch.tar -weights 1073741824 -text 0 127.0.0.1:5851/ai/torch:v1
rm -f $W/genimage-*.tar
$W/lazyblk convert --plain-http --tmp-dir $W 127.0.0.1:5851/ai/torch:v1 127.0.0.1:5851/ai/torch:v1-lazyblk > /dev/null
echo setup done
