package fetcherd

import (
	"errors"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	fetcherv1 "github.com/lazyblk/lazyblk/api/fetcher/v1"
	"github.com/lazyblk/lazyblk/fetcher"
	"github.com/lazyblk/lazyblk/mounts"
)

// warmed remembers the images Warm fetched, each with its image kept
// open (its index, a few hundred KiB for the largest images) so List can
// say how much of it the cache still holds.
type warmed struct {
	mu     sync.Mutex // guards images
	images []warmedImage
}

type warmedImage struct {
	rep *mounts.WarmReport
	im  *fetcher.Image
	at  time.Time
}

// maxWarmed bounds what the daemon remembers; the oldest is forgotten.
const maxWarmed = 64

func (w *warmed) add(rep *mounts.WarmReport, im *fetcher.Image) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for i, old := range w.images {
		if old.rep.Ref == rep.Ref {
			old.im.Close()
			w.images = append(w.images[:i], w.images[i+1:]...)
			break
		}
	}
	if len(w.images) == maxWarmed {
		w.images[0].im.Close()
		w.images = w.images[1:]
	}
	w.images = append(w.images, warmedImage{rep, im, time.Now()})
}

func (w *warmed) list() []*fetcherv1.WarmImage {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []*fetcherv1.WarmImage
	for _, wi := range w.images {
		out = append(out, &fetcherv1.WarmImage{Ref: wi.rep.Ref, All: wi.rep.All, ImageSize: wi.rep.Size,
			CachedBytes: wi.im.Cached(), TraceDigest: wi.rep.Trace, WarmedUnixMs: wi.at.UnixMilli()})
	}
	return out
}

// Warm fetches an image into the daemon's cache without mounting it,
// streaming the cached share as it grows.
func (s *Server) Warm(r *fetcherv1.WarmRequest, stream grpc.ServerStreamingServer[fetcherv1.WarmProgress]) error {
	d := s.Defaults
	src := mounts.Source{Ref: r.Ref, PlainHTTP: r.PlainHttp, CacheDirs: d.CacheDirs, CacheSize: d.CacheSize, CacheLow: d.CacheLow,
		HostsDir: d.HostsDir, AttemptTimeout: d.AttemptTimeout, ReadTimeout: d.ReadTimeout}
	if err := src.Check(); err != nil {
		return status.Errorf(codes.InvalidArgument, "warm %s: %v", r.Ref, err)
	}
	ctx := stream.Context()
	im, index, loc, err := mounts.OpenWarm(ctx, src)
	if err != nil {
		return warmStatus(err)
	}
	var sendErr error
	rep, err := mounts.Warm(ctx, im, index, loc, r.All, func(cached, size int64) {
		if sendErr == nil {
			sendErr = stream.Send(&fetcherv1.WarmProgress{CachedBytes: cached, ImageSize: size})
		}
	})
	if err == nil {
		err = sendErr
	}
	if err != nil {
		im.Close()
		return warmStatus(err)
	}
	s.warm.add(rep, im)
	slog.Info("warmed", "ref", rep.Ref, "all", rep.All, "cached", rep.Cached, "size", rep.Size, "fetched", rep.Fetched)
	return stream.Send(&fetcherv1.WarmProgress{CachedBytes: rep.Cached, ImageSize: rep.Size, Done: true,
		TraceDigest: rep.Trace, TraceChunks: int32(rep.TraceChunks), FetchedBytes: rep.Fetched, Seconds: rep.Seconds})
}

func warmStatus(err error) error {
	if errors.Is(err, fetcher.ErrNoCache) || errors.Is(err, mounts.ErrNoTraceToWarm) {
		return status.Error(codes.FailedPrecondition, err.Error())
	}
	return toStatus(err)
}
