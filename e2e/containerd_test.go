package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	fetcherv1 "github.com/lazyblk/lazyblk/api/fetcher/v1"
	"github.com/lazyblk/lazyblk/fetcherd"
	"github.com/lazyblk/lazyblk/internal/testutil"
	"github.com/lazyblk/lazyblk/mounts"
)

// containerdEnv is a private containerd 1.6 (Debian's, with runc) whose
// proxy snapshotter "lazyblk" is lazyblk snapshotter, backed by a lazyblk
// fetcher daemon; every path lives in one temp dir.
type containerdEnv struct {
	dir, registry                  string
	ctrSock, fetcherSock, snapSock string
	fetcherState                   string
	fetcher, snapshotter           *daemon
	containerd                     *daemon
}

func newContainerdEnv(t *testing.T) *containerdEnv {
	t.Helper()
	testutil.Require(t, true, "containerd", "ctr", "runc", "containerd-shim-runc-v2")
	e := newLazyblkDaemons(t)
	e.startContainerd(t, nil, "containerd", fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = %q
[proxy_plugins.lazyblk]
  type = "snapshot"
  address = %q
`, filepath.Join(e.dir, "containerd/root"), filepath.Join(e.dir, "containerd/state"), e.ctrSock, e.snapSock))
	return e
}

// newLazyblkDaemons starts a registry, the fetcher daemon and the
// snapshotter, for a containerd the caller starts.
func newLazyblkDaemons(t *testing.T) *containerdEnv {
	t.Helper()
	testutil.Require(t, true, "nbdfuse", "docker-registry", "busybox")
	// Short paths: unix socket names are limited to 108 bytes.
	dir, err := os.MkdirTemp("", "lzb-ctr-")
	if err != nil {
		t.Fatal(err)
	}
	e := &containerdEnv{dir: dir, registry: testutil.DockerRegistry(t),
		ctrSock: filepath.Join(dir, "containerd.sock"), fetcherSock: filepath.Join(dir, "fetcher.sock"),
		snapSock: filepath.Join(dir, "snapshotter.sock"), fetcherState: filepath.Join(dir, "run")}
	t.Cleanup(func() { e.close(t) })
	e.startFetcher(t)
	e.startSnapshotter(t)
	return e
}

// startContainerd starts bin with the configuration cfg and the
// environment env added to the test's.
func (e *containerdEnv) startContainerd(t *testing.T, env []string, bin, cfg string) {
	t.Helper()
	cfgPath := filepath.Join(e.dir, "containerd.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	e.containerd = startDaemonEnv(t, env, "containerd successfully booted", bin, "--config", cfgPath)
}

func (e *containerdEnv) startFetcher(t *testing.T) {
	e.fetcher = startDaemon(t, "listening on", lazyblk, "--log-level", "info", "fetcher", "--config", noFillConfig(t, e.dir),
		"--root", filepath.Join(e.dir, "lib"), "--state", e.fetcherState, "--address", e.fetcherSock)
}

func (e *containerdEnv) startSnapshotter(t *testing.T) {
	cfg := filepath.Join(e.dir, "snapshotter.toml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("plain_http = [%q]\n", e.registry)), 0o600); err != nil {
		t.Fatal(err)
	}
	e.snapshotter = startDaemon(t, "listening on", lazyblk, "--log-level", "info", "snapshotter", "--config", cfg,
		"--root", filepath.Join(e.dir, "snapshotter"), "--address", e.snapSock, "--fetcher-address", e.fetcherSock,
		"--metrics-address", "127.0.0.1:0")
}

// snapshotterCounter reads one of the running snapshotter's metrics.
func (e *containerdEnv) snapshotterCounter(t *testing.T, name string) float64 {
	t.Helper()
	return scrapeMetrics(t, metricsURL(t, e.snapshotter)).must(t, name)
}

// ctr runs containerd's ctr against this containerd.
func (e *containerdEnv) ctr(t *testing.T, args ...string) string {
	t.Helper()
	defer logSlow(t, time.Now(), "ctr", args)
	out, err := exec.Command("ctr", append([]string{"--address", e.ctrSock}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("ctr %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// waitSnapshotter polls until containerd talks to the snapshotter again:
// after it saw the socket refuse connections, containerd's gRPC client
// retries only on its reconnect backoff (1 s, growing), and calls fail
// fast until then.
func (e *containerdEnv) waitSnapshotter(t *testing.T) {
	t.Helper()
	var out []byte
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		var err error
		out, err = exec.Command("ctr", "--address", e.ctrSock, "snapshots", "--snapshotter", "lazyblk", "ls").CombinedOutput()
		if err == nil {
			return
		}
	}
	t.Fatalf("containerd does not reach the restarted snapshotter: %s", out)
}

func (e *containerdEnv) pull(t *testing.T, ref string) {
	t.Helper()
	if _, stderr, code := run(t, "pull", "--address", e.ctrSock, "--plain-http", ref); code != 0 {
		t.Fatalf("lazyblk pull %s: exit %d: %s", ref, code, stderr)
	}
}

// runcRoot keeps runc's container state private to this environment
// (runc's default, /run/containerd/runc, is shared by every containerd).
func (e *containerdEnv) runcRoot() string { return filepath.Join(e.dir, "runc") }

// fetcherAPI calls the fetcher daemon's gRPC API.
func (e *containerdEnv) fetcherAPI(t *testing.T, call func(fetcherv1.FetcherClient) error) {
	t.Helper()
	c, cc, err := fetcherd.Dial(e.fetcherSock)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	if err := call(c); err != nil {
		t.Fatal(err)
	}
}

// mounts returns the fetcher daemon's mounts.
func (e *containerdEnv) mounts(t *testing.T) (ms []*fetcherv1.MountInfo) {
	e.fetcherAPI(t, func(c fetcherv1.FetcherClient) error {
		l, err := c.List(context.Background(), &fetcherv1.ListRequest{})
		if err == nil {
			ms = l.Mounts
		}
		return err
	})
	return ms
}

func (e *containerdEnv) stats(t *testing.T) (st []*fetcherv1.ImageStats) {
	e.fetcherAPI(t, func(c fetcherv1.FetcherClient) error {
		s, err := c.Stats(context.Background(), &fetcherv1.StatsRequest{})
		if err == nil {
			st = s.Images
		}
		return err
	})
	return st
}

// close stops containerd and the daemons, takes down any mount the test
// left (failing it: removing the images must have released them) and
// checks nothing stays mounted under the environment's directory.
func (e *containerdEnv) close(t *testing.T) {
	if e.containerd != nil {
		// Tasks outlive containerd (their shims do): kill any a failed
		// test left running.
		out, _ := exec.Command("ctr", "--address", e.ctrSock, "task", "ls", "-q").Output()
		for _, id := range strings.Fields(string(out)) {
			exec.Command("ctr", "--address", e.ctrSock, "task", "kill", "-s", "SIGKILL", id).Run()
			exec.Command("ctr", "--address", e.ctrSock, "task", "delete", "--force", id).Run()
		}
		e.containerd.stop()
	}
	for _, d := range []*daemon{e.snapshotter, e.fetcher} {
		if d != nil {
			d.stop()
		}
	}
	m := &mounts.Manager{Root: e.fetcherState}
	if left, _ := m.List(); len(left) > 0 {
		t.Errorf("%d lazyblk mounts left after the images were removed", len(left))
		for _, st := range left {
			m.Unmount(st.Dir)
		}
	}
	// containerd leaves its own mounts (shm, rootfs) only while tasks run.
	exec.Command("sh", "-c", "grep -o '"+e.dir+"[^ ]*' /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l").Run()
	mountinfo, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mountinfo), e.dir) {
		t.Errorf("left mounted under %s", e.dir)
	}
	os.RemoveAll(e.dir)
}

// ctrImage builds a small runnable image: busybox, a text file, and a
// 160 MiB random "weights" file that a lazy pull must not download. (A
// smaller one would be fetched whole: starting busybox reads two chunks in
// a row, and the fetcher's readahead then fetches 64 MiB ahead.)
func ctrImage(t *testing.T) (img []testutil.Entry, weightsSum string) {
	bb, err := exec.LookPath("busybox")
	if err != nil {
		t.Fatal(err)
	}
	busybox, err := os.ReadFile(bb)
	if err != nil {
		t.Fatal(err)
	}
	w := testutil.Random(160<<20, 5)
	entries := []testutil.Entry{testutil.Dir("bin", 0o755), testutil.File("bin/busybox", 0o755, string(busybox))}
	for _, applet := range []string{"sh", "cat", "sha256sum", "sleep", "head", "wc"} {
		entries = append(entries, testutil.Symlink("bin/"+applet, "busybox"))
	}
	entries = append(entries, testutil.Dir("etc", 0o755), testutil.File("etc/hello", 0o644, "hello from a lazyblk image\n"),
		testutil.Dir("data", 0o755), testutil.File("data/weights", 0o644, string(w)), testutil.Dir("tmp", 0o1777))
	return entries, fmt.Sprintf("%x", sha256.Sum256(w))
}

// TestContainerd pulls a converted image into containerd through the
// lazyblk snapshotter with lazyblk pull, runs containers from it with
// ctr, and checks that the layer was mounted lazily (bytes fetched far
// below the image size), that an ordinary image works through the same
// snapshotter, that killing the fetcher daemon or the snapshotter does not
// break a running container, and that removing the images releases every
// block image.
func TestContainerd(t *testing.T) {
	e := newContainerdEnv(t)
	entries, weightsSum := ctrImage(t)
	img := testutil.Image(t, false, testutil.Layer(t, entries, testutil.Gzip, false))
	src, lazy := e.registry+"/ctr/app:v1", e.registry+"/ctr/app:v1-lazyblk"
	push(t, src, img)
	if _, stderr, code := run(t, "convert", "--plain-http", src, lazy); code != 0 {
		t.Fatalf("convert: exit %d: %s", code, stderr)
	}

	e.pull(t, lazy)
	if n := e.snapshotterCounter(t, "lazyblk_snapshotter_remote_layers_total"); n != 1 {
		t.Errorf("lazyblk_snapshotter_remote_layers_total %v after the lazy pull, want 1", n)
	}
	ms := e.mounts(t)
	if len(ms) != 1 || !ms[0].Serving || ms[0].Fs != "erofs" || !strings.HasPrefix(ms[0].Dir, filepath.Join(e.dir, "snapshotter")) {
		t.Fatalf("after the lazy pull the fetcher has mounts %v, want one erofs under the snapshotter's root", ms)
	}
	// The container reads the image and writes into its root.
	out := e.ctr(t, "run", "--runc-root", e.runcRoot(), "--rm", "--snapshotter", "lazyblk", lazy, "c1",
		"sh", "-c", "cat /etc/hello; echo written > /tmp/new; cat /tmp/new; head -c 4096 /data/weights | wc -c")
	if want := "hello from a lazyblk image\nwritten\n4096\n"; out != want {
		// Seen once in CI (the last line missing, ctr exiting 0): say
		// what the daemons saw, to tell a lost read from lost output.
		t.Fatalf("container output %q, want %q\nfetcher log:\n%s\nsnapshotter log:\n%s\nmounts: %+v",
			out, want, e.fetcher.tail(30), e.snapshotter.tail(30), e.stats(t))
	}
	st := e.stats(t)
	if len(st) != 1 || st[0].ImageSize == 0 || st[0].BytesFetched == 0 || st[0].BytesFetched > st[0].ImageSize/2 {
		t.Fatalf("fetched %d of %d bytes: want some, and well below the image size (the layer must not be downloaded)",
			st[0].BytesFetched, st[0].ImageSize)
	}
	t.Logf("lazy container ran; fetched %d of %d bytes", st[0].BytesFetched, st[0].ImageSize)

	// A running container survives a kill -9 of the fetcher daemon and of
	// the snapshotter: the serving process is not theirs to take down.
	e.ctr(t, "run", "--runc-root", e.runcRoot(), "-d", "--snapshotter", "lazyblk", lazy, "c2", "sleep", "3600")
	e.fetcher.kill()
	e.snapshotter.kill()
	if out := e.ctr(t, "task", "exec", "--exec-id", "r1", "c2", "sha256sum", "/data/weights"); !strings.HasPrefix(out, weightsSum) {
		t.Fatalf("with the daemons killed, the container read %q, want %s", out, weightsSum)
	}
	e.startFetcher(t)
	e.startSnapshotter(t)
	if ms := e.mounts(t); len(ms) != 1 || !ms[0].Serving {
		t.Fatalf("the restarted fetcher lists %v, want the one mount, served", ms)
	}
	if out := e.ctr(t, "task", "exec", "--exec-id", "r2", "c2", "cat", "/etc/hello"); out != "hello from a lazyblk image\n" {
		t.Fatalf("after the restart the container read %q", out)
	}
	// The restarted snapshotter still has the remote snapshot: a new
	// container starts without another pull or mount.
	e.waitSnapshotter(t)
	if out := e.ctr(t, "run", "--runc-root", e.runcRoot(), "--rm", "--snapshotter", "lazyblk", lazy, "c3", "cat", "/etc/hello"); out != "hello from a lazyblk image\n" {
		t.Fatalf("container after the snapshotter restart: %q", out)
	}
	// View of the remote snapshot: a read-only bind mount of the block
	// image.
	chain := ""
	for _, line := range strings.Split(e.ctr(t, "snapshots", "--snapshotter", "lazyblk", "ls"), "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[1] == "Committed" { // KEY, no PARENT, KIND
			chain = f[0]
		}
	}
	// The view holds no lease, so containerd's garbage collector, which
	// the container deletions above scheduled, may remove it at any time:
	// its mounts are printed by the call that creates it, and its removal
	// may find it gone.
	view := e.ctr(t, "snapshots", "--snapshotter", "lazyblk", "view", "--target", "/mnt", "v1", chain)
	if !strings.Contains(view, "ro,rbind") || !strings.Contains(view, ms[0].Dir) {
		t.Fatalf("View of %s: %q, want a read-only mount of %s", chain, view, ms[0].Dir)
	}
	if out, err := exec.Command("ctr", "--address", e.ctrSock, "snapshots", "--snapshotter", "lazyblk", "rm", "v1").CombinedOutput(); err != nil && !bytes.Contains(out, []byte("not found")) {
		t.Fatalf("remove the view: %v: %s", err, out)
	}

	// A snapshotter that starts with a remote snapshot whose block image
	// is gone (after a reboot /run is empty) mounts it again.
	e.snapshotter.kill()
	e.ctr(t, "task", "kill", "-s", "SIGKILL", "c2")
	e.ctr(t, "task", "delete", "--force", "c2")
	e.ctr(t, "container", "delete", "c2")
	if _, stderr, code := run(t, "umount", "--state-dir", e.fetcherState, ms[0].Dir); code != 0 {
		t.Fatalf("umount the block image behind the snapshotter's back: %s", stderr)
	}
	e.startSnapshotter(t)
	if ms := e.mounts(t); len(ms) != 1 || !ms[0].Serving {
		t.Fatalf("the restarted snapshotter did not mount the block image again: %v", ms)
	}
	e.waitSnapshotter(t)
	if out := e.ctr(t, "run", "--runc-root", e.runcRoot(), "--rm", "--snapshotter", "lazyblk", lazy, "c6", "cat", "/etc/hello"); out != "hello from a lazyblk image\n" {
		t.Fatalf("container after the block image was mounted again: %q", out)
	}

	// An ordinary image through the same snapshotter: downloaded and
	// unpacked, no block image.
	e.pull(t, src)
	if out := e.ctr(t, "run", "--runc-root", e.runcRoot(), "--rm", "--snapshotter", "lazyblk", src, "c4", "sh", "-c", "cat /etc/hello; sha256sum /data/weights"); !strings.HasPrefix(out, "hello from a lazyblk image\n"+weightsSum) {
		t.Fatalf("ordinary image container output %q", out)
	}
	if ms := e.mounts(t); len(ms) != 1 {
		t.Fatalf("an ordinary image made a block image mount: %v", ms)
	}

	// Removing the lazy image releases its block image.
	e.ctr(t, "images", "rm", "--sync", lazy, src)
	if ms := e.mounts(t); len(ms) != 0 {
		t.Fatalf("after removing the images the fetcher still has mounts %v", ms)
	}

	// With the fetcher down the lazy mount cannot be made: the pull falls
	// back to downloading and unpacking the converted image's fallback
	// layer, and the container still runs.
	e.fetcher.stop()
	e.pull(t, lazy)
	if out := e.ctr(t, "run", "--runc-root", e.runcRoot(), "--rm", "--snapshotter", "lazyblk", lazy, "c5", "cat", "/etc/hello"); out != "hello from a lazyblk image\n" {
		t.Fatalf("container from the fallback unpack: %q", out)
	}
	if b, _ := os.ReadFile(e.snapshotter.log); !bytes.Contains(b, []byte("falling back to download and unpack")) {
		t.Fatalf("the snapshotter did not log the fallback:\n%s", b)
	}
	if n := e.snapshotterCounter(t, "lazyblk_snapshotter_fallbacks_total"); n != 1 {
		t.Errorf("lazyblk_snapshotter_fallbacks_total %v after the pull without a fetcher, want 1", n)
	}
	e.startFetcher(t)
	e.ctr(t, "images", "rm", "--sync", lazy)
	// The snapshotter counted the fallback; it reports its counters when it
	// stops.
	e.snapshotter.stop()
	if b, _ := os.ReadFile(e.snapshotter.log); !bytes.Contains(b, []byte("Fallbacks:1 ")) {
		t.Errorf("the snapshotter's counters at exit do not show one fallback:\n%s", b)
	}
}
