package fetcher_test

import (
	"sync/atomic"
	"testing"

	"github.com/lazyblk/lazyblk/cache"
	"github.com/lazyblk/lazyblk/fetcher"
)

// TestMissAfterCachedFetchesNothing opens the window between a reader's
// cache miss and its join: while reader A's fetch of a chunk is held at
// the registry, reader B misses the same chunk in the cache; before B
// joins, A's fetch completes, caches the chunk and leaves flight. B must
// then read the cache, not send the chunk's range request again (16 NBD
// clients of one export did, in CI: TestManyInstancesOneExport).
func TestMissAfterCachedFetchesNothing(t *testing.T) {
	c := newCache(t, 64<<20, 1)
	var (
		im     *fetcher.Image
		g      *gate
		want   []byte
		demand int
		misses atomic.Int32
		aRead  = make(chan struct{})
	)
	hook := fetcher.WithMissHook(func(i int) {
		if i != demand || misses.Add(1) != 2 {
			return // reader A's miss: it starts the fetch
		}
		// Reader B missed while A's fetch is held: let it go, and wait
		// until A has its bytes and the fetch has cached them.
		g.open()
		<-aRead
		fetcher.WaitSettled(im, i)
	})
	var data []int
	im, g, want, data = gatedImage(t, func(data []int) []int { return data[:1] }, fetcher.WithCache(c), hook)
	demand = data[0]
	go func() {
		defer close(aRead)
		readWhole(t, im, want, demand, "of reader A")
	}()
	<-g.held // A's fetch is in flight
	readWhole(t, im, want, demand, "of reader B")
	<-aRead
	if !c.Has(cache.Digest(im.Index().Chunks[demand].Digest)) {
		t.Fatalf("chunk %d is not cached after both reads", demand)
	}
	x := im.Index()
	g.mu.Lock()
	defer g.mu.Unlock()
	n := 0
	for _, r := range g.ranges {
		if r.touches(x, x.Chunks[demand]) {
			n++
		}
	}
	if n != 1 {
		t.Errorf("chunk %d was fetched by %d range requests, want 1: a reader that missed it before it was cached fetched it again", demand, n)
	}
}
