package fetcher

import (
	"context"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"

	"github.com/lazyblk/lazyblk/cache"
	"github.com/lazyblk/lazyblk/cache/bufpool"
	"github.com/lazyblk/lazyblk/imagefmt"
)

// ErrChunkCorrupt reports a chunk whose fetched bytes failed verification
// twice (fetched, refetched): the registry serves bad data.
var ErrChunkCorrupt = imagefmt.ErrChunkCorrupt

// cacheWriters bounds chunks being written to the cache at once, per
// stripe of the cache (each stripe a volume that takes writes in
// parallel with the others); fetched runs beyond it wait, holding their
// memory, so a slow disk throttles fetching instead of letting memory
// grow.
const cacheWriters = 2

// Image is one block image opened for reading. ReadAt is safe for
// concurrent use.
type Image struct {
	loc   Location
	index *imagefmt.Index
	src   source
	o     options

	demand      chan struct{}       // semaphore: demand requests in flight
	background  chan struct{}       // semaphore: prefetch and fill requests in flight
	cacheWrites chan struct{}       // semaphore: runs being written to the cache
	demandMem   *semaphore.Weighted // bytes of demand runs fetched and not yet cached
	bgMem       *semaphore.Weighted // the same for prefetch and fill

	mu       sync.Mutex // guards inflight, lastRead, seqRun, raNext, hinted, loaded, touched, order
	inflight map[int]*call
	lastRead int // chunk of the last read, for sequential detection
	seqRun   int // chunks read in a row before it
	raNext   int // first chunk readahead has not started yet
	hinted   int // last cached chunk readahead asked the cache to check or load
	loaded   int // last cached chunk readahead asked the kernel to read in
	touched  []bool
	order    []int // chunks in the order readers first touched them: the trace

	stats counters

	idleMu     sync.Mutex    // guards demandRuns, demandIdle, lastDemand
	demandRuns int           // demand fetches in flight
	demandIdle chan struct{} // closed while demandRuns is 0
	lastDemand time.Time     // when the last demand fetch started
	readAt     atomic.Int64  // when the last ReadAt came, in UnixNano
	fetchedAt  atomic.Int64  // when the last fetch left inflight, in UnixNano

	prefetching atomic.Int32 // Prefetch calls running (a trace replay)

	recent      *recent      // without a cache: the chunks fetched last (recent.go)
	cacheHealth cacheHealth  // cachehealth.go
	bufs        bufpool.Pool // run buffers (buffers.go)
	access      accessLog    // the bytes readers asked for (access.go)

	// life bounds the fetches readers start and outlives any one reader;
	// Close cancels it and waits for them.
	life   context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// call is one range fetch covering a run of chunks; readers of any chunk
// in the run wait on it.
type call struct {
	background bool // a prefetch or fill: its cancellation is not a reader's error
	readLater  bool // the fill: its chunks go to the cache around the page cache
	mirror     bool // a mirror served it (set before done is closed)
	done       chan struct{}
	settled    chan struct{}  // closed once the run has left inflight: cached, or failed
	chunks     map[int][]byte // decoded, verified chunk contents
	errs       map[int]error
	refs       atomic.Int32 // the fetch and the readers using chunks (buffers.go)
	bufs       []*[]byte    // the pooled buffers chunks are in
	early      *early       // the part its first reader asked for, decoded first (pieces.go)
}

// Open resolves l, fetches and verifies its chunk index and returns the
// image ready for reads.
func Open(ctx context.Context, l Location, opts ...Option) (*Image, error) {
	if _, err := newOptions(opts); err != nil { // fail before any network
		return nil, err
	}
	d, err := Describe(ctx, l, opts...)
	if err != nil {
		return nil, err
	}
	return OpenDescribed(ctx, l, d, opts...)
}

// OpenDescribed opens the image d describes; its counters start with
// what describing it took (retries, verification failures).
func OpenDescribed(ctx context.Context, l Location, d *Description, opts ...Option) (*Image, error) {
	im, err := OpenIndex(ctx, l, d.Index, opts...)
	if err != nil {
		return nil, err
	}
	im.stats.retries.Add(d.Retries)
	im.stats.verifyFailures.Add(d.VerifyFailures)
	return im, nil
}

// OpenIndex opens an image whose index the caller already verified.
func OpenIndex(ctx context.Context, l Location, x *imagefmt.Index, opts ...Option) (*Image, error) {
	o, err := newOptions(opts)
	if err != nil {
		return nil, err
	}
	var src source
	if l.Ref != nil {
		if src, err = newRegistrySource(ctx, l, o); err != nil {
			return nil, err
		}
	} else {
		src = newLayoutSource(l)
	}
	life, cancel := context.WithCancel(context.Background())
	idle := make(chan struct{})
	close(idle)
	im := &Image{demandIdle: idle, loc: l, index: x, src: src, o: o, inflight: map[int]*call{}, lastRead: -2, touched: make([]bool, len(x.Chunks)),
		demand: make(chan struct{}, o.connections), background: make(chan struct{}, o.background),
		cacheWrites: make(chan struct{}, cacheWriters*max(2, o.cache.Stripes())), life: life, cancel: cancel,
		demandMem: semaphore.NewWeighted(o.memory), bgMem: semaphore.NewWeighted(o.memory / 2)}
	if o.cache == nil {
		// As much as readahead fetches ahead of a sequential reader, and
		// the chunks it is reading.
		im.recent = newRecent(int(o.memory) + 2*int(x.ChunkSize))
	}
	return im, nil
}

// Size is the filesystem image size in bytes.
func (im *Image) Size() int64 { return int64(im.index.ImageSize) }

// Index returns the verified chunk index.
func (im *Image) Index() *imagefmt.Index { return im.index }

// Close stops the image's fetches, waits for them, and releases its
// source. Reads after Close fail.
func (im *Image) Close() error {
	im.cancel()
	im.wg.Wait()
	if im.o.cache != nil {
		im.o.cache.CloseIdleFiles()
	}
	return im.src.close()
}

// ReadAt reads len(p) bytes at off. It returns only verified bytes, and
// fails once the read deadline passes (DefaultReadTimeout) rather than
// wait without bound.
func (im *Image) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	return im.read(ctx, p, off, true)
}

// Reader reads the image under ctx, for lazyblk's own use (mapping a
// trace to files): its reads are not a reader's — they count in no trace
// (Touched, Accessed) and drive no readahead.
func (im *Image) Reader(ctx context.Context) io.ReaderAt { return quietReader{ctx, im} }

type quietReader struct {
	ctx context.Context
	im  *Image
}

func (r quietReader) ReadAt(p []byte, off int64) (int, error) { return r.im.read(r.ctx, p, off, false) }

// read is ReadAt; reader says a reader asked (its reads are recorded and
// drive readahead).
func (im *Image) read(ctx context.Context, p []byte, off int64, reader bool) (int, error) {
	if off < 0 || off > im.Size() {
		return 0, fmt.Errorf("fetcher: read at %d outside image of %d bytes", off, im.Size())
	}
	ctx, cancel := context.WithTimeout(ctx, im.o.readTimeout)
	defer cancel()
	cs := int64(im.index.ChunkSize)
	n := int(min(int64(len(p)), im.Size()-off))
	if reader {
		im.readAt.Store(time.Now().UnixNano())
		im.access.record(off, int64(n), im.Size())
	}
	last := int((off + int64(n) - 1) / cs)
	for done := 0; done < n; {
		pos := off + int64(done)
		i := int(pos / cs)
		within := pos - int64(i)*cs
		m := int(min(int64(n-done), int64(im.index.ChunkLen(i))-within))
		if err := im.readChunk(ctx, i, last, p[done:done+m], within, reader); err != nil {
			return done, fmt.Errorf("fetcher: %s: read at %d: %w", im.loc, pos, err)
		}
		done += m
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// readChunk fills p from chunk i at within, fetching on a miss. last is the
// last chunk the current read needs, so one request can cover them all.
func (im *Image) readChunk(ctx context.Context, i, last int, p []byte, within int64, reader bool) error {
	c := im.index.Chunks[i]
	if c.Encoding == imagefmt.EncodingHole {
		clear(p)
		return nil
	}
	if reader {
		im.touch(i)
	}
	start := time.Now()
	missed, recheck := false, true
	for {
		hit, err := im.readHeld(ctx, i, p, within)
		if err != nil || hit {
			if hit && !missed {
				im.stats.hits.Add(1)
				im.stats.fromCache.observe(time.Since(start))
			}
			return err
		}
		if !missed {
			im.stats.misses.Add(1)
			missed = true
		}
		if im.o.testHookMissed != nil {
			im.o.testHookMissed(i)
		}
		cl, started := im.join(i, last, within, len(p), recheck)
		if cl == nil { // cached between the look and the join: read it there, once
			recheck = false
			continue
		}
		if started && reader {
			im.fetchNear(i)
		}
		if again, err := im.await(ctx, cl, i, p, within, start); !again {
			return err
		}
	}
}

// readHeld fills p from chunk i at within if the chunk is at hand without
// a fetch (held): in the cache, or among the recent chunks of an image
// without one. A cache that fails to read is a miss (fetched instead),
// unless the reader is gone.
func (im *Image) readHeld(ctx context.Context, i int, p []byte, within int64) (bool, error) {
	if im.o.cache != nil {
		c := im.index.Chunks[i]
		hit, err := im.o.cache.ReadAt(ctx, cache.Digest(c.Digest), int64(im.index.ChunkLen(i)), p, within)
		switch {
		case err != nil && ctx.Err() != nil: // the reader is gone: start no fetch for it
			return false, err
		case err != nil:
			im.cacheFailed(false, i, err)
			return false, nil
		}
		return hit, nil
	}
	b, ok := im.recent.get(i)
	if ok {
		copy(p, b[within:])
	}
	return ok, nil
}

// join returns the fetch that will deliver chunk i, starting one for i..last
// when none is in flight (a sequential reader finds readahead's); started
// says it did. With recheck, nil: the chunk is held by now, no fetch
// needed. The caller holds the call until it lets it go (await).
func (im *Image) join(i, last int, within int64, n int, recheck bool) (cl *call, started bool) {
	im.mu.Lock()
	defer im.mu.Unlock()
	if cl, ok := im.inflight[i]; ok {
		cl.hold()
		return cl, false
	}
	// A fetch leaves inflight only once its chunks are cached (fetch), so
	// a chunk the caller missed may be held by now: fetching it again
	// would send its range request twice (16 readers of one export did).
	if recheck && im.held(i) {
		return nil, false
	}
	run := im.runLocked(i, last)
	cl = im.startLocked(run, false)
	cl.early = im.wantEarly(i, within, n)
	cl.hold()
	im.goFetch(run, cl)
	return cl, true
}

// goFetch fetches run in a goroutine the image owns. Shared fetches run
// under the image's lifetime, not a reader's context: one impatient
// reader must not cancel what others wait on.
func (im *Image) goFetch(run []int, cl *call) {
	im.wg.Add(1)
	im.demandBusy(1)
	go func() {
		defer im.wg.Done()
		defer im.demandBusy(-1)
		im.fetch(im.life, run, cl)
	}()
}

// fail gives every chunk of run err and wakes the waiters.
func (cl *call) fail(run []int, err error) {
	for _, j := range run {
		cl.errs[j] = err
	}
	close(cl.done)
}

// startLocked registers a fetch of run so readers of its chunks join it.
func (im *Image) startLocked(run []int, background bool) *call {
	cl := &call{background: background, done: make(chan struct{}), settled: make(chan struct{}), chunks: map[int][]byte{}, errs: map[int]error{}}
	cl.refs.Store(1) // the fetch's own, let go once the run has left inflight
	for _, j := range run {
		im.inflight[j] = cl
	}
	return cl
}

// runLocked picks chunks i..last that one range request can fetch: not
// holes, not cached, not in flight, in the same blob, each stored right
// after the run so far or within it (a chunk identical to one before it
// is stored once), within the cap.
func (im *Image) runLocked(i, last int) []int {
	x := im.index
	run := []int{i}
	start, end := x.Chunks[i].Offset, x.Chunks[i].Offset+uint64(x.Chunks[i].Length)
	cost := im.chunkCost(i)
	for j := i + 1; j <= last && j < len(x.Chunks); j++ {
		c := x.Chunks[j]
		within := c.Offset >= start && c.Offset+uint64(c.Length) <= end
		if c.Encoding == imagefmt.EncodingHole || c.Blob != x.Chunks[i].Blob || (c.Offset != end && !within) ||
			cost+im.chunkCost(j) > im.o.maxCoalesce {
			break
		}
		if _, busy := im.inflight[j]; busy || im.held(j) {
			break
		}
		run = append(run, j)
		end = max(end, c.Offset+uint64(c.Length))
		cost += im.chunkCost(j)
	}
	return run
}

// held reports whether chunk j is at hand without a fetch: in the cache,
// or among the recent chunks of an image without one.
func (im *Image) held(j int) bool {
	if im.o.cache != nil {
		return im.o.cache.Has(cache.Digest(im.index.Chunks[j].Digest))
	}
	return im.recent.has(j)
}

// storedLen is the bytes chunk i's range request transfers.
func (im *Image) storedLen(i int) int { return int(im.index.Chunks[i].Length) }

// sum adds f over a run's chunks.
func sum(run []int, f func(int) int) int {
	n := 0
	for _, j := range run {
		n += f(j)
	}
	return n
}
