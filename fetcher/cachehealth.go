package fetcher

import (
	"sync/atomic"
	"time"
)

// cacheHealth keeps a cache that cannot store or read (a full volume,
// EIO, a volume remounted read-only) from failing reads or flooding the
// log: reads are served from the fetched bytes (or fetched again), each
// failure is counted, and the condition is logged when it starts and at
// most once a minute while it lasts. A failing volume often takes some
// writes (the page cache) and fails others, so one success does not end
// the condition: a success 10 s after the last failure does.
type cacheHealth struct {
	lastFailure, lastWarn       atomic.Int64 // UnixNano; 0: none
	writeFailures, readFailures atomic.Int64
}

const (
	cacheWarnEvery = time.Minute
	cacheRecovered = 10 * time.Second
)

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
	now := time.Now().UnixNano()
	h.lastFailure.Store(now)
	if last := h.lastWarn.Load(); now-last >= int64(cacheWarnEvery) && h.lastWarn.CompareAndSwap(last, now) {
		im.o.log.Warn("the chunk cache cannot "+op+" chunks; reads are served from fetched bytes until it can "+
			"(logged at most once a minute; counted in cache_write_failures_total and cache_read_failures_total)", "chunk", j, "err", err)
	}
}

// cacheWorked records a successful cache write.
func (im *Image) cacheWorked() {
	h := &im.cacheHealth
	last := h.lastFailure.Load()
	if last != 0 && time.Since(time.Unix(0, last)) > cacheRecovered && h.lastFailure.CompareAndSwap(last, 0) {
		h.lastWarn.Store(0)
		im.o.log.Info("the chunk cache stores chunks again")
	}
}
