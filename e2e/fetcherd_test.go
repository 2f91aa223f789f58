package e2e

import (
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
// prefetch to completion, errors with the right codes, unmount.
func TestFetcherDaemon(t *testing.T) {
	testutil.Require(t, true, "nbdfuse")
	dir := t.TempDir()
	e := &mountEnv{host: testutil.GGCRRegistry(t), state: filepath.Join(dir, "run")}
	t.Cleanup(func() { e.assertClean(t) })
	sock := filepath.Join(dir, "fetcher.sock")
	d := startDaemon(t, "listening on", lazyblk, "fetcher", "--config", noFillConfig(t, dir), "--root", filepath.Join(dir, "lib"), "--state", e.state, "--address", sock)
	defer d.stop()
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
	var sts []struct {
		Dir     string
		Serving bool
		Stats   struct {
			ImageSize int64 `json:"image_size"`
			Complete  bool
		}
	}
	if err := json.Unmarshal([]byte(out), &sts); code != 0 || err != nil || len(sts) != 1 || sts[0].Dir != mnt ||
		!sts[0].Serving || !sts[0].Stats.Complete || sts[0].Stats.ImageSize != int64(len(want)) {
		t.Fatalf("status --json: exit %d %v: %s %s", code, err, out, stderr)
	}
	if out, _, _ := run(t, "status", "--address", sock); !strings.Contains(out, mnt) || !strings.Contains(out, "MiB (") {
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
