package e2e

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/lazyblk/lazyblk/imagefmt"
	"github.com/lazyblk/lazyblk/internal/testutil"
	"github.com/lazyblk/lazyblk/mounts"
)

func randomFile(name string, size int, seed byte) testutil.Entry {
	return testutil.File(name, 0o644, string(testutil.Random(size, seed)))
}

// waitPrefetch polls the serving process until its background fetching
// has ended (the phase is asynchronous by design), and returns its stats.
func waitPrefetch(t *testing.T, m *mounts.Manager, dir string) *mounts.Stats {
	t.Helper()
	st, err := m.Get(dir)
	if err != nil {
		t.Fatal(err)
	}
	var s *mounts.Stats
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if s, err = m.Stats(context.Background(), st); err != nil {
			t.Fatal(err)
		}
		if p := s.Prefetch.Phase; p == mounts.PhaseDone || p == mounts.PhaseError {
			return s
		}
	}
	t.Fatalf("prefetch of %s still %q after a minute", dir, s.Prefetch.Phase)
	return nil
}

// TestPrefetchTrace: a workload's reads of a mounted image are recorded
// (lazyblk prefetch record), pushed next to the image on docker-registry
// 2.8, which has no referrers API (prefetch push), and found again
// (prefetch show). The next mount, with an empty cache, replays the trace
// below demand reads: the workload's reads are then all cache hits, while
// a file outside the trace still misses. prefetch fill then fetches the
// rest.
func TestPrefetchTrace(t *testing.T) {
	e := newMountEnv(t)
	e.host = testutil.DockerRegistry(t)
	m := &mounts.Manager{Root: e.state}
	img := testutil.Image(t, false, testutil.Layer(t, []testutil.Entry{
		testutil.Dir("app", 0o755), randomFile("app/start.bin", 6<<20, 1), randomFile("app/lib.bin", 3<<20, 2),
		randomFile("weights", 64<<20, 3),
	}, testutil.Uncompressed, false))
	src, ref := e.host+"/trace/app:v1", e.host+"/trace/app:v1-lazyblk"
	push(t, src, img)
	if _, stderr, code := run(t, "convert", "--plain-http", src, ref); code != 0 {
		t.Fatalf("convert: exit %d: %s", code, stderr)
	}
	workload := func(dir string) {
		for _, f := range []string{"app/start.bin", "app/lib.bin"} {
			if _, err := os.ReadFile(filepath.Join(dir, f)); err != nil {
				t.Fatal(err)
			}
		}
	}

	// Record.
	dir := t.TempDir()
	e.mount(t, ref, dir, "--cache-dir", t.TempDir(), "--fill-below", "0")
	workload(dir)
	tracePath := filepath.Join(t.TempDir(), "trace.json")
	out, stderr, code := run(t, "prefetch", "record", "--state-dir", e.state, "--duration", "0", "--json", "-o", tracePath, dir)
	if code != 0 {
		t.Fatalf("prefetch record: exit %d: %s", code, stderr)
	}
	var rec struct{ Chunks int }
	if err := json.Unmarshal([]byte(out), &rec); err != nil || rec.Chunks < 3 {
		t.Fatalf("prefetch record printed %q (%v): want 3 chunks or more (9 MiB read in 4 MiB chunks)", out, err)
	}
	b, err := os.ReadFile(tracePath)
	if err != nil {
		t.Fatal(err)
	}
	recorded, err := imagefmt.DecodeTrace(b)
	if err != nil {
		t.Fatal(err)
	}
	e.umount(t, dir)
	t.Logf("recorded chunks %v", recorded.Chunks)

	// Push, and find it again.
	out, stderr, code = run(t, "prefetch", "push", "--plain-http", "--json", ref, tracePath)
	if code != 0 {
		t.Fatalf("prefetch push: exit %d: %s", code, stderr)
	}
	var pushed struct{ Digest string }
	if err := json.Unmarshal([]byte(out), &pushed); err != nil || pushed.Digest == "" {
		t.Fatalf("prefetch push printed %q: %v", out, err)
	}
	out, stderr, code = run(t, "prefetch", "show", "--plain-http", "--json", ref)
	if code != 0 {
		t.Fatalf("prefetch show: exit %d: %s", code, stderr)
	}
	shown, err := imagefmt.DecodeTrace([]byte(out))
	if err != nil || !slices.Equal(shown.Chunks, recorded.Chunks) {
		t.Fatalf("prefetch show: %v (%v), want the recorded %v", shown, err, recorded.Chunks)
	}
	if _, _, code := run(t, "prefetch", "show", "--plain-http", src); code == 0 {
		t.Error("prefetch show of an image that is not a block image succeeded")
	}

	// Replay on the next mount, with an empty cache.
	e.mount(t, ref, dir, "--cache-dir", t.TempDir(), "--fill-below", "0")
	s := waitPrefetch(t, m, dir)
	if s.Prefetch.Phase != mounts.PhaseDone || s.Prefetch.Trace != pushed.Digest || s.Prefetch.TraceChunks != len(recorded.Chunks) {
		t.Fatalf("after the mount the prefetch is %+v, want done replaying %s (%d chunks)", s.Prefetch, pushed.Digest, len(recorded.Chunks))
	}
	workload(dir)
	after, err := m.Stats(context.Background(), must(m.Get(dir)))
	if err != nil {
		t.Fatal(err)
	}
	if after.Image.Misses != s.Image.Misses {
		read, _, _ := run(t, "prefetch", "record", "--state-dir", e.state, "--duration", "0", dir)
		t.Errorf("the recorded workload missed %d times after the replay; want all hits (read now: %.300s)",
			after.Image.Misses-s.Image.Misses, read)
	}
	// The middle of the weights: beyond any readahead of the workload's
	// reads, and not what mounting reads (the superblock; a probe of the
	// device's end).
	f, err := os.Open(filepath.Join(dir, "weights"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.ReadAt(make([]byte, 64<<10), 48<<20)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	if w, _ := m.Stats(context.Background(), must(m.Get(dir))); w.Image.Misses == after.Image.Misses || w.Complete {
		t.Errorf("reading a file outside the trace missed %d times (complete: %v): the replay fetched more than the trace",
			w.Image.Misses-after.Image.Misses, w.Complete)
	}

	// prefetch fill fetches the rest; --wait returns once it is all cached.
	out, stderr, code = run(t, "prefetch", "fill", "--state-dir", e.state, "--wait", "--json", dir)
	var filled mounts.Stats
	if err := json.Unmarshal([]byte(out), &filled); code != 0 || err != nil {
		t.Fatalf("prefetch fill --wait: exit %d, %v: %s%s", code, err, out, stderr)
	}
	if !filled.Complete || filled.Image.Cached != filled.ImageSize {
		t.Errorf("prefetch fill --wait returned with %d of %d bytes cached (complete %v)", filled.Image.Cached, filled.ImageSize, filled.Complete)
	}
	if s := waitPrefetch(t, m, dir); s.Prefetch.Phase != mounts.PhaseDone || !s.Complete {
		t.Errorf("after prefetch fill: %+v, complete %v", s.Prefetch, s.Complete)
	}
	e.umount(t, dir)
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
