package mounts

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/lazyblk/lazyblk/fetcher"
	"github.com/lazyblk/lazyblk/imagefmt"
)

// DefaultFillBelow is the image size up to which a mount fills the whole
// image in the background: a start-up that reads most of a small image is
// then never slower than a pull. Larger images (model weights of tens of
// GiB) fill only when asked (lazyblk prefetch fill), so a node's cache is
// not flushed by one mount.
const DefaultFillBelow = 8 << 30

// traceLookupTimeout bounds the search for a trace: a registry that does
// not answer delays only the prefetch, never the mount.
const traceLookupTimeout = 30 * time.Second

// Background is what a mount fetches besides demand reads, always below
// them: first the chunks of the image's recorded prefetch trace, in
// recorded order, then, for an image no larger than FillBelow (and than
// the cache), every other chunk. Nothing runs without a cache.
type Background struct {
	Trace     bool  `json:"trace"`              // replay the newest trace the registry has for the image
	FillBelow int64 `json:"fillBelow"`          // fill images up to this size; 0 never
	FillRate  int64 `json:"fillRate,omitempty"` // bytes per second for replay and fill; 0 unlimited
}

// DefaultBackground replays traces and fills images up to DefaultFillBelow.
func DefaultBackground() Background { return Background{Trace: true, FillBelow: DefaultFillBelow} }

// Prefetch phases, as PrefetchStatus reports them.
const (
	PhaseIdle  = "idle"  // nothing asked, or no cache
	PhaseTrace = "trace" // replaying the trace
	PhaseFill  = "fill"  // fetching every chunk not cached
	PhaseDone  = "done"  // what was asked is cached
	PhaseError = "error" // stopped by an error (Error says which)
)

// PrefetchStatus is what a serving process reports of its background
// fetching.
type PrefetchStatus struct {
	Phase       string `json:"phase"`
	Trace       string `json:"trace,omitempty"` // the replayed trace artifact's digest
	TraceChunks int    `json:"traceChunks,omitempty"`
	Error       string `json:"error,omitempty"`
}

// prefetcher runs one mount's background fetching: at most one run at a
// time, which a later fill request extends.
type prefetcher struct {
	im    *fetcher.Image
	index v1.Hash
	loc   fetcher.Location

	mu      sync.Mutex // guards status, running, fill
	status  PrefetchStatus
	running bool
	fill    bool // a fill is wanted after the current phase

	wg sync.WaitGroup
}

func newPrefetcher(im *fetcher.Image, index v1.Hash, loc fetcher.Location) *prefetcher {
	return &prefetcher{im: im, index: index, loc: loc, status: PrefetchStatus{Phase: PhaseIdle}}
}

// start begins the mount's background fetching under b; the run ends
// with ctx.
func (p *prefetcher) start(ctx context.Context, b Background, cacheSize int64) {
	fill := b.FillBelow > 0 && p.im.Size() <= b.FillBelow && p.im.Size() <= cacheSize
	if !b.Trace && !fill {
		return
	}
	p.mu.Lock()
	p.fill = fill
	p.running = true
	p.mu.Unlock()
	p.wg.Add(1)
	go p.run(ctx, b.Trace)
}

// requestFill asks for every chunk: after the trace when one is being
// replayed, at once otherwise.
func (p *prefetcher) requestFill(ctx context.Context) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.fill = true
	if !p.running {
		p.running = true
		p.wg.Add(1)
		go p.run(ctx, false)
	}
}

func (p *prefetcher) run(ctx context.Context, trace bool) {
	defer p.wg.Done()
	err := p.phases(ctx, trace)
	// A registry that is down does not end the background work: it waits
	// for the host's breaker to let a probe through and goes on (cached
	// chunks are skipped), so a mount that outlives an outage is filled.
	for errors.Is(err, fetcher.ErrHostDown) && ctx.Err() == nil {
		p.mu.Lock()
		p.status.Error = "waiting for the registry: " + err.Error()
		trace = p.status.Phase == PhaseTrace // the phase that failed runs again
		p.fill = p.fill || p.status.Phase == PhaseFill
		p.mu.Unlock()
		if err = p.im.WaitHosts(ctx); err == nil {
			err = p.phases(ctx, trace)
		}
	}
	p.mu.Lock()
	p.status.Error = ""
	for err == nil && p.fill && ctx.Err() == nil { // asked for while the trace ran
		p.mu.Unlock()
		err = p.phases(ctx, false)
		p.mu.Lock()
	}
	defer p.mu.Unlock()
	p.running = false
	switch {
	case err == nil:
		p.status.Phase = PhaseDone
	case ctx.Err() != nil:
		p.status.Phase = PhaseIdle // the mount is going away
	default:
		p.status.Phase, p.status.Error = PhaseError, err.Error()
		slog.Warn("prefetch", "ref", p.loc.String(), "err", err)
	}
}

func (p *prefetcher) phases(ctx context.Context, trace bool) error {
	if trace {
		if err := p.replay(ctx); err != nil {
			return err
		}
	}
	p.mu.Lock()
	fill := p.fill
	if fill {
		p.status.Phase = PhaseFill
		p.fill = false
	}
	p.mu.Unlock()
	if !fill {
		return nil
	}
	return p.im.Fill(ctx)
}

// replay finds the image's trace and fetches its chunks in order. No
// trace is not an error: the image was never recorded.
func (p *prefetcher) replay(ctx context.Context) error {
	lookup, cancel := context.WithTimeout(ctx, traceLookupTimeout)
	t, digest, err := fetcher.FindTrace(lookup, p.loc, p.index, p.im.Index())
	cancel()
	if errors.Is(err, fetcher.ErrNoTrace) {
		slog.Info("no prefetch trace", "ref", p.loc.String(), "reason", err)
		return nil
	}
	if err != nil {
		return fmt.Errorf("find prefetch trace: %w", err)
	}
	p.mu.Lock()
	p.status.Phase, p.status.Trace, p.status.TraceChunks = PhaseTrace, digest.String(), len(t.Chunks)
	p.mu.Unlock()
	slog.Info("replaying prefetch trace", "ref", p.loc.String(), "digest", digest.String(), "chunks", len(t.Chunks))
	return p.im.Prefetch(ctx, t.Chunks)
}

// Status returns the current phase.
func (p *prefetcher) Status() PrefetchStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.status
}

// trace returns the chunks touched so far as a trace of the image, and
// the files read (erofs: mapped through its metadata, read without
// counting as the workload's reads).
func (p *prefetcher) trace(ctx context.Context) *imagefmt.Trace {
	chunks, accessed := p.im.Touched(), p.im.Accessed()
	var files []imagefmt.TraceFile
	if p.im.Index().FS == imagefmt.FSErofs {
		var err error
		if files, err = imagefmt.MapFiles(p.im.Reader(ctx), accessed); err != nil {
			slog.Warn("trace: files not named", "ref", p.loc.String(), "err", err)
		}
	}
	return imagefmt.NewTrace(p.index, p.im.Index(), chunks, files)
}

// wait waits for a run ended by its context.
func (p *prefetcher) wait() { p.wg.Wait() }
