package fetcher_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"path"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/lazyblk/lazyblk/cache"
	"github.com/lazyblk/lazyblk/fetcher"
	"github.com/lazyblk/lazyblk/imagefmt"
	"github.com/lazyblk/lazyblk/internal/testutil"
)

// readChunks reads the first bytes of each chunk, in order.
func readChunks(t *testing.T, im *fetcher.Image, chunks ...int) {
	t.Helper()
	p := make([]byte, 100)
	for _, i := range chunks {
		if _, err := im.ReadAt(context.Background(), p, int64(i)*int64(im.Index().ChunkSize)); err != nil {
			t.Fatalf("read chunk %d: %v", i, err)
		}
	}
}

// dataChunks returns the image's chunks that hold bytes (not holes).
func dataChunks(x *imagefmt.Index) []int {
	var out []int
	for i, c := range x.Chunks {
		if c.Encoding != imagefmt.EncodingHole {
			out = append(out, i)
		}
	}
	return out
}

// gatedImage pushes a 2 MiB test image to a fresh registry and returns
// its chunk index, its bytes, its data chunks, and the image opened with
// options through a gate (newGate) that holds the requests for chunks
// gated(data) returns.
func gatedImage(t *testing.T, gated func(data []int) []int, opts ...fetcher.Option) (*fetcher.Image, *gate, []byte, []int) {
	t.Helper()
	host := testutil.GGCRRegistry(t)
	loc, want := testutil.BlockImage(t, host+"/img:v1", 2<<20)
	d, err := fetcher.Describe(context.Background(), loc)
	if err != nil {
		t.Fatal(err)
	}
	data := dataChunks(d.Index)
	g, proxy := newGate(t, host, d.Index, gated(data))
	return openImage(t, viaProxy(t, loc, proxy), opts...), g, want, data
}

// readWhole reads chunk i within 10 s and fails unless it holds want's
// bytes; what says why the read should be answered.
func readWhole(t *testing.T, im *fetcher.Image, want []byte, i int, what string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cs := int64(im.Index().ChunkSize)
	p := make([]byte, im.Index().ChunkLen(i))
	if _, err := im.ReadAt(ctx, p, int64(i)*cs); err != nil {
		t.Fatalf("demand read of chunk %d %s: %v", i, what, err)
	}
	if string(p) != string(want[int64(i)*cs:int64(i)*cs+int64(len(p))]) {
		t.Fatalf("demand read of chunk %d returned wrong bytes", i)
	}
}

// TestTraceRoundTrip records the first touches of a workload, pushes the
// trace next to the image and finds it again, on a registry with the OCI
// referrers API and on docker-registry 2.8, which has none (the referrers
// tag sha256-<hex> holds the list there). The newest trace wins, and a
// trace of another image is refused before anything is pushed.
func TestTraceRoundTrip(t *testing.T) {
	for _, reg := range []struct {
		name     string
		host     func(testing.TB) string
		referrer bool // the registry answers the referrers API
	}{{"referrers-api", testutil.ReferrersRegistry, true}, {"docker-registry", testutil.DockerRegistry, false},
		// distribution v3.0.0 answers 404 to the referrers API (its
		// implementation, distribution PR 4828, is not released): the tag
		// schema it is.
		{"distribution-v3", testutil.DistributionRegistry, false}} {
		t.Run(reg.name, func(t *testing.T) {
			ctx := context.Background()
			host := reg.host(t)
			loc, _ := testutil.BlockImage(t, host+"/img:v1", 1<<20)
			d, err := fetcher.Describe(ctx, loc)
			if err != nil {
				t.Fatal(err)
			}
			data := dataChunks(d.Index)
			if len(data) < 10 {
				t.Fatalf("image has %d data chunks, want 10 or more", len(data))
			}
			im := openImage(t, loc)
			order := []int{data[7], data[2], data[9], data[2], data[7], data[0]}
			readChunks(t, im, order...)
			want := []int{data[7], data[2], data[9], data[0]} // first touches only
			if got := im.Touched(); !slices.Equal(got, want) {
				t.Fatalf("touched %v, want %v", got, want)
			}

			if _, _, err := fetcher.FindTrace(ctx, loc, d.IndexDigest, d.Index); !errors.Is(err, fetcher.ErrNoTrace) {
				t.Fatalf("before any push FindTrace = %v, want ErrNoTrace", err)
			}
			old := imagefmt.NewTrace(d.IndexDigest, d.Index, []int{data[1]}, nil)
			if _, err := fetcher.PushTrace(ctx, loc, old); err != nil {
				t.Fatal(err)
			}
			tr := imagefmt.NewTrace(d.IndexDigest, d.Index, im.Touched(), nil)
			h, err := fetcher.PushTrace(ctx, loc, tr)
			if err != nil {
				t.Fatal(err)
			}
			got, gotDigest, err := fetcher.FindTrace(ctx, loc, d.IndexDigest, d.Index)
			if err != nil {
				t.Fatal(err)
			}
			if gotDigest != h || !slices.Equal(got.Chunks, want) {
				t.Fatalf("found trace %s %v, want the newest %s %v", gotDigest, got.Chunks, h, want)
			}

			// Where the list lives: the referrers tag only without the API.
			tag := loc.Ref.Context().Tag(strings.Replace(d.ImageIndex.String(), ":", "-", 1))
			_, err = remote.Head(tag)
			if reg.referrer && err == nil {
				t.Error("a registry with the referrers API got a referrers tag")
			} else if !reg.referrer && err != nil {
				t.Errorf("docker-registry has no referrers tag %s: %v", tag, err)
			}

			// The image itself is what it was.
			if d2, err := fetcher.Describe(ctx, loc); err != nil || d2.ImageIndex != d.ImageIndex {
				t.Fatalf("after the pushes the image is %v (%v), want %s", d2, err, d.ImageIndex)
			}

			other := imagefmt.NewTrace(d.Artifact, d.Index, want, nil) // not the index digest
			if _, err := fetcher.PushTrace(ctx, loc, other); !errors.Is(err, imagefmt.ErrTraceMismatch) {
				t.Fatalf("push of another image's trace: %v, want ErrTraceMismatch", err)
			}
			if _, _, err := fetcher.FindTrace(ctx, loc, d.Artifact, d.Index); !errors.Is(err, fetcher.ErrNoTrace) {
				t.Fatalf("FindTrace for another index = %v, want ErrNoTrace", err)
			}
		})
	}
}

// gate is a registry proxy that holds every range request touching one of
// a set of stored byte ranges until released.
type gate struct {
	held     chan struct{} // one send per held request
	release  chan struct{}
	requests atomic.Int64 // range requests seen
	mu       sync.Mutex
	ranges   []blobRange // the bytes they asked for
}

// blobRange is a range request: bytes first to last of a blob.
type blobRange struct {
	blob        string
	first, last uint64
}

// touches reports whether r asks for any stored byte of chunk c of x.
func (r blobRange) touches(x *imagefmt.Index, c imagefmt.Chunk) bool {
	return c.Encoding != imagefmt.EncodingHole && r.blob == x.Blobs[c.Blob].Digest.String() &&
		c.Offset <= r.last && r.first < c.Offset+uint64(c.Length)
}

// outside returns the range requests seen so far that touch any stored
// byte outside chunks from..to.
func (g *gate) outside(x *imagefmt.Index, from, to int) []blobRange {
	type span struct{ lo, hi uint64 }
	spans := map[string]span{}
	for i := max(from, 0); i <= min(to, len(x.Chunks)-1); i++ {
		if c := x.Chunks[i]; c.Encoding != imagefmt.EncodingHole {
			b := x.Blobs[c.Blob].Digest.String()
			s, ok := spans[b]
			if !ok {
				s = span{^uint64(0), 0}
			}
			spans[b] = span{min(s.lo, c.Offset), max(s.hi, c.Offset+uint64(c.Length))}
		}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []blobRange
	for _, r := range g.ranges {
		if s, ok := spans[r.blob]; !ok || r.first < s.lo || r.last >= s.hi {
			out = append(out, r)
		}
	}
	return out
}

func newGate(t *testing.T, host string, x *imagefmt.Index, chunks []int) (*gate, string) {
	g := &gate{held: make(chan struct{}, 1024), release: make(chan struct{})}
	target, _ := url.Parse("http://" + host)
	rp := httputil.NewSingleHostReverseProxy(target)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var first, last uint64
		if r.Header.Get("Range") != "" {
			g.requests.Add(1)
		}
		if _, err := fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-%d", &first, &last); err == nil {
			rg := blobRange{blob: path.Base(r.URL.Path), first: first, last: last}
			g.mu.Lock()
			g.ranges = append(g.ranges, rg)
			g.mu.Unlock()
			for _, i := range chunks {
				if rg.touches(x, x.Chunks[i]) {
					g.held <- struct{}{}
					select {
					case <-g.release:
					case <-r.Context().Done():
						return
					}
					break
				}
			}
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(g.open)
	return g, strings.TrimPrefix(srv.URL, "http://")
}

var gateOnce sync.Mutex

func (g *gate) open() {
	gateOnce.Lock()
	defer gateOnce.Unlock()
	select {
	case <-g.release:
	default:
		close(g.release)
	}
}

// TestDemandPreemptsTrace replays a trace against a registry that holds
// every request for the trace's chunks: a demand read of a chunk outside
// the trace is answered while the replay is still stuck (demand never
// queues behind prefetch), with one request, as without a trace; once the
// registry lets go, the replay caches every chunk of the trace.
func TestDemandPreemptsTrace(t *testing.T) {
	im, g, want, data := gatedImage(t, func(data []int) []int { return data[:len(data)/2] }, fetcher.WithCache(newCache(t, 64<<20, 1)))
	trace, outside := data[:len(data)/2], data[len(data)-1]

	replayed := make(chan error, 1)
	go func() { replayed <- im.Prefetch(context.Background(), trace) }()
	<-g.held // the replay is waiting on the registry
	readWhole(t, im, want, outside, "outside the trace while the trace replays")
	select {
	case err := <-replayed:
		t.Fatalf("the replay finished (%v) although the registry holds its requests", err)
	default:
	}
	if s := im.Stats(); s.Misses != 1 {
		t.Errorf("the demand read missed %d times, want 1", s.Misses)
	}

	g.open()
	if err := <-replayed; err != nil {
		t.Fatal(err)
	}
	// Every chunk of the trace is a hit now. (Bytes fetched may still
	// grow: reading the trace in order is a sequential read, whose
	// readahead fetches the chunks after it.)
	before := im.Stats()
	readChunks(t, im, trace...)
	if s := im.Stats(); s.Misses != before.Misses || s.Hits-before.Hits < int64(len(trace)) {
		t.Errorf("after the replay, reading the trace's %d chunks: %d hits, %d misses; want only hits",
			len(trace), s.Hits-before.Hits, s.Misses-before.Misses)
	}
}

// TestDemandJoinsNoWaitingPrefetch: a prefetch reserves a run's memory
// before it claims the run's chunks, so a demand read that finds a chunk
// claimed never waits behind another prefetch run for memory. Here
// prefetch's memory fits one run and the registry holds the run of
// chunk held: a demand read of next, the prefetch's other chunk, is
// answered all the same (it waited for the deadline when next was
// claimed first and its fetch then queued for the memory held's run
// took).
func TestDemandJoinsNoWaitingPrefetch(t *testing.T) {
	cs := int64(imagefmt.MinChunkSize)
	// One chunk per run; prefetch's memory (half the budget) fits one run.
	im, g, want, data := gatedImage(t, func(data []int) []int { return data[:1] },
		fetcher.WithCache(newCache(t, 64<<20, 1)), fetcher.WithMaxCoalesce(int(cs)), fetcher.WithMemory(2*cs))
	held, next := data[0], data[len(data)/2]

	prefetched := make(chan error, 1)
	go func() { prefetched <- im.Prefetch(context.Background(), []int{next, held}) }()
	<-g.held // a run holds all of prefetch's memory
	readWhole(t, im, want, next, fmt.Sprintf("in the prefetch, while its run of chunk %d is held", held))
	g.open()
	if err := <-prefetched; err != nil {
		t.Fatal(err)
	}
}

// TestFillYieldsToDemand: while a demand fetch is in flight the fill
// starts no request of its own (the miss's neighbours are fetched with
// it); once the demand read is answered the fill
// completes the image.
func TestFillYieldsToDemand(t *testing.T) {
	im, g, _, data := gatedImage(t, func(data []int) []int { return data[len(data)/2 : len(data)/2+1] },
		fetcher.WithCache(newCache(t, 64<<20, 1)))
	demand := data[len(data)/2]

	read := make(chan error, 1)
	go func() {
		_, err := im.ReadAt(context.Background(), make([]byte, 100), int64(demand)*int64(im.Index().ChunkSize))
		read <- err
	}()
	<-g.held // the demand fetch is in flight
	filled := make(chan error, 1)
	go func() { filled <- im.Fill(context.Background()) }()
	// Absence cannot be awaited: watch for a while that nothing starts.
	select {
	case err := <-filled:
		t.Fatalf("the fill ended (%v) while a demand fetch was in flight", err)
	case <-time.After(300 * time.Millisecond):
	}
	// The demand miss fetches its neighbours too (fetchNear), the fill
	// nothing.
	if out := g.outside(im.Index(), demand-1, demand+2); len(out) != 0 {
		t.Fatalf("range requests %v while the demand fetch was in flight, want only its own and its neighbours'", out)
	}
	g.open()
	if err := <-read; err != nil {
		t.Fatal(err)
	}
	if err := <-filled; err != nil || !im.Complete() {
		t.Fatalf("fill after the demand read: %v, complete %v", err, im.Complete())
	}
}

// TestPrefetchWaitsForOthersFetch: a listed chunk that a demand read is
// already fetching (the mount's first reads) is not fetched again, but
// Prefetch returns only once that fetch has put it in the cache, so a
// reader that comes when the replay is done finds every chunk of the
// trace there (TestPrefetchTrace, under -race, missed twice).
func TestPrefetchWaitsForOthersFetch(t *testing.T) {
	c := newCache(t, 64<<20, 1)
	im, g, want, data := gatedImage(t, func(data []int) []int { return data[:1] }, fetcher.WithCache(c))
	demand, other := data[0], data[len(data)-1]
	x := im.Index()

	read := make(chan struct{})
	go func() {
		defer close(read)
		readWhole(t, im, want, demand, "once the registry lets go")
	}()
	<-g.held // the demand fetch is in flight
	prefetched := make(chan error, 1)
	go func() { prefetched <- im.Prefetch(context.Background(), []int{demand, other}) }()
	for deadline := time.Now().Add(10 * time.Second); !c.Has(cache.Digest(x.Chunks[other].Digest)); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the prefetch did not cache chunk %d within 10 s", other)
		}
	}
	// Absence cannot be awaited: watch for a while that it does not return.
	select {
	case err := <-prefetched:
		t.Fatalf("the prefetch returned (%v) while the demand fetch of its chunk %d was held", err, demand)
	case <-time.After(300 * time.Millisecond):
	}
	g.open()
	if err := <-prefetched; err != nil {
		t.Fatal(err)
	}
	if !c.Has(cache.Digest(x.Chunks[demand].Digest)) {
		t.Errorf("the prefetch returned before chunk %d, fetched by a demand read, was cached", demand)
	}
	<-read
}
