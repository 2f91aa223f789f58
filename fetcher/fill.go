package fetcher

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/time/rate"

	"github.com/lazyblk/lazyblk/imagefmt"
)

// ErrNoCache reports background work asked of an image opened without a
// cache: it would fetch bytes only to drop them.
var ErrNoCache = errors.New("fetcher: prefetch and fill need a cache")

// Prefetch fetches the given chunks, in the given order, into the cache:
// a trace, predicted demand. It runs below demand reads: it uses only
// background connection slots, so a demand miss never queues behind it.
// Adjacent chunks are coalesced into large ranges; the fill rate cap
// applies. It returns once every listed chunk is cached, those another
// fetch had in flight included, or its fetch failed.
func (im *Image) Prefetch(ctx context.Context, chunks []int) error {
	im.prefetching.Add(1) // no guessing at neighbours meanwhile (fetchNear)
	defer im.prefetching.Add(-1)
	return im.prefetch(ctx, chunks, false)
}

// fillQuiet is how long demand must have been quiet before the fill
// starts a request (no read, no demand fetch started). Measured
// (scripts/bench/coldstart.sh, 2 cores): a fill that only waited for no
// demand fetch in flight slowed a python3 start-up by 40%, taking hashing
// and disk time in the pauses between its misses; one that ignored cache
// hits did the same to a start-up served by its trace.
const fillQuiet = 500 * time.Millisecond

// fillMaxWait bounds the wait for quiet before each fill request: under a
// reader that never pauses the fill still moves, a run at a time.
const fillMaxWait = 5 * time.Second

// prefetch is Prefetch; yield makes each request wait until the image
// has been quiet for fillQuiet (see waitQuiet), so the fill takes neither bandwidth nor CPU
// from a reader (a sequential reader keeps its own readahead in flight).
func (im *Image) prefetch(ctx context.Context, chunks []int, yield bool) error {
	if im.o.cache == nil {
		return ErrNoCache
	}
	var limiter *rate.Limiter
	if im.o.fillRate > 0 {
		limiter = rate.NewLimiter(rate.Limit(im.o.fillRate), im.o.maxCoalesce)
	}
	parent := ctx
	g, ctx := errgroup.WithContext(ctx)
	var others []*call // fetches of listed chunks that someone else started
	for k := 0; k < len(chunks); k++ {
		i := chunks[k]
		if i < 0 || i >= len(im.index.Chunks) {
			return errors.Join(fmt.Errorf("fetcher: prefetch chunk %d outside 0..%d", i, len(im.index.Chunks)-1), g.Wait())
		}
		if yield {
			if err := im.waitQuiet(ctx, fillQuiet, fillMaxWait); err != nil {
				return errors.Join(err, g.Wait())
			}
		}
		if err := im.reserve(ctx); err != nil {
			return errors.Join(err, g.Wait())
		}
		run, cl, busy := im.claim(i, chunks[k:], yield)
		if busy != nil && !slices.Contains(others, busy) {
			others = append(others, busy)
		}
		if cl == nil {
			continue
		}
		k += len(run) - 1 // the run covered the next chunks of the list too
		g.Go(func() error {
			im.fetch(ctx, run, cl) // releases the reservation
			for _, j := range run {
				if err := cl.errs[j]; err != nil {
					return fmt.Errorf("fetcher: prefetch chunk %d: %w", j, err)
				}
			}
			if limiter != nil {
				return limiter.WaitN(ctx, min(sum(run, im.storedLen), im.o.maxCoalesce))
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	// Done means cached: a demand fetch (the mount's first reads, a
	// reader's neighbours) that holds listed chunks writes them to the
	// cache after its readers have them, and a reader coming right after
	// the prefetch would miss meanwhile.
	for _, cl := range others {
		select {
		case <-cl.settled:
		case <-parent.Done():
			return parent.Err()
		}
	}
	return nil
}

// Fill fetches every chunk not yet cached, in image order, and returns
// when the image is complete. It yields to demand: a request starts only
// while no demand fetch is in flight and the image had no read for
// fillQuiet (or fillMaxWait passed).
func (im *Image) Fill(ctx context.Context) error {
	all := make([]int, len(im.index.Chunks))
	for i := range all {
		all[i] = i
	}
	return im.prefetch(ctx, all, true)
}

// Complete reports whether every non-hole chunk is cached.
func (im *Image) Complete() bool { return im.complete(im.Cached()) }

// complete: cached bytes that make the whole image.
func (im *Image) complete(cached int64) bool { return im.o.cache != nil && cached == im.Size() }

// reserve takes, for a background fetch about to claim its chunks, a
// background slot and the memory of the largest run it can claim — before
// claiming, so a demand reader that finds those chunks in flight and
// waits for them never waits behind other background fetches for a slot
// or for memory (their cache writes). claim gives back what the run does
// not use.
func (im *Image) reserve(ctx context.Context) error {
	select {
	case im.background <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	if err := im.bgMem.Acquire(ctx, im.reserveSize()); err != nil {
		<-im.background
		return err
	}
	return nil
}

// tryReserve is reserve without waiting: false, nothing taken, when the
// slot or the memory is not free now.
func (im *Image) tryReserve() bool {
	select {
	case im.background <- struct{}{}:
	default:
		return false
	}
	if !im.bgMem.TryAcquire(im.reserveSize()) {
		<-im.background
		return false
	}
	return true
}

// reserveSize is the most memory a background run can take (runLocked
// caps a run at maxCoalesce unless its first chunk alone costs more: a
// zstd chunk's stored plus decoded bytes).
func (im *Image) reserveSize() int64 {
	return min(int64(max(im.o.maxCoalesce, 2*int(im.index.ChunkSize))), im.o.memory/2)
}

// claim registers a background fetch for chunk i and the chunks after it
// in want that extend it back to back, under what the caller reserved
// (the slot and memory the run does not use are given back); nil, all
// given back, when i needs no fetch. readLater marks the fill's fetches,
// whose chunks nobody is about to read. busy is the fetch already in
// flight for chunk i, if any.
func (im *Image) claim(i int, want []int, readLater bool) (run []int, cl, busy *call) {
	im.mu.Lock()
	defer im.mu.Unlock()
	c := im.index.Chunks[i]
	busy = im.inflight[i]
	if busy != nil || c.Encoding == imagefmt.EncodingHole || im.held(i) {
		<-im.background
		im.bgMem.Release(im.reserveSize())
		return nil, nil, busy
	}
	last := i
	for k := 1; k < len(want) && want[k] == last+1; k++ {
		last++
	}
	run = im.runLocked(i, last)
	im.bgMem.Release(im.reserveSize() - im.runMemory(run, true))
	cl = im.startLocked(run, true)
	cl.readLater = readLater
	return run, cl, nil
}
