package fetcher

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/lazyblk/lazyblk/cache"
	"github.com/lazyblk/lazyblk/imagefmt"
)

// Stats is a snapshot of an image's counters.
type Stats struct {
	Hits, Misses, Requests, Retries, VerifyFailures, BytesFetched int64
	// Readahead counts chunks fetched ahead of sequential readers.
	Readahead int64
	// DecodeSeconds is the CPU time spent decoding and verifying fetched
	// chunks (zstd, sha256); DecodeWaitSeconds the part of demand reads'
	// time spent waiting for it, after their bytes arrived: what decoding
	// and verifying only the part of a chunk asked for could save.
	DecodeSeconds, DecodeWaitSeconds float64
	// EarlyReads are demand reads answered from the pieces they asked for,
	// decoded and verified before the rest of their chunk.
	EarlyReads int64
	// Cache writes and reads that failed (a full or broken volume); the
	// reads they belonged to were served all the same.
	CacheWriteFailures, CacheReadFailures int64
	// Cached is how many bytes of the image the cache holds (holes count
	// as held): Cached == Size() once the image is complete.
	Cached int64
	// Complete: every chunk is cached (Cached == Size() with a cache).
	Complete bool
	// Latency of chunk reads by source (SourceCache, SourceMirror,
	// SourceOrigin), from
	// the read's start to its chunk's bytes in hand.
	Latency map[string]Histogram
	// Hosts are the registry hosts the image reads from (mirrors, then
	// the origin) with their breakers; none for an image layout.
	Hosts []HostStats
}

type counters struct {
	hits, misses, requests, retries, verifyFailures, bytesFetched, readahead atomic.Int64
	decodeNanos, decodeWaitNanos, earlyReads                                 atomic.Int64
	fromCache, fromMirror, fromOrigin                                        latency
}

// Stats returns the image's counters.
func (im *Image) Stats() Stats {
	s := &im.stats
	cached := im.Cached()
	return Stats{Hits: s.hits.Load(), Misses: s.misses.Load(), Requests: s.requests.Load(),
		Retries: s.retries.Load(), VerifyFailures: s.verifyFailures.Load(), BytesFetched: s.bytesFetched.Load(),
		Readahead: s.readahead.Load(), DecodeSeconds: seconds(&s.decodeNanos), DecodeWaitSeconds: seconds(&s.decodeWaitNanos), EarlyReads: s.earlyReads.Load(),
		CacheWriteFailures: im.cacheHealth.writeFailures.Load(), CacheReadFailures: im.cacheHealth.readFailures.Load(),
		Cached: cached, Complete: im.complete(cached),
		Latency: map[string]Histogram{SourceCache: s.fromCache.snapshot(), SourceMirror: s.fromMirror.snapshot(),
			SourceOrigin: s.fromOrigin.snapshot()}, Hosts: hostStats(im.hosts())}
}

// Cached returns how many bytes of the image the cache holds; holes count
// as held. Without a cache it is 0.
func (im *Image) Cached() int64 {
	if im.o.cache == nil {
		return 0
	}
	var n int64
	for i, c := range im.index.Chunks {
		if c.Encoding == imagefmt.EncodingHole || im.o.cache.Has(cache.Digest(c.Digest)) {
			n += int64(im.index.ChunkLen(i))
		}
	}
	return n
}

// LatencyBounds are the upper bounds, in seconds, of the buckets every
// read-latency histogram counts into: from a page-cache-speed cache hit
// (half a millisecond) to a read that needed every retry.
var LatencyBounds = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}

// Sources of a chunk read, the keys of Stats.Latency: the node's chunk
// cache, a mirror (hosts.toml, WithMirrors) or the registry itself — a
// demand fetch, or one that was already in flight.
const (
	SourceCache  = "cache"
	SourceMirror = "mirror"
	SourceOrigin = "origin"
)

// Histogram is a snapshot of read latencies, in Prometheus' shape:
// Counts[i] reads took at most LatencyBounds[i] (cumulative), Count in all,
// Sum seconds in all.
type Histogram struct {
	Counts []uint64 `json:"counts"`
	Count  uint64   `json:"count"`
	Sum    float64  `json:"sum"`
}

// latency counts reads into LatencyBounds; safe for concurrent use.
type latency struct {
	buckets [16]atomic.Uint64 // one per bound, then one for slower reads
	nanos   atomic.Int64      // the sum
}

func (l *latency) observe(d time.Duration) {
	s := d.Seconds()
	i := 0
	for i < len(LatencyBounds) && s > LatencyBounds[i] {
		i++
	}
	l.buckets[i].Add(1)
	l.nanos.Add(int64(d))
}

func (l *latency) snapshot() Histogram {
	h := Histogram{Counts: make([]uint64, len(LatencyBounds))}
	var cum uint64
	for i := range LatencyBounds {
		cum += l.buckets[i].Load()
		h.Counts[i] = cum
	}
	h.Count = cum + l.buckets[len(LatencyBounds)].Load()
	h.Sum = time.Duration(l.nanos.Load()).Seconds()
	return h
}

// Cache returns the cache the image reads through (nil without one).
func (im *Image) Cache() *cache.Store { return im.o.cache }

// CacheStats returns the counters of the cache the image reads through, as
// this process sees it; nil without a cache.
func (im *Image) CacheStats() *cache.Stats {
	if im.o.cache == nil {
		return nil
	}
	st := im.o.cache.Stats()
	return &st
}

// hosts names the registry hosts the image reads from.
func (im *Image) hosts() []string {
	rs, ok := im.src.(*registrySource)
	if !ok {
		return nil
	}
	var hs []string
	for _, e := range append(rs.mirrors, rs.origin) {
		hs = append(hs, e.host)
	}
	return hs
}

// WaitHosts returns once a request to the image's registry may be tried
// again: at once unless the origin's breaker is open, else when it lets a
// probe through. Background work that failed with ErrHostDown waits on
// it before it tries again.
func (im *Image) WaitHosts(ctx context.Context) error {
	rs, ok := im.src.(*registrySource)
	if !ok {
		return ctx.Err()
	}
	return rs.origin.breaker.wait(ctx)
}

func seconds(ns *atomic.Int64) float64 { return time.Duration(ns.Load()).Seconds() }
