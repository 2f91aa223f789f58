package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lazyblk/lazyblk/fetcher"
	"github.com/lazyblk/lazyblk/internal/testutil"
	"github.com/lazyblk/lazyblk/mounts"
)

// stallProxy is a registry that stops answering once it has served a
// number of blob bytes: range requests past the allowance hang until the
// client gives up. allow(-1) lifts the limit.
type stallProxy struct {
	host   string
	limit  atomic.Int64 // bytes it may serve in all; -1: no limit
	served atomic.Int64
	sent   atomic.Int64 // range requests received
}

func newStallProxy(t *testing.T, registry string) *stallProxy {
	p := &stallProxy{}
	p.limit.Store(-1)
	p.host = testutil.FaultProxy(t, registry, func(_ int64, r *http.Request) testutil.Fault {
		p.sent.Add(1)
		var from, to int64
		if _, err := fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-%d", &from, &to); err != nil {
			return testutil.Pass
		}
		if lim := p.limit.Load(); lim >= 0 && p.served.Load()+to-from+1 > lim {
			return testutil.Hang
		}
		p.served.Add(to - from + 1)
		return testutil.Pass
	})
	return p
}

// stallImage converts an image of three random files to ref's repository
// and returns the reference through p and the files' bytes.
func stallImage(t *testing.T, e *mountEnv, p *stallProxy, repo string) (string, map[string][]byte) {
	t.Helper()
	files := map[string][]byte{"small.bin": testutil.Random(1<<20, 31), "big.bin": testutil.Random(64<<20, 32),
		"other.bin": testutil.Random(16<<20, 33)}
	var entries []testutil.Entry
	for name, b := range files {
		entries = append(entries, testutil.File(name, 0o644, string(b)))
	}
	src, dst := e.host+"/"+repo+":src", e.host+"/"+repo+":v1"
	push(t, src, testutil.Image(t, false, testutil.Layer(t, entries, testutil.Uncompressed, false)))
	if _, stderr, code := run(t, "convert", "--plain-http", src, dst); code != 0 {
		t.Fatalf("convert: exit %d: %s", code, stderr)
	}
	return p.host + "/" + repo + ":v1", files
}

// readFile reads a file of a mount with cat, as a user would, and returns
// its bytes and cat's error output.
func readFile(t *testing.T, path string) ([]byte, string, error) {
	t.Helper()
	var out, errb bytes.Buffer
	cmd := exec.Command("cat", path)
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return out.Bytes(), errb.String(), err
}

// registryHost returns the mount's breaker for host.
func registryHost(t *testing.T, m *mounts.Manager, dir, host string) fetcher.HostStats {
	t.Helper()
	s, err := m.Stats(context.Background(), must(m.Get(dir)))
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range s.Image.Hosts {
		if h.Host == host {
			return h
		}
	}
	t.Fatalf("the mount reads from %+v, not %s", s.Image.Hosts, host)
	return fetcher.HostStats{}
}

// TestStalledRegistryFailsFast: through nbdfuse, a registry that stops
// answering 6 MiB into a 64 MiB file fails the reader with EIO within the
// read deadline — not after a read deadline per 128 KiB the kernel asks
// for; a second reader of an uncached file fails at once, without a
// request to the registry; a cached file still reads; and once the
// registry answers again, a read succeeds on the same mount.
func TestStalledRegistryFailsFast(t *testing.T) {
	e := newMountEnv(t)
	p := newStallProxy(t, e.host)
	ref, files := stallImage(t, e, p, "stall/app")
	const readTimeout = 10 * time.Second
	dir := t.TempDir()
	e.mount(t, ref, dir, "--cache-dir", t.TempDir(), "--fill-below", "0", "--no-trace",
		"--attempt-timeout", "1s", "--read-timeout", readTimeout.String())
	defer e.umount(t, dir)
	m := &mounts.Manager{Root: e.state}
	if got, stderr, err := readFile(t, filepath.Join(dir, "small.bin")); err != nil || !bytes.Equal(got, files["small.bin"]) {
		t.Fatalf("small.bin before the stall: %v: %s", err, stderr)
	}

	p.limit.Store(p.served.Load() + 6<<20)
	start := time.Now()
	_, stderr, err := readFile(t, filepath.Join(dir, "big.bin"))
	took := time.Since(start)
	t.Logf("cat big.bin with the registry stalled: %v after %v: %s", err, took.Round(time.Millisecond), strings.TrimSpace(stderr))
	if err == nil || !strings.Contains(stderr, "Input/output error") {
		t.Fatalf("cat of a file behind a stalled registry: %v, %q; want EIO", err, stderr)
	}
	if took > readTimeout+10*time.Second {
		t.Errorf("the reader got its error after %v; want it within the read deadline (%v) and a margin", took, readTimeout)
	}
	if h := registryHost(t, m, dir, p.host); h.State != fetcher.BreakerOpen || h.Opened != 1 {
		t.Fatalf("after the stall the registry's breaker is %+v, want open", h)
	}

	before := p.sent.Load()
	if _, stderr, err := readFile(t, filepath.Join(dir, "other.bin")); err == nil || !strings.Contains(stderr, "Input/output error") {
		t.Fatalf("a second reader, of an uncached file: %v, %q; want EIO", err, stderr)
	}
	if n := p.sent.Load() - before; n != 0 {
		t.Errorf("the second reader sent %d requests to the stalled registry; want none (failed fast)", n)
	}
	h := registryHost(t, m, dir, p.host)
	if h.FailedFast == 0 {
		t.Errorf("breaker %+v: the second reader's reads are not counted as failed fast", h)
	}

	dropCaches(t) // the next read comes from the chunk cache, not the page cache
	if got, stderr, err := readFile(t, filepath.Join(dir, "small.bin")); err != nil || !bytes.Equal(got, files["small.bin"]) {
		t.Errorf("a cached file with the registry down: %v: %s", err, stderr)
	}

	p.limit.Store(-1)
	// The breaker probes again after its backoff, which it reports: the
	// first read after that goes to the registry.
	time.Sleep(registryHost(t, m, dir, p.host).ProbeIn)
	if got, stderr, err := readFile(t, filepath.Join(dir, "other.bin")); err != nil || !bytes.Equal(got, files["other.bin"]) {
		t.Fatalf("other.bin after the registry came back: %v: %s", err, stderr)
	}
	if h := registryHost(t, m, dir, p.host); h.State != fetcher.BreakerClosed {
		t.Errorf("after a successful read the breaker is %+v, want closed", h)
	}
}

// TestUmountStuckReader: a reader stuck on a registry that does not
// answer (attempts of minutes) keeps the mount busy: umount refuses and
// says --force; umount --force returns within seconds, the reader gets
// an I/O error, and nothing is left — no mount, process, loop device,
// open file or state (mountEnv's check).
func TestUmountStuckReader(t *testing.T) {
	e := newMountEnv(t)
	p := newStallProxy(t, e.host)
	ref, _ := stallImage(t, e, p, "stuck/app")
	dir := t.TempDir()
	e.mount(t, ref, dir, "--cache-dir", t.TempDir(), "--fill-below", "0", "--no-trace",
		"--attempt-timeout", "5m", "--read-timeout", "10m")
	m := &mounts.Manager{Root: e.state}
	p.limit.Store(p.served.Load())

	reader := exec.Command("cat", filepath.Join(dir, "big.bin"))
	var stderr bytes.Buffer
	reader.Stdout, reader.Stderr = nil, &stderr
	if err := reader.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- reader.Wait() }()
	defer func() { reader.Process.Kill() }()
	// Stuck: a read of it waits in the serving process (polling its
	// counters: the kernel tells nothing of a blocked reader).
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		s, err := m.Stats(context.Background(), must(m.Get(dir)))
		if err != nil {
			t.Fatal(err)
		}
		if s.Server.InFlight > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no read reached the server in 30 s: %+v", s.Server)
		}
	}

	if _, stderr, code := run(t, "umount", "--state-dir", e.state, dir); code == 0 || !strings.Contains(stderr, "--force") {
		t.Fatalf("umount of a mount with a stuck reader: exit %d, %q; want a refusal that names --force", code, stderr)
	}
	start := time.Now()
	if _, stderr, code := run(t, "umount", "--force", "--state-dir", e.state, dir); code != 0 {
		t.Fatalf("umount --force: exit %d: %s", code, stderr)
	}
	t.Logf("umount --force took %v", time.Since(start).Round(time.Millisecond))
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("umount --force took %v; want seconds", d)
	}
	select {
	case err := <-exited:
		if err == nil || !strings.Contains(stderr.String(), "error") {
			t.Errorf("the stuck reader ended with %v, %q; want an I/O error", err, stderr.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the stuck reader still waits 20 s after umount --force returned")
	}
}

// dropCaches empties the page cache, so a read reaches the block device.
func dropCaches(t testing.TB) {
	t.Helper()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0); err != nil {
		t.Fatal(err)
	}
}

// TestKernelNBDStalledRegistry is TestStalledRegistryFailsFast through the
// kernel's NBD device, in a QEMU guest with Debian's 6.12 kernel: with the
// registry holding every range request, a reader of an 8 MiB file gets
// EIO within the read deadline, a reader of another uncached file gets it
// at once, a cached file reads, and after the registry lets go a read
// succeeds on the same mount.
func TestKernelNBDStalledRegistry(t *testing.T) {
	testutil.RequireVM(t)
	host := testutil.GGCRRegistry(t)
	_, image := testutil.BlockImage(t, host+"/vm/stall:v1", 8<<20)
	want := testutil.SnapshotErofs(t, bytes.NewReader(image))
	port := newHoldProxy(t, host)
	port = port[strings.LastIndex(port, ":")+1:]
	ctl := "http://10.0.2.2:" + port + "/ctl/"
	script := fmt.Sprintf(`
mkdir -p /cache
/lazyblk mount --plain-http --connections 2 --cache-dir /cache --fill-below 0 --no-trace \
  --attempt-timeout 2s --read-timeout 20s 10.0.2.2:%s/vm/stall:v1 /mnt
grep -q ' /mnt erofs ' /proc/mounts && ls /sys/block | grep -q nbd && echo KERNEL-NBD
sha256sum /mnt/small | sed 's/^/CACHED1 /'
wget -q -O /dev/null %shold
s=$(date +%%s); rc=0; cat /mnt/random.bin > /dev/null 2>/tmp/e1 || rc=$?
echo "FIRST rc=$rc secs=$(( $(date +%%s) - s ))"; sed 's/^/ERR1 /' /tmp/e1
s=$(date +%%s); rc=0; cat /mnt/text.txt > /dev/null 2>/tmp/e2 || rc=$?
echo "SECOND rc=$rc secs=$(( $(date +%%s) - s ))"; sed 's/^/ERR2 /' /tmp/e2
echo 3 > /proc/sys/vm/drop_caches
sha256sum /mnt/small | sed 's/^/CACHED2 /'
wget -q -O /dev/null %srelease
n=0
until sha256sum /mnt/text.txt > /tmp/after 2>/dev/null || [ $n -ge 40 ]; do n=$((n+1)); sleep 0.25; done
sed 's/^/AFTER /' /tmp/after
/lazyblk umount /mnt
(ls /sys/block; ls /dev) | grep nbd | sed 's/^/LEFT /' || true
`, port, ctl, ctl)
	out := testutil.Guest{
		Files:   map[string]string{"/lazyblk": staticLazyblk(t)},
		Modules: []string{"failover", "net_failover", "virtio_net", "libcrc32c", "erofs", "nbd nbds_max=0"},
		Script:  script,
	}.Boot(t, 5*time.Minute)
	if !strings.Contains(out, "GUEST-EXIT 0") || !strings.Contains(out, "KERNEL-NBD") {
		t.Fatalf("the guest script failed, or the mount is not on a kernel NBD device:\n%s", out)
	}
	var rc, secs int
	if _, err := fmt.Sscanf(out[strings.Index(out, "FIRST "):], "FIRST rc=%d secs=%d", &rc, &secs); err != nil || rc == 0 || secs > 30 {
		t.Errorf("reader behind the held registry: rc %d after %d s (%v); want an error within the 20 s read deadline and a margin", rc, secs, err)
	}
	if _, err := fmt.Sscanf(out[strings.Index(out, "SECOND "):], "SECOND rc=%d secs=%d", &rc, &secs); err != nil || rc == 0 || secs > 5 {
		t.Errorf("second reader, uncached file: rc %d after %d s (%v); want an error at once", rc, secs, err)
	}
	if !strings.Contains(out, "ERR1 cat: read error: I/O error") && !strings.Contains(out, "ERR1 cat: read error: Input/output error") {
		t.Errorf("the first reader's error is not EIO")
	}
	for _, key := range []string{"CACHED1 ", "CACHED2 "} {
		if !strings.Contains(out, key+want["small"].Digest) {
			t.Errorf("%s: the cached file did not read back exactly", key)
		}
	}
	if !strings.Contains(out, "AFTER "+want["text.txt"].Digest) {
		t.Errorf("after the registry let go, text.txt did not read back on the same mount")
	}
	if strings.Contains(out, "LEFT ") {
		t.Errorf("umount left an nbd device")
	}
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "FIRST ") || strings.HasPrefix(line, "SECOND ") {
			t.Log(line)
		}
	}
	if t.Failed() {
		t.Logf("console:\n%s", out)
	}
}

// TestStalledRegistryStatus: a fetcher daemon's mount behind a registry
// that stalls shows the host's breaker open, with the reads it failed at
// once, in lazyblk status (table and JSON) and in the metrics.
func TestStalledRegistryStatus(t *testing.T) {
	testutil.Require(t, true, "nbdfuse")
	dir := t.TempDir()
	e := &mountEnv{host: testutil.GGCRRegistry(t), state: filepath.Join(dir, "run")}
	t.Cleanup(func() { e.assertClean(t) })
	cfg := filepath.Join(dir, "fetcher.toml")
	if err := os.WriteFile(cfg, []byte("[prefetch]\nfill_below = \"0\"\ntrace = false\n"+
		"[registry]\nhosts_dir = \"\"\nattempt_timeout = \"1s\"\nread_timeout = \"10s\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "fetcher.sock")
	d := startDaemon(t, "listening on", lazyblk, "fetcher", "--config", cfg, "--root", filepath.Join(dir, "lib"),
		"--state", e.state, "--address", sock, "--metrics-address", "127.0.0.1:0")
	defer d.stop()
	p := newStallProxy(t, e.host)
	ref, _ := stallImage(t, e, p, "status/app")
	mnt := t.TempDir()
	if _, stderr, code := run(t, "mount", "--fetcher-address", sock, "--plain-http", "--attach", "nbdfuse", ref, mnt); code != 0 {
		t.Fatalf("mount through the daemon: exit %d: %s", code, stderr)
	}
	defer e.umount(t, mnt)
	p.limit.Store(p.served.Load())
	for _, f := range []string{"big.bin", "other.bin"} {
		if _, _, err := readFile(t, filepath.Join(mnt, f)); err == nil {
			t.Fatalf("%s read from a stalled registry", f)
		}
	}

	out, stderr, code := run(t, "status", "--address", sock)
	if code != 0 || !strings.Contains(out, p.host+" OPEN (") || !strings.Contains(out, "reads failed fast") {
		t.Errorf("lazyblk status: exit %d, %s%s; want the registry host shown OPEN with its reads failed fast", code, out, stderr)
	}
	out, stderr, code = run(t, "status", "--address", sock, "--json")
	var status struct {
		Mounts []struct {
			Stats struct {
				Hosts []struct {
					Host, State string
					FailedFast  int64 `json:"failed_fast"`
				}
			}
		}
	}
	err := json.Unmarshal([]byte(out), &status)
	st := status.Mounts
	if code != 0 || err != nil || len(st) != 1 || len(st[0].Stats.Hosts) != 1 {
		t.Fatalf("lazyblk status --json: exit %d, %v: %s%s", code, err, out, stderr)
	}
	if h := st[0].Stats.Hosts[0]; h.Host != p.host || h.State != fetcher.BreakerOpen || h.FailedFast == 0 {
		t.Errorf("status --json host %+v, want %s open with reads failed fast", h, p.host)
	}
	m := scrapeMetrics(t, metricsURL(t, d))
	if v := m.must(t, "lazyblk_registry_host_state", "mount", mnt, "host", p.host, "state", "open"); v != 1 {
		t.Errorf("lazyblk_registry_host_state{state=open} = %v, want 1", v)
	}
	if v := m.must(t, "lazyblk_registry_failed_fast_total", "mount", mnt, "host", p.host); v == 0 {
		t.Errorf("lazyblk_registry_failed_fast_total = 0 with the breaker open")
	}
}
