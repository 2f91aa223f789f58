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
		im.seqRun, im.hinted = 0, i
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
	}
	full := max(2, 8*im.o.maxCoalesce/int(im.index.ChunkSize))
	window := min(full, 1<<min(im.seqRun, 30))
	j := max(im.raNext, i)
	for ; j < len(im.index.Chunks) && j-i <= window; j++ {
		c := im.index.Chunks[j]
		if _, busy := im.inflight[j]; busy || c.Encoding == imagefmt.EncodingHole {
			continue
		}
		if im.o.cache != nil && im.o.cache.Has(cache.Digest(c.Digest)) {
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
	im.raNext = run[len(run)-1] + 1
}

// cachedAhead is how many cached chunks ahead of a sequential reader the
// cache is asked to load into memory (cache.WillNeed).
const cachedAhead = 2
