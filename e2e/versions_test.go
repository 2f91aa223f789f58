package e2e

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/lazyblk/lazyblk/cache"
	"github.com/lazyblk/lazyblk/fetcher"
	"github.com/lazyblk/lazyblk/internal/testutil"
)

// uploadCounter is a registry proxy that counts the bytes clients upload
// (blobs and manifests): how much a push grows the registry by.
type uploadCounter struct {
	host     string
	uploaded atomic.Int64
}

func newUploadCounter(t testing.TB, registry string) *uploadCounter {
	u := &uploadCounter{}
	target, _ := url.Parse("http://" + registry)
	rp := httputil.NewSingleHostReverseProxy(target)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body != nil && r.Method != http.MethodGet && r.Method != http.MethodHead {
			r.Body = countingBody{r.Body, &u.uploaded}
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	u.host = strings.TrimPrefix(srv.URL, "http://")
	return u
}

type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (b countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}

// versionChunk is small enough that each layer of the versions spans many
// chunks, so the targets' "+ 3 chunks" is a small allowance.
const versionChunk = 256 << 10

// TestVersionsShareChunks converts four versions of an image (A; B = A +
// a small top layer; C = A with a few small files of its middle layer
// changed; D = A with other weights) into a real registry — Debian's
// docker-registry and go-containerregistry's — and checks what sharing
// the layer-stable layout gives, as counts: the bytes the registry grows
// by when a version is pushed after A (convert uploads only the blobs it
// lacks, and says what it skipped), and the bytes a node whose cache holds
// A fetches to read the version whole — on demand, by a trace replay and
// by the fill, each from a cache holding A alone.
func TestVersionsShareChunks(t *testing.T) {
	v := testutil.MakeVersions(t, testutil.VersionSizes{BaseFiles: 400, Library: 6 << 20, Modules: 150, Weights: 8 << 20})
	for _, reg := range testutil.Registries {
		t.Run(reg.Name, func(t *testing.T) {
			host := reg.Start(t)
			up := newUploadCounter(t, host)
			convert := func(name string) (stored, grew int64, rep fetcher.PushReport) {
				t.Helper()
				push(t, host+"/app:"+name, map[string]v1.Image{"A": v.A, "B": v.B, "C": v.C, "D": v.D}[name])
				before := up.uploaded.Load()
				out, stderr, code := run(t, "convert", "--plain-http", "--no-fallback", "--chunk-size", "256KiB", "--json",
					up.host+"/app:"+name, up.host+"/app:"+name+"-lazyblk")
				if code != 0 {
					t.Fatalf("convert %s: exit %d: %s", name, code, stderr)
				}
				var sum struct {
					DataSize uint64
					Push     fetcher.PushReport
				}
				if err := json.Unmarshal([]byte(out), &sum); err != nil {
					t.Fatalf("convert --json: %v: %s", err, out)
				}
				return int64(sum.DataSize), up.uploaded.Load() - before, sum.Push
			}
			storedA, grewA, _ := convert("A")
			t.Logf("A: %d bytes stored, registry grew by %d", storedA, grewA)
			for _, c := range []struct {
				name  string
				bound int64 // bytes fetched and registry growth, at most
			}{
				{"B", storedA*3/100 + 3*versionChunk},
				{"C", storedA / 2},
				{"D", int64(v.WeightsSize) + storedA*5/100 + 3*versionChunk},
			} {
				_, grew, rep := convert(c.name)
				fetched := fetchedAfter(t, host, "app:A-lazyblk", "app:"+c.name+"-lazyblk")
				t.Logf("%s after A: registry grew by %d bytes (%d blobs of %d there already, %d bytes), fetched %v; bound %d",
					c.name, grew, rep.Present, rep.Blobs, rep.PresentBytes, fetched, c.bound)
				if grew > c.bound {
					t.Errorf("%s after A: the registry grew by %d bytes, want at most %d", c.name, grew, c.bound)
				}
				if rep.Present == 0 || rep.PresentBytes == 0 {
					t.Errorf("%s after A: convert says no blob was there already: %+v", c.name, rep)
				}
				for how, n := range fetched {
					if n > c.bound {
						t.Errorf("%s after A, %s: fetched %d bytes, want at most %d", c.name, how, n, c.bound)
					}
				}
				// lazyblk diff predicts the fetch: the new chunks' bytes.
				out, stderr, code := run(t, "diff", "--plain-http", "--json", host+"/app:A-lazyblk", host+"/app:"+c.name+"-lazyblk")
				var d struct {
					NewBytes, SharedBytes int64
					Regions               []struct{ Kind string }
				}
				if err := json.Unmarshal([]byte(out), &d); code != 0 || err != nil {
					t.Fatalf("diff: exit %d, %v: %s%s", code, err, out, stderr)
				}
				if d.NewBytes != fetched["fill"] || d.SharedBytes == 0 || len(d.Regions) < 5 {
					t.Errorf("diff A %s: %s; want new bytes = the %d the fill fetched, some shared, a region per layer", c.name, out, fetched["fill"])
				}
			}
		})
	}
}

// fetchedAfter returns the bytes fetched to read image b whole, from a
// cache holding image a (filled whole first), three ways.
func fetchedAfter(t testing.TB, host, a, b string) map[string]int64 {
	t.Helper()
	ctx := context.Background()
	open := func(ref string, c *cache.Store) *fetcher.Image {
		loc, err := fetcher.ParseLocation(host+"/"+ref, true)
		if err != nil {
			t.Fatal(err)
		}
		im, err := fetcher.Open(ctx, loc, fetcher.WithCache(c))
		if err != nil {
			t.Fatal(err)
		}
		return im
	}
	out := map[string]int64{}
	for _, how := range []string{"demand", "trace replay", "fill"} {
		c, err := cache.Open([]string{t.TempDir()}, 1<<30)
		if err != nil {
			t.Fatal(err)
		}
		imA := open(a, c)
		if err := imA.Fill(ctx); err != nil {
			t.Fatal(err)
		}
		imA.Close()
		im := open(b, c)
		switch how {
		case "demand":
			p := make([]byte, 1<<20)
			for off := int64(0); off < im.Size(); off += int64(len(p)) {
				if _, err := im.ReadAt(ctx, p, off); err != nil && err != io.EOF {
					t.Fatal(err)
				}
			}
		case "trace replay":
			all := make([]int, len(im.Index().Chunks))
			for i := range all {
				all[i] = i
			}
			err = im.Prefetch(ctx, all)
		case "fill":
			err = im.Fill(ctx)
		}
		if err != nil {
			t.Fatal(err)
		}
		out[how] = im.Stats().BytesFetched
		im.Close()
	}
	return out
}

// delayProxy forwards to a registry, adding d before every blob range
// request: a registry some way off.
func delayProxy(t testing.TB, registry string, d time.Duration) string {
	target, _ := url.Parse("http://" + registry)
	rp := httputil.NewSingleHostReverseProxy(target)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Range") != "" {
			time.Sleep(d) // injected latency, not synchronisation
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// BenchmarkVersions measures what the layer-stable layout saves a node
// and a registry between versions of an image, at the default chunk size:
// the versions of TestVersionsShareChunks, larger (3,000 small files,
// a 64 MiB library among 1,000 modules, 512 MiB of weights). It reports,
// for B, C and D after A, the registry growth of the push (--no-fallback)
// and the bytes a node holding A fetches to read the version whole, each
// over A's stored bytes; and the start of B — mount, then a start-up that
// reads the runtime, the library and the app — on a node whose cache holds
// A, over the same start with B cached (2 ms per range request, page
// cache dropped before each, three rounds, medians).
//
//	go test ./e2e -run '^$' -bench Versions -benchtime 1x
func BenchmarkVersions(b *testing.B) {
	testutil.Require(b, true, "nbdfuse", "docker-registry")
	v := testutil.MakeVersions(b, testutil.VersionSizes{BaseFiles: 3000, Library: 64 << 20, Modules: 1000, Weights: 512 << 20})
	host := testutil.DockerRegistry(b)
	up := newUploadCounter(b, host)
	imgs := map[string]v1.Image{"A": v.A, "B": v.B, "C": v.C, "D": v.D}
	for b.Loop() {
		stored := map[string]int64{}
		grew := map[string]int64{}
		for _, name := range []string{"A", "B", "C", "D"} {
			push(b, host+"/bench:"+name, imgs[name])
			before := up.uploaded.Load()
			out, stderr, code := run(b, "convert", "--plain-http", "--no-fallback", "--json", up.host+"/bench:"+name, up.host+"/bench:"+name+"-lazyblk")
			if code != 0 {
				b.Fatalf("convert %s: %s", name, stderr)
			}
			var sum struct{ DataSize int64 }
			json.Unmarshal([]byte(out), &sum)
			stored[name], grew[name] = sum.DataSize, up.uploaded.Load()-before
		}
		for _, name := range []string{"B", "C", "D"} {
			f := fetchedAfter(b, host, "bench:A-lazyblk", "bench:"+name+"-lazyblk")["fill"]
			b.ReportMetric(float64(grew[name])/float64(stored["A"]), name+"-grew/A")
			b.ReportMetric(float64(f)/float64(stored["A"]), name+"-fetched/A")
			b.Logf("%s after A (A stores %d MiB): registry grew %.2f MiB, a node holding A fetched %.2f MiB", name,
				stored["A"]>>20, float64(grew[name])/(1<<20), float64(f)/(1<<20))
		}
		cold, warm := startAfter(b, delayProxy(b, host, 2*time.Millisecond))
		b.ReportMetric(cold.Seconds()/warm.Seconds(), "B-start-holdingA/B-warm")
		b.Logf("start of B: %v on a node holding A, %v with B cached", cold, warm)
	}
}

// startAfter times the start of B (mount, start-up reads) through host
// from a cache that holds A, and from one that holds B: medians of three.
func startAfter(b *testing.B, host string) (cold, warm time.Duration) {
	e := &mountEnv{host: host, state: b.TempDir()}
	fill := func(ref string, dir string) {
		if _, stderr, code := run(b, "cat", "--plain-http", "--cache-dir", dir, "--cache-size", "100GiB", host+"/"+ref); code != 0 {
			b.Fatalf("cat %s: %s", ref, stderr)
		}
	}
	start := func(cacheDir string) time.Duration {
		dir := b.TempDir()
		dropCaches(b)
		t0 := time.Now()
		if _, stderr, code := run(b, "mount", "--state-dir", e.state, "--attach", "nbdfuse", "--plain-http", "--cache-dir", cacheDir,
			"--cache-size", "100GiB", "--no-trace", "--fill-below", "0", host+"/bench:B-lazyblk", dir); code != 0 {
			b.Fatalf("mount B: %s", stderr)
		}
		startupReads(b, dir)
		d := time.Since(t0)
		if _, stderr, code := run(b, "umount", "--state-dir", e.state, dir); code != 0 {
			b.Fatalf("umount: %s", stderr)
		}
		return d
	}
	var colds, warms []time.Duration
	for range 3 {
		holdsA, holdsB := b.TempDir(), b.TempDir()
		fill("bench:A-lazyblk", holdsA)
		fill("bench:B-lazyblk", holdsB)
		colds, warms = append(colds, start(holdsA)), append(warms, start(holdsB))
	}
	slices.Sort(colds)
	slices.Sort(warms)
	return colds[1], warms[1]
}

// startupReads is a start-up of the versions' image: the runtime's files,
// the library, the app.
func startupReads(b *testing.B, dir string) {
	for _, pattern := range []string{"usr/lib/runtime/*.py", "opt/pkg/libbig.so", "app/*"} {
		paths, _ := filepath.Glob(filepath.Join(dir, pattern))
		if len(paths) == 0 {
			b.Fatalf("no %s in the image", pattern)
		}
		for _, p := range paths {
			if _, err := os.ReadFile(p); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// TestConvertMountsFromAnotherRepository: a version pushed to another
// repository of the same registry (docker-registry 2.8, which offers
// cross-repository mounts) with --mount-from the first version's
// repository uploads only what is new: the layer blobs they share are
// mounted, and convert says so.
func TestConvertMountsFromAnotherRepository(t *testing.T) {
	v := testutil.MakeVersions(t, testutil.VersionSizes{BaseFiles: 100, Library: 2 << 20, Modules: 20, Weights: 2 << 20})
	host := testutil.DockerRegistry(t)
	up := newUploadCounter(t, host)
	push(t, host+"/src:A", v.A)
	push(t, host+"/src:B", v.B)
	if _, stderr, code := run(t, "convert", "--plain-http", "--no-fallback", "--chunk-size", "256KiB", up.host+"/src:A", up.host+"/team-a/app:v1"); code != 0 {
		t.Fatalf("convert A: %s", stderr)
	}
	before := up.uploaded.Load()
	out, stderr, code := run(t, "convert", "--plain-http", "--no-fallback", "--chunk-size", "256KiB", "--json",
		"--mount-from", up.host+"/team-a/app", up.host+"/src:B", up.host+"/team-b/app:v2")
	if code != 0 {
		t.Fatalf("convert B --mount-from: %s", stderr)
	}
	var sum struct{ Push fetcher.PushReport }
	if err := json.Unmarshal([]byte(out), &sum); err != nil {
		t.Fatal(err)
	}
	grew := up.uploaded.Load() - before
	t.Logf("B into another repository: %+v, %d bytes uploaded", sum.Push, grew)
	if sum.Push.Mounted < 3 || sum.Push.MountedBytes < 4<<20 || grew > sum.Push.Bytes-sum.Push.MountedBytes+64<<10 {
		t.Errorf("push report %+v, %d bytes uploaded: want A's layer blobs mounted, not sent", sum.Push, grew)
	}
	// What was mounted is there: B reads whole from its own repository.
	if _, stderr, code := run(t, "cat", "--plain-http", host+"/team-b/app:v2"); code != 0 {
		t.Errorf("cat B from its repository: %s", stderr)
	}
}
