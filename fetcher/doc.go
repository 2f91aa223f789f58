// Package fetcher is the only package that speaks HTTP. It resolves image
// locations — registry references through go-containerregistry (docker
// config.json credentials and helpers, bearer tokens refreshed on 401,
// plain HTTP for loopback) or OCI image layouts on disk (oci:DIR[:TAG]) —
// pushes converted images (blobs first, tag last), and reads block images
// lazily.
//
// # Reading
//
// Open fetches and verifies an image's chunk index and returns an *Image
// whose ReadAt serves any byte range:
//
//	ReadAt(off, len) ─► chunks ─► hole? zeros
//	                           ─► cache hit? read the needed part of the chunk file
//	                           ─► in flight? wait for that fetch (own ctx)
//	                           ─► miss: closed range requests for a run of
//	                              chunks stored back to back (split over idle
//	                              connections) ─► verify each (sha256; a bad
//	                              one is refetched once, then ErrChunkCorrupt)
//	                              ─► wake readers ─► cache
//
// Concurrent misses on a chunk share one fetch. A sequential reader's
// misses grow runs up to the coalescing cap (8 MiB) and readahead keeps up
// to eight runs in flight ahead of it, the window doubling with the run.
// A miss outside a sequential run also fetches its neighbours (the two
// chunks after it, the one before) on free background slots: start-ups
// read in clusters, out of order (readahead.go). Cached chunks ahead of a
// sequential reader are checked or loaded ahead of it (cache.WillNeed,
// cache.Preload),
// and Files names the cached chunk files holding a range, for a block
// server that splices from them (file.go).
// Demand requests use their own connection slots (8); a run of 2 MiB or
// more takes idle ones too, up to four ranges at once and never more than
// half the slots, because one connection's throughput is capped by most
// registries and blob stores. Prefetch and Fill use separate background
// slots (4), claim chunks only while holding a slot, and can be
// rate-capped, so a demand miss never queues behind them; the fill also
// waits for demand to be quiet (priority.go); a demand reader whose chunk
// sits in a cancelled prefetch fetches it itself.
//
// The one model of time (per-attempt timeout, bounded jittered retries,
// per-read deadline, and a breaker per registry host that fails reads at
// once while the host is down) is documented in options.go beside its
// defaults; the breaker in breaker.go.
//
// # Ownership
//
// Fetches started for readers belong to the Image, not to the reader that
// triggered them: they run under the image's lifetime, and Close cancels
// and waits for them. Verified chunks are written to the cache after the
// readers are woken, by at most four runs at once, so a slow disk slows
// fetching instead of growing memory.
package fetcher
