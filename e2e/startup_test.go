package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"testing"

	erofs "github.com/erofs/go-erofs"

	"github.com/lazyblk/lazyblk/fetcher"
	"github.com/lazyblk/lazyblk/imagefmt"
	"github.com/lazyblk/lazyblk/internal/testutil"
	"github.com/lazyblk/lazyblk/mounts"
)

// startupWorkload reads what a start-up of the versions' image would:
// some runtime files whole, two pieces of the big library, some modules
// (none of those C changes).
func startupWorkload(t *testing.T, dir string) {
	t.Helper()
	for i := 0; i < 200; i += 13 {
		if _, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("usr/lib/runtime/mod%04d.py", i))); err != nil {
			t.Fatal(err)
		}
	}
	f, err := os.Open(filepath.Join(dir, "opt/pkg/libbig.so"))
	if err != nil {
		t.Fatal(err)
	}
	for _, off := range []int64{0, 1 << 20} {
		if _, err := f.ReadAt(make([]byte, 64<<10), off); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	for _, i := range []int{1, 5, 33} {
		if _, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("opt/pkg/modules/mod%04d.py", i))); err != nil {
			t.Fatal(err)
		}
	}
}

// TestStartupTraceAcrossVersions: a trace recorded on version A of an
// image names the files its start-up read; converting version C (its
// middle layer changed) with --startup-trace A's trace puts those files
// first in their layers' regions, contiguous, in the order they were read,
// and publishes C with a trace of its own; a fresh mount of C replays it,
// and the same start-up then reads nothing but cache hits.
func TestStartupTraceAcrossVersions(t *testing.T) {
	e := newMountEnv(t)
	e.host = testutil.DockerRegistry(t)
	m := &mounts.Manager{Root: e.state}
	v := testutil.MakeVersions(t, testutil.VersionSizes{BaseFiles: 200, Library: 2 << 20, Modules: 40, Weights: 1 << 20})
	push(t, e.host+"/st/app:A", v.A)
	push(t, e.host+"/st/app:C", v.C)
	refA, refC := e.host+"/st/app:A-lazyblk", e.host+"/st/app:C-lazyblk"
	if _, stderr, code := run(t, "convert", "--plain-http", "--chunk-size", "256KiB", e.host+"/st/app:A", refA); code != 0 {
		t.Fatalf("convert A: exit %d: %s", code, stderr)
	}

	dir := t.TempDir()
	e.mount(t, refA, dir, "--cache-dir", t.TempDir(), "--fill-below", "0", "--no-trace")
	startupWorkload(t, dir)
	tracePath := filepath.Join(t.TempDir(), "trace.json")
	out, stderr, code := run(t, "prefetch", "record", "--state-dir", e.state, "--duration", "0", "--json", "-o", tracePath, dir)
	if code != 0 {
		t.Fatalf("prefetch record: exit %d: %s", code, stderr)
	}
	e.umount(t, dir)
	b, err := os.ReadFile(tracePath)
	if err != nil {
		t.Fatal(err)
	}
	trace, err := imagefmt.DecodeTrace(b)
	if err != nil {
		t.Fatal(err)
	}
	paths := trace.StartupOrder()
	for _, want := range []string{"/usr/lib/runtime/mod0013.py", "/opt/pkg/libbig.so", "/opt/pkg/modules/mod0033.py"} {
		if !slices.Contains(paths, want) {
			t.Fatalf("the trace names %d files, not %s: %s\n%s", len(paths), want, out, b)
		}
	}

	out, stderr, code = run(t, "convert", "--plain-http", "--chunk-size", "256KiB", "--json", "--startup-trace", tracePath,
		e.host+"/st/app:C", refC)
	if code != 0 {
		t.Fatalf("convert C --startup-trace: exit %d: %s", code, stderr)
	}
	var conv struct{ StartupTrace struct{ Digest string } }
	if err := json.Unmarshal([]byte(out), &conv); err != nil || conv.StartupTrace.Digest == "" {
		t.Fatalf("convert --startup-trace did not publish a trace for C: %v: %s", err, out)
	}
	checkContiguous(t, refC, trace.Files)

	e.mount(t, refC, dir, "--cache-dir", t.TempDir(), "--fill-below", "0")
	s := waitPrefetch(t, m, dir)
	if s.Prefetch.Phase != mounts.PhaseDone || s.Prefetch.Trace != conv.StartupTrace.Digest {
		t.Fatalf("the mount of C did not replay its published trace: %+v", s.Prefetch)
	}
	startupWorkload(t, dir)
	after, err := m.Stats(context.Background(), must(m.Get(dir)))
	if err != nil {
		t.Fatal(err)
	}
	if after.Image.Misses != s.Image.Misses {
		got, _, _ := run(t, "prefetch", "record", "--state-dir", e.state, "--duration", "0", dir)
		pub, _, _ := run(t, "prefetch", "show", "--plain-http", "--json", refC)
		t.Errorf("the start-up missed %d times after the replay of C's trace; want all cache hits\nread: %s\npublished: %s",
			after.Image.Misses-s.Image.Misses, got, pub)
	}
	e.umount(t, dir)
}

// checkContiguous reads the block image ref and checks that what the
// trace's files had read of them lies, region by region, in the region's
// first chunks, back to back: a replay fetches a few long runs.
func checkContiguous(t *testing.T, ref string, files []imagefmt.TraceFile) {
	t.Helper()
	loc, err := fetcher.ParseLocation(ref, true)
	if err != nil {
		t.Fatal(err)
	}
	im, err := fetcher.Open(context.Background(), loc)
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	fsys, err := erofs.Open(im.Reader(context.Background()))
	if err != nil {
		t.Fatal(err)
	}
	x := im.Index()
	cs := int64(x.ChunkSize)
	chunks := map[int]map[int]bool{} // region -> chunks holding what was read
	for _, f := range files {
		info, err := fs.Stat(fsys, f.Path[1:])
		if err != nil || info.Size() <= 1024 { // inline with its inode: in the metadata
			continue
		}
		var at int64
		for _, d := range info.(interface{ DataRange() []erofs.DataRange }).DataRange() {
			for _, rg := range f.Ranges {
				lo, hi := max(rg.Off, at), min(rg.Off+rg.Len, at+d.Size)
				for img := d.Offset + lo - at; lo < hi && img < d.Offset+hi-at; img = (img/cs + 1) * cs {
					c := int(img / cs)
					for r, g := range x.Regions {
						if c >= g.First && c < g.First+g.Count {
							if chunks[r] == nil {
								chunks[r] = map[int]bool{}
							}
							chunks[r][c] = true
						}
					}
				}
			}
			at += d.Size
		}
	}
	if len(chunks) == 0 {
		t.Fatal("none of the trace's files has blocks of its own")
	}
	for r, set := range chunks {
		g := x.Regions[r]
		if g.Kind != imagefmt.RegionLayer {
			t.Errorf("what the start-up read lies in region %d, a %v region", r, g.Kind)
		}
		for c := g.First; c < g.First+len(set); c++ {
			if !set[c] {
				t.Errorf("region %d: what the start-up read spans %d chunks but not chunk %d, among its first: not contiguous", r, len(set), c)
			}
		}
	}
}
