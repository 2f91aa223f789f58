package mounts

import (
	"context"
	"errors"
	"fmt"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/lazyblk/lazyblk/fetcher"
)

// WarmReport is what Warm fetched into the cache.
type WarmReport struct {
	Ref         string  `json:"ref"`
	All         bool    `json:"all"`                   // every chunk was asked for, not only the trace's
	Trace       string  `json:"trace,omitempty"`       // the replayed trace artifact's digest
	TraceChunks int     `json:"traceChunks,omitempty"` // chunks it names
	Size        int64   `json:"imageSize"`
	Cached      int64   `json:"cachedBytes"`  // of the image, in the cache now (holes count)
	Fetched     int64   `json:"fetchedBytes"` // from the registry by this warm
	Seconds     float64 `json:"seconds"`
}

// ErrNoTraceToWarm: the registry holds no prefetch trace for the image, so
// there is nothing to warm unless every chunk is asked for.
var ErrNoTraceToWarm = errors.New("no prefetch trace for the image (record one with lazyblk prefetch record, or warm every chunk with --all)")

// warmEvery is how often Warm reports progress.
const warmEvery = 250 * time.Millisecond

// OpenWarm opens src's image to warm it: it needs a cache.
func OpenWarm(ctx context.Context, src Source) (*fetcher.Image, v1.Hash, fetcher.Location, error) {
	if len(src.CacheDirs) == 0 {
		return nil, v1.Hash{}, fetcher.Location{}, fmt.Errorf("warm %s: %w", src.Ref, fetcher.ErrNoCache)
	}
	loc, err := fetcher.ParseLocation(src.Ref, src.PlainHTTP)
	if err != nil {
		return nil, v1.Hash{}, loc, err
	}
	im, index, err := src.Open(ctx)
	if err != nil {
		return nil, v1.Hash{}, loc, fmt.Errorf("warm %s: %w", src.Ref, err)
	}
	return im, index, loc, nil
}

// Warm fetches into im's cache, without mounting, the chunks a start-up
// of the image reads — those of the newest prefetch trace the registry
// holds for index — or, with all, every chunk; it reports the image's
// cached bytes to progress as it goes (may be nil). The fetches are
// background ones: a mount's demand reads on the node go first.
func Warm(ctx context.Context, im *fetcher.Image, index v1.Hash, loc fetcher.Location, all bool, progress func(cached, size int64)) (*WarmReport, error) {
	start := time.Now()
	ref := loc.String()
	rep := &WarmReport{Ref: ref, All: all, Size: im.Size()}
	var err error
	var chunks []int
	if !all {
		lookup, cancel := context.WithTimeout(ctx, traceLookupTimeout)
		t, digest, err := fetcher.FindTrace(lookup, loc, index, im.Index())
		cancel()
		if errors.Is(err, fetcher.ErrNoTrace) {
			return nil, fmt.Errorf("warm %s: %w", ref, ErrNoTraceToWarm)
		}
		if err != nil {
			return nil, fmt.Errorf("warm %s: find prefetch trace: %w", ref, err)
		}
		chunks, rep.Trace, rep.TraceChunks = t.Chunks, digest.String(), len(t.Chunks)
	}
	// The reporter ends before Warm returns: progress is never called
	// from two goroutines (the daemon's is a gRPC stream's Send).
	done, ended := make(chan struct{}), make(chan struct{})
	if progress == nil {
		close(ended)
	} else {
		go func() {
			defer close(ended)
			t := time.NewTicker(warmEvery)
			defer t.Stop()
			for {
				progress(im.Cached(), im.Size())
				select {
				case <-t.C:
				case <-done:
					return
				}
			}
		}()
	}
	if all {
		err = im.Fill(ctx)
	} else {
		err = im.Prefetch(ctx, chunks)
	}
	close(done)
	<-ended
	if err != nil {
		return nil, fmt.Errorf("warm %s: %w", ref, err)
	}
	rep.Cached, rep.Fetched, rep.Seconds = im.Cached(), im.Stats().BytesFetched, time.Since(start).Seconds()
	if progress != nil {
		progress(rep.Cached, rep.Size)
	}
	return rep, nil
}
