package e2e

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lazyblk/lazyblk/internal/testutil"
)

// soakKernel is the soak's part that needs a kernel block device, in a
// QEMU guest with Debian's 6.12 kernel: a mount through the kernel's NBD
// driver, readers checking whole files by sha256 with the page cache
// dropped between rounds, the registry faulting at seeded random times,
// and the serving process killed with SIGKILL every few seconds and
// replaced by `lazyblk reattach` under the live device (what nbdfuse
// cannot do). Reads in flight are re-sent by the kernel to the new
// server. It adds what it saw to s and returns the leaks the guest found.
func soakKernel(t *testing.T, s *soak, seed uint64, dur time.Duration) (leaks int64) {
	testutil.RequireVM(t)
	host := testutil.GGCRRegistry(t)
	_, image := testutil.BlockImage(t, host+"/ksoak/img:v1", 12<<20)
	want := testutil.SnapshotErofs(t, bytes.NewReader(image))
	rng := rand.New(rand.NewPCG(seed, 4))
	var faulting atomic.Bool
	kinds := []testutil.Fault{testutil.Status503, testutil.Reset, testutil.Truncate, testutil.Flip, testutil.Slow}
	var mu sync.Mutex
	pick := rand.New(rand.NewPCG(seed, 5))
	proxy := testutil.FaultProxy(t, host, func(n int64, _ *http.Request) testutil.Fault {
		s.proxied.Add(1)
		if !faulting.Load() {
			return testutil.Pass
		}
		mu.Lock()
		r, k := pick.IntN(100), pick.IntN(len(kinds))
		mu.Unlock()
		if r >= 20 {
			return testutil.Pass
		}
		f := kinds[k]
		s.count(&s.faults, "kernel: "+map[testutil.Fault]string{testutil.Status503: "503", testutil.Reset: "reset",
			testutil.Truncate: "truncated", testutil.Flip: "corrupted", testutil.Slow: "slow"}[f])
		return f
	})
	stop := make(chan struct{})
	defer close(stop)
	go func() { // fault bursts of 2 s, every 2-6 s
		for {
			sleepOrStop(time.Duration(2000+rng.IntN(4000))*time.Millisecond, stop)
			faulting.Store(true)
			sleepOrStop(2*time.Second, stop)
			faulting.Store(false)
			select {
			case <-stop:
				return
			default:
			}
		}
	}()

	port := proxy[strings.LastIndex(proxy, ":")+1:]
	var sums strings.Builder
	files := []string{"random.bin", "text.txt", "zeros.bin", "small"}
	for _, f := range files {
		fmt.Fprintf(&sums, "%s  /mnt/%s\n", want[f].Digest, f)
	}
	script := fmt.Sprintf(`
cat > /want <<'EOF'
%sEOF
/lazyblk mount --plain-http --connections 2 --io-timeout 3s --attempt-timeout 1s --read-timeout 10s --fill-below 0 10.0.2.2:%s/ksoak/img:v1 /mnt || exit 1
reader() {
  while [ ! -e /tmp/stop ]; do
    # A file whose read fails (EIO: the faults outlasted the read's
    # deadline) has no digest and counts as F; under sh -e, a bare
    # failing sha256sum ended the reader and then the script.
    sha256sum /mnt/random.bin /mnt/text.txt /mnt/zeros.bin /mnt/small > /tmp/got.$1 2>>/tmp/err.$1 || true
    for f in random.bin text.txt zeros.bin small; do
      w=$(grep " /mnt/$f\$" /want | cut -d' ' -f1); g=$(grep " /mnt/$f\$" /tmp/got.$1 | cut -d' ' -f1)
      if [ -z "$g" ]; then echo F; elif [ "$g" = "$w" ]; then echo O; else echo W; fi
    done >> /tmp/r.$1
    echo 3 > /proc/sys/vm/drop_caches
  done
}
reader 1 & r1=$!
reader 2 & r2=$!
end=$(( $(date +%%s) + %d ))
kills=0; reattached=0
while [ $(date +%%s) -lt $end ]; do
  sleep $(( 2 + RANDOM %% 4 ))
  pid=$(sed -n 's/.*"pid": \([0-9]*\).*/\1/p' /run/lazyblk/mounts/*/state.json)
  kill -9 $pid && kills=$((kills+1))
  /lazyblk reattach /mnt >/dev/null 2>&1 && reattached=$((reattached+1))
done
touch /tmp/stop
wait $r1 $r2
cat /tmp/r.1 /tmp/r.2 > /tmp/r
echo "KSOAK ok $(grep -c O /tmp/r) failed $(grep -c F /tmp/r) wrong $(grep -c W /tmp/r) kills $kills reattached $reattached"
sort -u /tmp/err.1 /tmp/err.2 | head -5 | sed 's/^/KERR /'
/lazyblk umount /mnt
(ls /sys/block; ls /dev) | grep nbd | sed 's/^/LEFT /' || true
grep -c ' /mnt ' /proc/mounts | sed 's/^/STILL-MOUNTED /' || true
ps | grep -c '[l]azyblk' | sed 's/^/PROCS /'
`, sums.String(), port, int(dur.Seconds()))
	out := testutil.Guest{
		Files:   map[string]string{"/lazyblk": staticLazyblk(t)},
		Modules: []string{"failover", "net_failover", "virtio_net", "libcrc32c", "erofs", "nbd nbds_max=0"},
		Script:  script,
	}.Boot(t, dur+4*time.Minute)
	m := regexp.MustCompile(`KSOAK ok (\d+) failed (\d+) wrong (\d+) kills (\d+) reattached (\d+)`).FindStringSubmatch(out)
	if m == nil || !strings.Contains(out, "GUEST-EXIT 0") {
		t.Fatalf("the guest soak did not finish:\n%s", out)
	}
	n := func(i int) int64 { v, _ := strconv.ParseInt(m[i], 10, 64); return v }
	s.verified.Add(n(1))
	s.failed.Add(n(2))
	s.wrong.Add(n(3))
	for range n(4) {
		s.count(&s.events, "kernel: kill server")
	}
	t.Logf("kernel NBD in the guest, %v: %d whole-file reads verified, %d failed, %d wrong; %d SIGKILLs, %d reattached; %s",
		dur, n(1), n(2), n(3), n(4), n(5), strings.Join(regexp.MustCompile(`KERR .*`).FindAllString(out, -1), "; "))
	if n(5) != n(4) {
		t.Errorf("%d of %d killed servers were replaced by lazyblk reattach", n(5), n(4))
	}
	if n(1) == 0 || n(3) > 0 {
		t.Errorf("guest readers: %d verified, %d wrong", n(1), n(3))
	}
	if strings.Contains(out, "LEFT ") || !strings.Contains(out, "STILL-MOUNTED 0") || !strings.Contains(out, "PROCS 0") {
		t.Errorf("the guest's umount left a device, a mount or a process:\n%s", out)
		leaks++
	}
	return leaks
}
