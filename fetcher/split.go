package fetcher

import (
	"context"
	"sync/atomic"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sync/errgroup"
)

// A demand run is split over idle connections: registries and blob stores
// cap the throughput of one connection (S3 near 100 MB/s), so a single
// 4 MiB miss fetched as four 1 MiB ranges at once arrives up to four
// times sooner. Only slots nobody uses are taken, and never more than
// half of them, so a concurrent miss still finds a connection.
const (
	splitParts = 4       // at most, a run's parallel range requests
	splitMin   = 1 << 20 // bytes, the smallest part worth its own request
)

// spareSlots takes up to splitParts-1 more demand slots for a run of n
// bytes, without waiting and leaving half of them free; the caller gives
// them back.
func (im *Image) spareSlots(slots chan struct{}, n int) int {
	extra := 0
	for extra < min(splitParts, n/splitMin)-1 && len(slots) < cap(slots)/2 {
		select {
		case slots <- struct{}{}:
			extra++
		default:
			return extra
		}
	}
	return extra
}

// getParts fetches p from off as parts range requests in parallel (each
// with its own retries); the first failure cancels the others. mirror
// reports that a mirror served any of them.
func (im *Image) getParts(ctx context.Context, blob v1.Hash, p []byte, off int64, parts int) (mirror bool, err error) {
	if parts <= 1 {
		return im.get(ctx, blob, p, off, false)
	}
	const align = 64 << 10
	size := (len(p)/parts + align - 1) / align * align
	var fromMirror atomic.Bool
	g, ctx := errgroup.WithContext(ctx)
	for start := 0; start < len(p); start += size {
		part := p[start:min(start+size, len(p))]
		g.Go(func() error {
			m, err := im.get(ctx, blob, part, off+int64(start), false)
			if m {
				fromMirror.Store(true)
			}
			return err
		})
	}
	err = g.Wait()
	return fromMirror.Load(), err
}
