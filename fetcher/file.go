package fetcher

import (
	"os"
	"time"

	"github.com/lazyblk/lazyblk/cache"
	"github.com/lazyblk/lazyblk/imagefmt"
)

// Files names where the n bytes at off lie in the cache, for a block
// server that sends them from there without copying
// (blockdev.FileBackend): add is called, in order, with each cached chunk
// file the range covers and the part of it the range takes. The chunks
// are checked like any first read and pinned until release. ok is false,
// nothing pinned, when the range is not all in cached chunks (a miss or a
// hole): the caller then discards what add received and reads with
// ReadAt. With now, a chunk that would have to be checked first (its
// first read since the cache was opened) also makes ok false, at once.
func (im *Image) Files(off int64, n int, now bool, add func(f *os.File, foff int64, n int)) (release func(), ok bool) {
	if im.o.cache == nil || off < 0 || n <= 0 || off+int64(n) > im.Size() {
		return nil, false
	}
	start := time.Now()
	cs := int64(im.index.ChunkSize)
	first, last := int(off/cs), int((off+int64(n)-1)/cs)
	// Every chunk first: a range over several that is not all there
	// opens (and counts as cache hits) none of them but by a race. A
	// range in one chunk, most reads, needs no look before File.
	there := im.o.cache.Has
	if now {
		there = im.o.cache.Ready
	}
	for i := first; i <= last; i++ {
		if c := im.index.Chunks[i]; c.Encoding == imagefmt.EncodingHole || last > first && !there(cache.Digest(c.Digest)) {
			return nil, false
		}
	}
	releases := make([]func(), 0, last-first+1)
	release = func() {
		for _, r := range releases {
			r()
		}
	}
	for i := first; i <= last; i++ {
		c, base, size := im.index.Chunks[i], int64(i)*cs, int64(im.index.ChunkLen(i))
		f, r, ok := im.o.cache.File(cache.Digest(c.Digest), size, now)
		if !ok {
			release()
			return nil, false
		}
		releases = append(releases, r)
		lo, hi := max(off, base)-base, min(off+int64(n), base+size)-base
		add(f, lo, int(hi-lo))
	}
	im.readAt.Store(start.UnixNano())
	im.access.record(off, int64(n), im.Size())
	for i := first; i <= last; i++ {
		im.touch(i)
		im.stats.hits.Add(1)
	}
	im.stats.fromCache.observe(time.Since(start))
	return release, true
}
