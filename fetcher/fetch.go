package fetcher

import (
	"context"
	"errors"
	"runtime"
	"slices"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sync/errgroup"

	"github.com/lazyblk/lazyblk/cache"
	"github.com/lazyblk/lazyblk/imagefmt"
)

// fetch runs one range request for run under a connection slot (a demand
// fetch takes its slot and memory here; a background one's caller
// reserved them before claiming the run: see reserve), decodes and
// verifies every chunk (refetching a bad one once), wakes the waiters,
// and only then writes the chunks to the cache: readers never wait for a
// disk sync, and the run stays registered until cached so nobody fetches
// it again meanwhile.
func (im *Image) fetch(ctx context.Context, run []int, cl *call) {
	defer func() {
		im.mu.Lock()
		for _, j := range run {
			if im.inflight[j] == cl {
				delete(im.inflight, j)
			}
		}
		im.mu.Unlock()
		close(cl.settled)
		im.fetchedAt.Store(time.Now().UnixNano())
		cl.release(&im.bufs)
	}()
	ctx, cancel := context.WithTimeout(ctx, im.o.readTimeout)
	defer cancel()
	// Memory: a run's bytes are held from before its request until it is
	// cached, so a source faster than the cache disk cannot pile up runs.
	slots, mem, size := im.demand, im.demandMem, im.runMemory(run, false)
	if cl.background {
		slots, mem, size = im.background, im.bgMem, im.runMemory(run, true)
	}
	if !cl.background { // a background fetch's caller reserved both (reserve)
		if err := mem.Acquire(ctx, size); err != nil {
			cl.fail(run, err)
			return
		}
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			mem.Release(size)
			cl.fail(run, ctx.Err())
			return
		}
	}
	defer mem.Release(size)
	ok := im.fetchRun(ctx, run, cl, slots)
	<-slots // the connection is free: the cache write needs none
	// Held before the run leaves inflight: a reader finds its chunks in
	// one or the other.
	if ok && im.recent != nil {
		for _, j := range run {
			if cl.errs[j] == nil {
				im.recent.put(j, cl.chunks[j])
			}
		}
	}
	close(cl.done)
	if !ok || im.o.cache == nil {
		return
	}
	im.cacheRun(ctx, run, cl)
}

// cacheRun writes the verified chunks of run to the cache, side by side
// (they land on different stripes), each under a writer slot; through the
// page cache unless the run is the fill's (cache.When). It finishes what
// was fetched even when Close cancels the image: the writes are bounded
// by the slots and cheaper than a refetch.
func (im *Image) cacheRun(ctx context.Context, run []int, cl *call) {
	wctx := context.WithoutCancel(ctx)
	var wg sync.WaitGroup
	for _, j := range run {
		if cl.errs[j] != nil {
			continue
		}
		when := cache.ReadSoon
		if cl.readLater || im.readPast(j) {
			when = cache.ReadLater
		}
		im.cacheWrites <- struct{}{}
		wg.Go(func() {
			defer func() { <-im.cacheWrites }()
			if err := im.o.cache.PutVerified(wctx, cache.Digest(im.index.Chunks[j].Digest), cl.chunks[j], when); err != nil {
				im.cacheFailed(true, j, err)
			} else {
				im.cacheWorked()
			}
		})
	}
	wg.Wait()
}

// readPast reports whether a sequential reader is in chunk j or past it:
// it takes the rest of the chunk from the fetch's memory while the chunk
// is written, and nothing is about to read it from the cache (a fast
// sequential reader keeps up with readahead, and copying its chunks into
// the page cache cost it a fifth of its throughput). A scattered reader's
// miss is not read past: such readers come back to other parts of the
// chunk (python3 importing numpy touched 33 of 39 chunks of a cluster in
// no order), and those reads are then served from memory.
func (im *Image) readPast(j int) bool {
	im.mu.Lock()
	defer im.mu.Unlock()
	return im.seqRun > 0 && im.lastRead >= j
}

// fetchRun fills cl for run while the caller holds a slot of slots
// (idle ones may carry parts of the request); false: no chunk was fetched.
func (im *Image) fetchRun(ctx context.Context, run []int, cl *call, slots chan struct{}) bool {
	x := im.index
	first := x.Chunks[run[0]]
	end := uint64(0) // the run's stored bytes end where its furthest chunk does (runLocked)
	for _, j := range run {
		end = max(end, x.Chunks[j].Offset+uint64(x.Chunks[j].Length))
	}
	stored := im.buffer(cl, int(end-first.Offset))
	parts := 1 + im.spareSlots(slots, len(stored))
	mirror, err := im.getParts(ctx, im.blob(run[0]), stored, int64(first.Offset), parts)
	for range parts - 1 { // the connections are free again; decoding needs none
		<-slots
	}
	if err != nil {
		for _, j := range run {
			cl.errs[j] = err
		}
		return false
	}
	// Verify the run's chunks on every core: hashing is most of the CPU a
	// cold read costs.
	outs := make([][]byte, len(run))
	errs := make([]error, len(run))
	refetched := make([]bool, len(run))
	storedOf := make([][]byte, len(run))
	for k, j := range run {
		c := x.Chunks[j]
		storedOf[k] = stored[c.Offset-first.Offset : c.Offset-first.Offset+uint64(c.Length)]
		outs[k] = storedOf[k] // raw chunks are verified in place
		if c.Encoding != imagefmt.EncodingRaw {
			outs[k] = im.buffer(cl, x.ChunkLen(j))
		}
	}
	decodeStart := time.Now()
	// The part the reader who started the fetch asked for, first, into
	// the chunk's own buffer.
	earlyServed := false
	if e := cl.early; e != nil {
		if k := slices.Index(run, e.chunk); k >= 0 {
			earlyServed = im.decodeEarly(e, storedOf[k], outs[k])
			took := int64(time.Since(decodeStart))
			im.stats.decodeNanos.Add(took)
			if earlyServed {
				im.stats.decodeWaitNanos.Add(took)
			}
		}
	}
	var g errgroup.Group
	g.SetLimit(runtime.GOMAXPROCS(0))
	for k, j := range run {
		part, out := storedOf[k], outs[k]
		g.Go(func() error {
			t0 := time.Now()
			defer func() { im.stats.decodeNanos.Add(int64(time.Since(t0))) }()
			if earlyServed && j == cl.early.chunk && im.decodeRest(j, part, out, cl.early) {
				return nil
			}
			outs[k], refetched[k], errs[k] = im.decode(ctx, j, part, out)
			return nil
		})
	}
	_ = g.Wait()
	if !cl.background && !earlyServed {
		im.stats.decodeWaitNanos.Add(int64(time.Since(decodeStart)))
	}
	for k, j := range run {
		cl.chunks[j], cl.errs[j] = outs[k], errs[k]
	}
	// A mirror served the run unless its bad chunks came from the origin.
	cl.mirror = mirror && !slices.Contains(refetched, true)
	return true
}

// blob is the digest of the blob chunk i is stored in.
func (im *Image) blob(i int) v1.Hash { return im.index.Blobs[im.index.Chunks[i].Blob].Digest }

// get fetches stored bytes of blob with retries, counting traffic;
// originOnly bypasses mirrors. mirror reports that a mirror served them.
func (im *Image) get(ctx context.Context, blob v1.Hash, p []byte, off int64, originOnly bool) (mirror bool, err error) {
	err = retry(ctx, &im.o, func(error) { im.stats.retries.Add(1) }, func(ctx context.Context) error {
		var err error
		mirror, err = im.src.readRange(ctx, blob, p, off, originOnly)
		if !errors.Is(err, ErrHostDown) { // failed at once by the breaker: never sent
			im.stats.requests.Add(1)
		}
		return err
	})
	if err == nil {
		im.stats.bytesFetched.Add(int64(len(p)))
	}
	return mirror, err
}

// decode verifies chunk j from its stored bytes into out (stored itself
// for a raw chunk: verified in place, without a copy). A chunk that fails
// verification is one failed attempt: it is refetched on its own, from
// the origin, while attempts remain (WithTimeouts), each failure counted.
func (im *Image) decode(ctx context.Context, j int, stored, out []byte) (_ []byte, refetched bool, _ error) {
	x := im.index
	err := x.DecodeChunk(j, stored, out)
	for try := 1; errors.Is(err, imagefmt.ErrChunkCorrupt); try++ {
		im.stats.verifyFailures.Add(1)
		if try == im.o.attempts || ctx.Err() != nil {
			break
		}
		im.o.log.Warn("chunk failed verification, refetching", "chunk", j, "ref", im.loc.String(), "attempt", try+1)
		again := make([]byte, len(stored))
		refetched = true
		if _, err = im.get(ctx, im.blob(j), again, int64(x.Chunks[j].Offset), true); err != nil {
			break
		}
		if x.Chunks[j].Encoding == imagefmt.EncodingRaw {
			out = again
		}
		err = x.DecodeChunk(j, again, out)
	}
	if err != nil {
		return nil, refetched, err
	}
	return out, refetched, nil
}

// runMemory is the memory run takes while fetched: its chunks' cost,
// within the budget of demand or, for background, of prefetch and fill
// (one oversized run still proceeds alone).
func (im *Image) runMemory(run []int, background bool) int64 {
	budget := im.o.memory
	if background {
		budget = im.o.memory / 2
	}
	return min(int64(sum(run, im.chunkCost)), budget)
}

// chunkCost is the memory chunk i takes while fetched: its stored bytes,
// plus its decoded bytes when those are a separate buffer (zstd). A run
// of well-compressed chunks is capped by what it decodes to, not by its
// few stored bytes.
func (im *Image) chunkCost(i int) int {
	c := im.index.Chunks[i]
	if c.Encoding == imagefmt.EncodingZstd {
		return int(c.Length) + im.index.ChunkLen(i)
	}
	return int(c.Length)
}
