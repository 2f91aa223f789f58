package e2e

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/lazyblk/lazyblk/fetcher"
	"github.com/lazyblk/lazyblk/imagefmt"
	"github.com/lazyblk/lazyblk/internal/testutil"
	"github.com/lazyblk/lazyblk/mounts"
)

// TestPrefetchWarm pre-warms a node without mounting. Through a fetcher
// daemon: warm without a trace fails naming --all; warm --all fetches
// every chunk into the daemon's cache, status lists the image as fully
// cached, and a mount that then reads every file sends the registry no
// range request. Without a daemon (--cache-dir): warm fetches exactly the
// chunks of the trace the registry holds for the image.
func TestPrefetchWarm(t *testing.T) {
	testutil.Require(t, true, "nbdfuse")
	dir := t.TempDir()
	e := &mountEnv{host: testutil.GGCRRegistry(t), state: filepath.Join(dir, "run")}
	t.Cleanup(func() { e.assertClean(t) })
	var ranges atomic.Int64
	proxy := testutil.FaultProxy(t, e.host, func(int64, *http.Request) testutil.Fault { ranges.Add(1); return testutil.Pass })
	ref := proxy + "/warm/img:v1"
	_, image := testutil.BlockImage(t, e.host+"/warm/img:v1", 3<<20)

	sock := filepath.Join(dir, "fetcher.sock")
	d := startDaemon(t, "listening on", lazyblk, "fetcher", "--config", noFillConfig(t, dir), "--root", filepath.Join(dir, "lib"),
		"--state", e.state, "--address", sock)
	defer d.stop()
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("the daemon's socket: %v (%v), want mode 0600", fi.Mode().Perm(), err)
	}
	_, stderr, code := run(t, "prefetch", "warm", "--fetcher-address", sock, "--plain-http", ref)
	if code == 0 || !strings.Contains(stderr, "--all") || !strings.Contains(stderr, "trace") {
		t.Errorf("warm without a trace: exit %d, %q; want a failure naming the trace and --all", code, stderr)
	}
	out, stderr, code := run(t, "prefetch", "warm", "--fetcher-address", sock, "--plain-http", "--all", "--json", ref)
	var rep mounts.WarmReport
	if code != 0 || json.Unmarshal([]byte(out), &rep) != nil {
		t.Fatalf("warm --all: exit %d: %s%s", code, out, stderr)
	}
	if rep.Size != int64(len(image)) || rep.Cached != rep.Size || rep.Fetched == 0 {
		t.Errorf("warm --all reported %+v: want all %d bytes cached, some fetched", rep, len(image))
	}
	out, _, _ = run(t, "status", "--address", sock, "--json")
	var st struct {
		Warm []struct {
			Ref         string
			All         bool
			ImageSize   json.Number `json:"image_size"`
			CachedBytes json.Number `json:"cached_bytes"`
		}
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil || len(st.Warm) != 1 || st.Warm[0].Ref != ref || !st.Warm[0].All ||
		st.Warm[0].CachedBytes.String() != st.Warm[0].ImageSize.String() {
		t.Errorf("status --json after warm --all: %s (%v); want the image listed, fully cached", out, err)
	}

	before := ranges.Load()
	mnt := t.TempDir()
	if _, stderr, code := run(t, "mount", "--fetcher-address", sock, "--plain-http", "--attach", "nbdfuse", ref, mnt); code != 0 {
		t.Fatalf("mount through the daemon: exit %d: %s", code, stderr)
	}
	for _, f := range []string{"random.bin", "text.txt", "zeros.bin", "small"} {
		if _, err := os.ReadFile(filepath.Join(mnt, f)); err != nil {
			t.Errorf("read %s: %v", f, err)
		}
	}
	if _, stderr, code := run(t, "umount", "--state-dir", e.state, mnt); code != 0 {
		t.Errorf("umount: exit %d: %s", code, stderr)
	}
	if n := ranges.Load() - before; n != 0 {
		t.Errorf("a mount of the warmed image sent %d range requests to the registry, want 0", n)
	}

	// Without a daemon: the trace's chunks, exactly.
	ref2 := e.host + "/warm/traced:v1"
	testutil.BlockImage(t, ref2, 3<<20)
	ctx := context.Background()
	im, index, err := mounts.Source{Ref: ref2, PlainHTTP: true}.Open(ctx)
	if err != nil {
		t.Fatal(err)
	}
	x := im.Index()
	im.Close()
	traced := []int{len(x.Chunks) - 1, 0, 2}
	loc, _ := fetcher.ParseLocation(ref2, true)
	if _, err := fetcher.PushTrace(ctx, loc, imagefmt.NewTrace(index, x, traced, nil)); err != nil {
		t.Fatal(err)
	}
	var want int64
	for i, c := range x.Chunks {
		if c.Encoding == imagefmt.EncodingHole || i == traced[0] || i == traced[1] || i == traced[2] {
			want += int64(x.ChunkLen(i))
		}
	}
	out, stderr, code = run(t, "prefetch", "warm", "--fetcher-address", "", "--cache-dir", t.TempDir(), "--plain-http", "--json", ref2)
	rep = mounts.WarmReport{}
	if code != 0 || json.Unmarshal([]byte(out), &rep) != nil {
		t.Fatalf("warm --cache-dir: exit %d: %s%s", code, out, stderr)
	}
	if rep.TraceChunks != len(traced) || rep.Cached != want || rep.All {
		t.Errorf("warm of a traced image reported %+v: want the %d trace chunks, %d bytes cached with the holes", rep, len(traced), want)
	}
}
