package fetcher

import (
	"github.com/lazyblk/lazyblk/cache"
	"github.com/lazyblk/lazyblk/imagefmt"
)

// touch notes a read of chunk i: its first touch goes into the trace, and
// a sequential reader's chunk and the runs ahead of it are kept in flight
// so reading streams like one long download instead of waiting a round
// trip per run. The window ahead doubles with every chunk of the
// sequential run, up to two coalesced runs: a reader of one small file (a
// block device does not know where files end) fetches a few chunks beyond
// it, a reader of gigabytes fetches 64 MiB ahead after five chunks.
func (im *Image) touch(i int) {
	im.mu.Lock()
	defer im.mu.Unlock()
	if !im.touched[i] {
		im.touched[i] = true
		im.order = append(im.order, i)
	}
	switch im.lastRead {
	case i: // the same chunk again
	case i - 1:
		im.seqRun++
	default:
		// A new run: its readahead starts from here. A frontier left by an
		// earlier run further on (a start-up reading metadata at the
		// image's end) would hold back every later run before it — a
		// model's weights read after its framework's import got no
		// readahead, at half a fresh mount's speed.
		im.seqRun, im.hinted, im.loaded, im.raNext = 0, i, i, i+1
	}
	im.lastRead = i
	if im.seqRun == 0 {
		return
	}
	if im.o.cache != nil { // read ahead from the cache disk too
		for k := max(im.hinted+1, i+1); k <= i+cachedAhead && k < len(im.index.Chunks); k++ {
			im.hinted = k
			go im.o.cache.WillNeed(cache.Digest(im.index.Chunks[k].Digest))
		}
		for k := max(im.loaded+1, i+cachedAhead+1); k <= i+cachedAhead+loadedAhead && k < len(im.index.Chunks); k++ {
			im.loaded = k
			go im.o.cache.Preload(cache.Digest(im.index.Chunks[k].Digest))
		}
	}
	full := max(2, 8*im.o.maxCoalesce/int(im.index.ChunkSize))
	window := min(full, 1<<min(im.seqRun, 30))
	j := max(im.raNext, i)
	for ; j < len(im.index.Chunks) && j-i <= window; j++ {
		c := im.index.Chunks[j]
		if _, busy := im.inflight[j]; busy || c.Encoding == imagefmt.EncodingHole {
			continue
		}
		if im.held(j) {
			continue
		}
		break
	}
	im.raNext = j
	if j >= len(im.index.Chunks) || j-i > window {
		return
	}
	end := len(im.index.Chunks) - 1
	if window < full { // still growing: no further than the window
		end = min(end, i+window)
	}
	run := im.runLocked(j, end)
	cl := im.startLocked(run, false)
	im.goFetch(run, cl)
	im.stats.readahead.Add(int64(len(run)))
	im.raNext = run[len(run)-1] + 1
}

// cachedAhead is how many cached chunks ahead of a sequential reader the
// cache is asked to check, or load into memory once checked
// (cache.WillNeed); the loadedAhead chunks after those are only read in
// by the kernel (cache.Preload), so that their checks, the first time a
// process reads them, find the bytes in memory instead of waiting on the
// disk. Measured, the first read of a 1.1 GiB image through nbdfuse after
// its server started: 596–652 MB/s with the loads against 516–545
// without (four runs each, scripts/bench/nbd.sh's first pair).
const (
	cachedAhead = 2
	loadedAhead = 4
)

// fetchNear starts, below demand, the fetch of the chunks next to chunk
// i, whose demand miss has just started a fetch outside any sequential
// run: a start-up's reads cluster without running in order (python3
// importing numpy touched 33 of the 39 chunks between the first and last
// of its cluster, in no order), so a neighbour is likely the next miss,
// and fetching it now overlaps the reader's work instead of costing a
// round trip after it. The two chunks after i go as one range, the one
// before as another, each on a background connection and only if one is
// free, and not while a Prefetch (a trace replay) runs: the trace knows
// better, and guessed neighbours would take its connections and cut its
// coalesced ranges short. Measured (the cold-start image, python3
// importing numpy, 2 ms RTT): 2.0–2.3 s against 2.8–2.9 s without, warm
// 1.1–1.2 s.
func (im *Image) fetchNear(i int) {
	if im.o.cache == nil || im.prefetching.Load() > 0 {
		return
	}
	im.mu.Lock()
	sequential := im.seqRun > 0
	im.mu.Unlock()
	if sequential {
		return // readahead covers it
	}
	var near []int
	for _, j := range []int{i + 1, i + 2, i - 1} {
		if j >= 0 && j < len(im.index.Chunks) {
			near = append(near, j)
		}
	}
	for k := 0; k < len(near); k++ {
		if !im.tryReserve() {
			return
		}
		run, cl, _ := im.claim(near[k], near[k:], false)
		if cl == nil { // cached, in flight or a hole
			continue
		}
		k += len(run) - 1
		im.wg.Add(1)
		go func() {
			defer im.wg.Done()
			im.fetch(im.life, run, cl) // releases the reservation
		}()
	}
}
