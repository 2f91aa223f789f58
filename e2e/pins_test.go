package e2e

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/lazyblk/lazyblk/internal/testutil"
	"github.com/lazyblk/lazyblk/mounts"
)

// TestPinnedWorkingSet: two mounts share a small cache. What the first
// mount's workload read is pinned: the second image's reads, which evict
// everything else many times over, leave it in place, and the first
// workload reads it again without a miss; so does cache gc.
func TestPinnedWorkingSet(t *testing.T) {
	e := newMountEnv(t)
	m := &mounts.Manager{Root: e.state}
	refs := map[string]string{}
	for name, f := range map[string]testutil.Entry{"a": randomFile("a.bin", 1<<20, 11), "b": randomFile("b.bin", 12<<20, 12)} {
		src, ref := e.host+"/pins/"+name+":v1", e.host+"/pins/"+name+":v1-lazyblk"
		push(t, src, testutil.Image(t, false, testutil.Layer(t, []testutil.Entry{f}, testutil.Uncompressed, false)))
		if _, stderr, code := run(t, "convert", "--plain-http", "--chunk-size", "64KiB", src, ref); code != 0 {
			t.Fatalf("convert %s: exit %d: %s", src, code, stderr)
		}
		refs[name] = ref
	}
	cacheDir := t.TempDir()
	flags := []string{"--cache-dir", cacheDir, "--cache-size", "4MiB", "--fill-below", "0", "--no-trace"}
	dirA, dirB := t.TempDir(), t.TempDir()
	e.mount(t, refs["a"], dirA, flags...)
	defer e.umount(t, dirA)
	readAll := func(p string) {
		t.Helper()
		if _, err := os.ReadFile(p); err != nil {
			t.Fatal(err)
		}
	}
	readAll(filepath.Join(dirA, "a.bin"))
	// The pins are written every couple of seconds; have a's written now.
	if n, err := m.Pin(context.Background(), dirA); err != nil || n < 16 {
		t.Fatalf("mount a pins %d chunks (%v), want the 16 of a.bin at least", n, err)
	}

	e.mount(t, refs["b"], dirB, flags...)
	readAll(filepath.Join(dirB, "b.bin")) // 12 MiB through a 4 MiB cache
	e.umount(t, dirB)
	// cache gc keeps what mounts pin, too.
	if left := cacheCmd(t, "gc", "--target", "0", "--cache-dir", cacheDir, "--state-dir", e.state); left.Bytes < 1<<20 {
		t.Errorf("cache gc --target 0 left %d bytes: it evicted a's pinned chunks", left.Bytes)
	}

	before, err := m.Stats(context.Background(), must(m.Get(dirA)))
	if err != nil {
		t.Fatal(err)
	}
	dropCaches(t)
	readAll(filepath.Join(dirA, "a.bin"))
	after, err := m.Stats(context.Background(), must(m.Get(dirA)))
	if err != nil {
		t.Fatal(err)
	}
	if after.Image.Misses != before.Image.Misses || after.Image.Hits == before.Image.Hits {
		t.Errorf("re-reading a.bin after b's reads: %d misses, %d hits; want hits only (its chunks pinned)",
			after.Image.Misses-before.Image.Misses, after.Image.Hits-before.Image.Hits)
	}
}

// TestCacheBoundAcrossMounts: two mounts open the same empty 4 MiB cache
// and fill 3 MiB images each: each process accounts only its own chunks,
// so 6 MiB land on disk. A rescan in each brings the directory back under
// the size (plus what the mounts pin), and both files still read whole.
func TestCacheBoundAcrossMounts(t *testing.T) {
	e := newMountEnv(t)
	m := &mounts.Manager{Root: e.state}
	cacheDir := t.TempDir()
	dirs := map[string]string{}
	for name, seed := range map[string]byte{"c": 21, "d": 22} {
		src, ref := e.host+"/bound/"+name+":v1", e.host+"/bound/"+name+":v1-lazyblk"
		f := randomFile(name+".bin", 3<<20, seed)
		push(t, src, testutil.Image(t, false, testutil.Layer(t, []testutil.Entry{f}, testutil.Uncompressed, false)))
		if _, stderr, code := run(t, "convert", "--plain-http", "--chunk-size", "64KiB", "--compression", "none", src, ref); code != 0 {
			t.Fatalf("convert %s: exit %d: %s", src, code, stderr)
		}
		dirs[name] = t.TempDir()
		e.mount(t, ref, dirs[name], "--cache-dir", cacheDir, "--cache-size", "4MiB", "--fill-below", "0", "--no-trace")
		defer e.umount(t, dirs[name])
	}
	for _, dir := range dirs {
		if _, stderr, code := run(t, "prefetch", "fill", "--state-dir", e.state, "--wait", dir); code != 0 {
			t.Fatalf("prefetch fill %s: exit %d: %s", dir, code, stderr)
		}
	}
	onDisk := func() int64 {
		var n int64
		filepath.WalkDir(cacheDir, func(_ string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				if info, err := d.Info(); err == nil {
					n += info.Size()
				}
			}
			return nil
		})
		return n
	}
	if n := onDisk(); n <= 4<<20 {
		t.Fatalf("%d bytes on disk after both fills: the test needs the two processes to overshoot", n)
	}
	ctx := context.Background()
	var pinned int64
	for _, dir := range dirs {
		n, err := m.Pin(ctx, dir)
		if err != nil {
			t.Fatal(err)
		}
		pinned += int64(n) * 64 << 10
	}
	for _, dir := range []string{dirs["c"], dirs["d"], dirs["c"]} {
		if _, err := m.Rescan(ctx, dir); err != nil {
			t.Fatal(err)
		}
	}
	if n := onDisk(); n > 4<<20+pinned {
		t.Errorf("%d bytes on disk after the rescans, want at most the 4 MiB size plus %d pinned", n, pinned)
	}
	if cs, err := m.Rescan(ctx, dirs["d"]); err != nil || cs.Used != onDisk() {
		t.Errorf("after the rescans d's process accounts %+v (%v), %d bytes are on disk", cs, err, onDisk())
	}
	for name, dir := range dirs {
		if b, err := os.ReadFile(filepath.Join(dir, name+".bin")); err != nil || len(b) != 3<<20 {
			t.Errorf("read %s.bin after the rescans: %d bytes, %v", name, len(b), err)
		}
	}
}
