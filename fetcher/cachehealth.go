package fetcher

import (
	"sync/atomic"
)

// cacheHealth keeps a cache that cannot store or read (a full volume,
// EIO, a volume remounted read-only) from failing reads or flooding the
// log: reads are served from the fetched bytes (or fetched again), each
// failure is counted, the condition is logged once when it starts and
// once when the cache works again.
type cacheHealth struct {
	failing                     atomic.Bool
	writeFailures, readFailures atomic.Int64
}

// cacheFailed records a failed cache write or read of chunk j.
func (im *Image) cacheFailed(write bool, j int, err error) {
	h := &im.cacheHealth
	op := "read"
	if write {
		op = "store"
		h.writeFailures.Add(1)
	} else {
		h.readFailures.Add(1)
	}
	if !h.failing.Swap(true) {
		im.o.log.Warn("the chunk cache cannot "+op+" chunks; reads are served from fetched bytes until it can "+
			"(logged once; counted in cache_write_failures_total and cache_read_failures_total)", "chunk", j, "err", err)
	}
}

// cacheWorked records a successful cache write.
func (im *Image) cacheWorked() {
	if im.cacheHealth.failing.Load() && im.cacheHealth.failing.Swap(false) {
		im.o.log.Info("the chunk cache stores chunks again")
	}
}
