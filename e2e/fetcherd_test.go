package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	fetcherv1 "github.com/lazyblk/lazyblk/api/fetcher/v1"
	"github.com/lazyblk/lazyblk/config"
	"github.com/lazyblk/lazyblk/fetcherd"
	"github.com/lazyblk/lazyblk/internal/testutil"
)

// TestFetcherDaemon drives a fetcher daemon through lazyblk mount (which
// uses it when it answers) and through its gRPC API: mount, list, stats,
// prefetch to completion, errors with the right codes, unmount. Its
// Prometheus endpoint is scraped around a read and after the fill.
func TestFetcherDaemon(t *testing.T) {
	testutil.Require(t, true, "nbdfuse")
	dir := t.TempDir()
	e := &mountEnv{host: testutil.GGCRRegistry(t), state: filepath.Join(dir, "run")}
	t.Cleanup(func() { e.assertClean(t) })
	sock := filepath.Join(dir, "fetcher.sock")
	d := startDaemon(t, "listening on", lazyblk, "fetcher", "--config", noFillConfig(t, dir), "--root", filepath.Join(dir, "lib"), "--state", e.state, "--address", sock,
		"--metrics-address", "127.0.0.1:0")
	defer d.stop()
	metrics := metricsURL(t, d)
	ref := e.host + "/daemon/img:v1"
	_, want := testutil.BlockImage(t, ref, 3<<20)

	mnt := t.TempDir()
	out, stderr, code := run(t, "mount", "--fetcher-address", sock, "--plain-http", "--attach", "nbdfuse", "--json", ref, mnt)
	if code != 0 {
		t.Fatalf("mount through the daemon: exit %d: %s", code, stderr)
	}
	var rep struct{ Daemon, FS string }
	if err := json.Unmarshal([]byte(out), &rep); err != nil || rep.Daemon != sock || rep.FS != "erofs" {
		t.Fatalf("mount --json %q (%v): want the daemon %s to have made an erofs mount", out, err, sock)
	}
	if b, err := os.ReadFile(filepath.Join(mnt, "small")); err != nil || string(b) != "small" {
		t.Fatalf("read through the daemon's mount: %q %v", b, err)
	}
	checkReadMetrics(t, metrics, mnt, ref, int64(len(want)))

	c, cc, err := fetcherd.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx := context.Background()
	l, err := c.List(ctx, &fetcherv1.ListRequest{})
	if err != nil || len(l.Mounts) != 1 || l.Mounts[0].Dir != mnt || !l.Mounts[0].Serving || l.Mounts[0].Attach != "nbdfuse" {
		t.Fatalf("List: %v %v", l, err)
	}
	// Prefetch fills the cache in the background until the image is
	// complete; Stats shows it.
	if _, err := c.Prefetch(ctx, &fetcherv1.PrefetchRequest{Dir: mnt}); err != nil {
		t.Fatal(err)
	}
	var st *fetcherv1.ImageStats
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		s, err := c.Stats(ctx, &fetcherv1.StatsRequest{Dir: mnt})
		if err != nil {
			t.Fatal(err)
		}
		if st = s.Images[0]; st.Complete {
			break
		}
	}
	if !st.Complete || st.ImageSize != int64(len(want)) || st.BytesFetched == 0 {
		t.Fatalf("after Prefetch: %+v, want complete with %d image bytes", st, len(want))
	}
	m := scrapeMetrics(t, metrics)
	if r := m.must(t, "lazyblk_image_cached_ratio", "mount", mnt); r != 1 {
		t.Errorf("lazyblk_image_cached_ratio %v after the fill, want 1", r)
	}
	if v := m.must(t, "lazyblk_image_fetched_bytes_total", "mount", mnt); int64(v) != st.BytesFetched {
		t.Errorf("lazyblk_image_fetched_bytes_total %v, Stats says %d", v, st.BytesFetched)
	}
	// Complete can be seen a moment before the fill says it is done.
	if v := m.must(t, "lazyblk_prefetch_phase", "mount", mnt, "phase", "fill") +
		m.must(t, "lazyblk_prefetch_phase", "mount", mnt, "phase", "done"); v != 1 {
		t.Errorf("lazyblk_prefetch_phase: neither fill nor done after the fill")
	}
	if used, written := m.must(t, "lazyblk_cache_used_bytes", "mount", mnt),
		m.must(t, "lazyblk_cache_stripe_written_bytes_total", "mount", mnt); used < 3<<20 || written < used {
		t.Errorf("cache: %v bytes used, %v written to its stripe; want the 3 MiB of random.bin in both", used, written)
	}

	// Errors name the thing and carry the right code.
	for _, tc := range []struct {
		call func() error
		code codes.Code
		msg  string
	}{
		{func() error {
			_, err := c.Mount(ctx, &fetcherv1.MountRequest{Ref: ref, Dir: "/nonexistent/dir", PlainHttp: true})
			return err
		}, codes.InvalidArgument, "/nonexistent/dir"},
		{func() error {
			_, err := c.Mount(ctx, &fetcherv1.MountRequest{Ref: e.host + "/daemon/other:v1", Dir: mnt, PlainHttp: true})
			return err
		}, codes.AlreadyExists, "already has"},
		{func() error {
			_, err := c.Unmount(ctx, &fetcherv1.UnmountRequest{Dir: t.TempDir()})
			return err
		}, codes.NotFound, "not a lazyblk mount"},
	} {
		if err := tc.call(); status.Code(err) != tc.code || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("got %v, want code %v naming %q", err, tc.code, tc.msg)
		}
	}
	// The same mount again is the one already there.
	if mi, err := c.Mount(ctx, &fetcherv1.MountRequest{Ref: ref, Dir: mnt, PlainHttp: true}); err != nil || mi.Pid != l.Mounts[0].Pid {
		t.Fatalf("repeated Mount: %v %v, want the running mount", mi, err)
	}
	// status shows the same for humans and machines.
	out, stderr, code = run(t, "status", "--address", sock, "--json")
	var status struct {
		Mounts []struct {
			Dir     string
			Serving bool
			Stats   struct {
				ImageSize   int64 `json:"image_size"`
				CachedBytes int64 `json:"cached_bytes"`
				Complete    bool
			}
		}
	}
	err = json.Unmarshal([]byte(out), &status)
	sts := status.Mounts
	if code != 0 || err != nil || len(sts) != 1 || sts[0].Dir != mnt ||
		!sts[0].Serving || !sts[0].Stats.Complete || sts[0].Stats.ImageSize != int64(len(want)) ||
		sts[0].Stats.CachedBytes != sts[0].Stats.ImageSize {
		t.Fatalf("status --json: exit %d %v: %s %s", code, err, out, stderr)
	}
	if out, _, _ := run(t, "status", "--address", sock); !strings.Contains(out, mnt) || !strings.Contains(out, "MiB (") ||
		!strings.Contains(out, "100.0%") || !strings.Contains(out, "READS") {
		t.Errorf("status: %s", out)
	}
	// umount finds the daemon's mount in the daemon's state directory.
	if _, stderr, code := run(t, "umount", "--state-dir", e.state, mnt); code != 0 {
		t.Fatalf("umount: exit %d: %s", code, stderr)
	}
	if l, err := c.List(ctx, &fetcherv1.ListRequest{}); err != nil || len(l.Mounts) != 0 {
		t.Fatalf("List after umount: %v %v", l, err)
	}
}

// TestConfigDefault: what `lazyblk config default` prints is a valid
// configuration for the daemon it names; without a daemon, status says so.
func TestConfigDefault(t *testing.T) {
	for name, load := range map[string]func(string) error{
		"fetcher":     func(p string) error { _, err := config.LoadFetcher(p); return err },
		"snapshotter": func(p string) error { _, err := config.LoadSnapshotter(p); return err },
	} {
		out, stderr, code := run(t, "config", "default", name)
		p := filepath.Join(t.TempDir(), name+".toml")
		os.WriteFile(p, []byte(out), 0o600)
		if code != 0 || !strings.Contains(out, "# ") {
			t.Fatalf("config default %s: exit %d: %s", name, code, stderr)
		}
		if err := load(p); err != nil {
			t.Errorf("config default %s does not load: %v", name, err)
		}
	}
	sock := filepath.Join(t.TempDir(), "none.sock")
	if _, stderr, code := run(t, "status", "--address", sock); code != 1 || !strings.Contains(stderr, sock) {
		t.Errorf("status without a daemon: exit %d: %s", code, stderr)
	}
}

// checkReadMetrics scrapes the daemon around a cold read of random.bin
// and checks the counters moved as the read must move them.
func checkReadMetrics(t *testing.T, url, mnt, ref string, size int64) {
	t.Helper()
	before := scrapeMetrics(t, url)
	if v := before.must(t, "lazyblk_mount_up", "mount", mnt, "ref", ref); v != 1 {
		t.Fatalf("lazyblk_mount_up %v, want 1", v)
	}
	if v := before.must(t, "lazyblk_mount_ready_seconds", "attach", "nbdfuse"); v != 1 {
		t.Errorf("lazyblk_mount_ready_seconds count %v, want the one mount", v)
	}
	if v := before.must(t, "lazyblk_image_size_bytes", "mount", mnt); int64(v) != size {
		t.Errorf("lazyblk_image_size_bytes %v, want %d", v, size)
	}
	b, err := os.ReadFile(filepath.Join(mnt, "random.bin"))
	if err != nil || len(b) != 3<<20 {
		t.Fatalf("read random.bin: %d bytes, %v", len(b), err)
	}
	after := scrapeMetrics(t, url)
	for _, c := range []struct {
		name   string
		labels []string
		least  float64 // grew by at least
	}{
		// The mount itself read the filesystem's metadata, which may share
		// a chunk with the file's start; chunks reach the cache after
		// the read is answered.
		{"lazyblk_image_fetched_bytes_total", nil, 2 << 20},
		{"lazyblk_chunk_cache_misses_total", nil, 1},
		{"lazyblk_registry_requests_total", nil, 1},
		{"lazyblk_chunk_read_seconds", []string{"source", "origin"}, 1},
		{"lazyblk_nbd_read_bytes_total", nil, 3 << 20},
	} {
		labels := append([]string{"mount", mnt}, c.labels...)
		if d := after.must(t, c.name, labels...) - before.must(t, c.name, labels...); d < c.least {
			t.Errorf("%s%v grew by %v over a cold 3 MiB read, want at least %v", c.name, c.labels, d, c.least)
		}
	}
	for _, name := range []string{"lazyblk_verify_failures_total", "lazyblk_nbd_read_errors_total", "lazyblk_nbd_reads_stuck"} {
		if v := after.must(t, name, "mount", mnt); v != 0 {
			t.Errorf("%s = %v after clean reads", name, v)
		}
	}

	// Read again from the cache, the kernel's copies dropped: the server
	// splices the cached chunks to the socket instead of copying them.
	dropCaches(t)
	again, err := os.ReadFile(filepath.Join(mnt, "random.bin"))
	if err != nil || !bytes.Equal(again, b) {
		t.Fatalf("read random.bin again from the cache: %d bytes, %v", len(again), err)
	}
	warm := scrapeMetrics(t, url)
	if d := warm.must(t, "lazyblk_nbd_read_spliced_bytes_total", "mount", mnt) - after.must(t, "lazyblk_nbd_read_spliced_bytes_total", "mount", mnt); d < 2<<20 {
		t.Errorf("lazyblk_nbd_read_spliced_bytes_total grew by %v over a warm 3 MiB read, want at least 2 MiB", d)
	}
}
