package e2e

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lazyblk/lazyblk/internal/testutil"
)

// holdProxy forwards to a registry and lets the guest script stage a
// crash with reads provably in flight: after GET /ctl/hold, blob range
// requests wait; GET /ctl/held returns once one is waiting; GET
// /ctl/release lets them go and stops holding. Each hold is a cycle of
// its own: a later hold's held waits for a request of that hold. Between
// GET /ctl/fail and GET /ctl/heal, blob range requests fail with 503.
type holdProxy struct {
	fail atomic.Bool
	mu   sync.Mutex // guards holding and last
	// holding is the cycle requests wait in, nil when not holding; last
	// is the newest cycle, which held waits on.
	holding, last *holdCycle
}

type holdCycle struct {
	held, release     chan struct{}
	heldOnce, relOnce sync.Once
}

func (p *holdProxy) cycles() (holding, last *holdCycle) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.holding, p.last
}

func (p *holdProxy) stopHolding() {
	p.mu.Lock()
	c := p.holding
	p.holding = nil
	p.mu.Unlock()
	if c != nil {
		c.relOnce.Do(func() { close(c.release) })
	}
}

func newHoldProxy(t *testing.T, host string) string {
	p := &holdProxy{}
	target, _ := url.Parse("http://" + host)
	rp := httputil.NewSingleHostReverseProxy(target)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		blobRange := strings.Contains(r.URL.Path, "/blobs/") && r.Header.Get("Range") != ""
		switch r.URL.Path {
		case "/ctl/hold":
			p.stopHolding()
			c := &holdCycle{held: make(chan struct{}), release: make(chan struct{})}
			p.mu.Lock()
			p.holding, p.last = c, c
			p.mu.Unlock()
			return
		case "/ctl/held":
			if _, c := p.cycles(); c != nil {
				select {
				case <-c.held:
				case <-r.Context().Done():
				}
			}
			return
		case "/ctl/release":
			p.stopHolding()
			return
		case "/ctl/fail", "/ctl/heal":
			p.fail.Store(r.URL.Path == "/ctl/fail")
			return
		}
		if p.fail.Load() && blobRange {
			http.Error(w, "failing on purpose", http.StatusServiceUnavailable)
			return
		}
		if c, _ := p.cycles(); c != nil && blobRange {
			c.heldOnce.Do(func() { close(c.held) })
			select {
			case <-c.release:
			case <-r.Context().Done():
				return
			}
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(func() {
		p.stopHolding()
		srv.Close()
	})
	return strings.TrimPrefix(srv.URL, "http://")
}

// staticLazyblk returns a static binary without the race detector, for a
// guest without libc and for memory measurements: TestMain's, unless that
// one is race-built.
func staticLazyblk(t testing.TB) string {
	t.Helper()
	if !testutil.Race {
		return lazyblk
	}
	bin := filepath.Join(t.TempDir(), "lazyblk")
	build := exec.Command("go", "build", "-o", bin, "../cmd/lazyblk")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("static build: %v\n%s", err, out)
	}
	return bin
}

// TestKernelNBD boots Debian's 6.12 kernel in QEMU and runs the production
// path there: lazyblk mount attaches /dev/nbdN over netlink with two
// connections and mounts erofs. With the first read of a file provably
// waiting on the registry (the first: a mount keeps the chunks it has
// fetched, in memory when it has no cache), the serving process is killed
// with SIGKILL and lazyblk reattach hands the live device new sockets: the
// read in flight (re-sent by the kernel after --io-timeout) and later ones
// complete correctly, and every file reads back exactly. Then the serving
// process and a running fetcher daemon are both killed with a read
// pending: the restarted daemon hands the device to a new server (its
// Recover), and the read completes correctly. umount leaves no nbd device
// behind.
func TestKernelNBD(t *testing.T) {
	testutil.RequireVM(t)
	host := testutil.GGCRRegistry(t)
	ref := host + "/vm/img:v1"
	_, image := testutil.BlockImage(t, ref, 8<<20)
	want := testutil.SnapshotErofs(t, bytes.NewReader(image))
	port := newHoldProxy(t, host)
	port = port[strings.LastIndex(port, ":")+1:]

	bin := staticLazyblk(t)
	ctl := "http://10.0.2.2:" + port + "/ctl/"
	script := fmt.Sprintf(`
REF=10.0.2.2:%s/vm/img:v1
/lazyblk mount --plain-http --connections 2 --io-timeout 5s $REF /mnt
grep ' /mnt ' /proc/mounts | sed 's/^/MOUNTS /'
ls /sys/block | grep nbd | sed 's/^/DEV /'
wget -q -O /dev/null %shold
sha256sum /mnt/random.bin > /tmp/inflight 2>&1 &
reader=$!
wget -q -O /dev/null %sheld
pid=$(sed -n 's/.*"pid": \([0-9]*\).*/\1/p' /run/lazyblk/mounts/*/state.json)
kill -9 $pid
wget -q -O /dev/null %srelease
/lazyblk reattach /mnt
wait $reader
sed 's/^/INFLIGHT /' /tmp/inflight
sha256sum /mnt/text.txt | sed 's/^/AFTER /'
cd /mnt && sha256sum random.bin text.txt zeros.bin small | sed 's/^/SUM /' && cd /
/lazyblk --log-level info fetcher 2>/tmp/f1.log &
fpid=$!
until grep -q "listening on" /tmp/f1.log; do sleep 0.1; done
pid=$(sed -n 's/.*"pid": \([0-9]*\).*/\1/p' /run/lazyblk/mounts/*/state.json)
kill -9 $pid $fpid
echo 3 > /proc/sys/vm/drop_caches
sha256sum /mnt/random.bin > /tmp/recover 2>&1 &
reader=$!
/lazyblk --log-level info fetcher 2>/tmp/f2.log &
fpid=$!
until grep -q "listening on" /tmp/f2.log; do sleep 0.1; done
wait $reader
sed 's/^/RECOVER /' /tmp/recover
grep -q "recover: reattached" /tmp/f2.log && echo RECOVERED-BY-DAEMON
kill $fpid
/lazyblk umount /mnt
(ls /sys/block; ls /dev) | grep nbd | sed 's/^/LEFT /' || true
grep -c ' /mnt ' /proc/mounts | sed 's/^/STILL-MOUNTED /' || true
`, port, ctl, ctl, ctl)
	out := testutil.Guest{
		Files:   map[string]string{"/lazyblk": bin},
		Modules: []string{"failover", "net_failover", "virtio_net", "libcrc32c", "erofs", "nbd nbds_max=0"},
		Script:  script,
	}.Boot(t, 5*time.Minute)
	logOnFailure := func() { t.Logf("console:\n%s", out) }

	if !strings.Contains(out, "GUEST-EXIT 0") {
		logOnFailure()
		t.Fatal("the guest script failed")
	}
	if !regexp.MustCompile(`MOUNTS /dev/nbd\d+ /mnt erofs ro`).MatchString(out) || !strings.Contains(out, "via netlink") {
		t.Errorf("not mounted from a kernel NBD device over netlink")
	}
	sums := map[string]string{}
	for _, m := range regexp.MustCompile(`(SUM|INFLIGHT|AFTER|RECOVER) ([0-9a-f]{64})  (\S+)`).FindAllStringSubmatch(out, -1) {
		sums[m[1]+" "+strings.TrimPrefix(m[3], "/mnt/")] = m[2]
	}
	for key, path := range map[string]string{
		"SUM random.bin": "random.bin", "SUM text.txt": "text.txt", "SUM zeros.bin": "zeros.bin", "SUM small": "small",
		"INFLIGHT random.bin": "random.bin", "AFTER text.txt": "text.txt", "RECOVER random.bin": "random.bin",
	} {
		if got := sums[key]; got != want[path].Digest {
			t.Errorf("%s: guest read sha256 %q, want %s", key, got, want[path].Digest)
		}
	}
	if !strings.Contains(out, "RECOVERED-BY-DAEMON") {
		t.Errorf("the restarted fetcher daemon did not reattach the device whose server was killed")
	}
	if strings.Contains(out, "LEFT ") || !strings.Contains(out, "STILL-MOUNTED 0") {
		t.Errorf("umount left a device or a mount behind")
	}
	if t.Failed() {
		logOnFailure()
	}
}
