package e2e

import (
	"fmt"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lazyblk/lazyblk/internal/testutil"
)

// BenchmarkUblkVsNBD compares the two kernel paths on one image in one
// guest (Debian's 6.12 kernel under QEMU's software emulation, which
// slows both; the ratio is what counts): the image is mounted through
// ublk, then through kernel NBD over netlink, twice each in turn; each
// time every chunk is fetched first (a warm mount) and the page cache is
// dropped, then fio reads the block device with direct I/O: sequentially
// in 1 MiB blocks (queue depth 8), and 4 KiB random reads at queue depth
// 32. It reports MiB/s and IOPS of each path (medians) and ublk/NBD.
//
//	make bench-ublk
func BenchmarkUblkVsNBD(b *testing.B) {
	testutil.RequireVM(b)
	fio, err := exec.LookPath("fio")
	if err != nil {
		b.Fatalf("needs fio (apt install fio): %v", err)
	}
	host := testutil.GGCRRegistry(b)
	_, image := testutil.BlockImage(b, host+"/vm/img:v1", 64<<20)
	port := host[strings.LastIndex(host, ":")+1:]
	mb := len(image) >> 20
	script := fmt.Sprintf(`REF=10.0.2.2:%s/vm/img:v1
run() { # path round
  /lazyblk mount --plain-http --attach $1 $REF /mnt >/dev/null
  DEV=$(sed -n 's/^\(\/dev\/[a-z]*[0-9]*\) \/mnt .*/\1/p' /proc/mounts)
  dd if=$DEV of=/dev/null bs=1M 2>/dev/null
  echo 3 > /proc/sys/vm/drop_caches
  /usr/bin/fio --minimal --name=seq --filename=$DEV --readonly --direct=1 --ioengine=libaio --rw=read --bs=1M --iodepth=8 --size=%dM --loops=3 | cut -d';' -f7,8 | sed "s/^/FIO $1 seq $2 /"
  /usr/bin/fio --minimal --name=rand --filename=$DEV --readonly --direct=1 --ioengine=libaio --rw=randread --bs=4k --iodepth=32 --size=%dM --time_based --runtime=8 | cut -d';' -f7,8 | sed "s/^/FIO $1 rand $2 /"
  /lazyblk umount /mnt
}
for r in 1 2; do run ublk $r; run netlink $r; done
`, port, mb, mb)
	for range b.N {
		out := testutil.Guest{
			Files:    map[string]string{"/lazyblk": staticLazyblk(b)},
			Binaries: []string{fio},
			Modules:  []string{"failover", "net_failover", "virtio_net", "libcrc32c", "erofs", "ublk_drv", "nbd nbds_max=0"},
			Script:   script,
		}.Boot(b, 15*time.Minute)
		if !strings.Contains(out, "GUEST-EXIT 0") {
			b.Fatalf("the guest script failed; console:\n%s", out)
		}
		bw := map[string][]float64{}
		for _, m := range regexp.MustCompile(`FIO (\S+) (\S+) \d+ (\d+);(\d+)`).FindAllStringSubmatch(out, -1) {
			kib, _ := strconv.ParseFloat(m[3], 64)
			iops, _ := strconv.ParseFloat(m[4], 64)
			bw[m[1]+" "+m[2]+" MiB/s"] = append(bw[m[1]+" "+m[2]+" MiB/s"], kib/1024)
			bw[m[1]+" "+m[2]+" iops"] = append(bw[m[1]+" "+m[2]+" iops"], iops)
		}
		med := func(k string) float64 {
			v := slices.Sorted(slices.Values(bw[k]))
			if len(v) == 0 {
				b.Fatalf("no fio result for %s; console:\n%s", k, out)
			}
			return (v[(len(v)-1)/2] + v[len(v)/2]) / 2
		}
		seqU, seqN := med("ublk seq MiB/s"), med("netlink seq MiB/s")
		randU, randN := med("ublk rand iops"), med("netlink rand iops")
		b.ReportMetric(seqU, "ublk-seq-MiB/s")
		b.ReportMetric(seqN, "nbd-seq-MiB/s")
		b.ReportMetric(seqU/seqN, "seq-ublk/nbd")
		b.ReportMetric(randU, "ublk-rand4k-iops")
		b.ReportMetric(randN, "nbd-rand4k-iops")
		b.ReportMetric(randU/randN, "rand-ublk/nbd")
		b.Logf("runs: %v", bw)
	}
}
