package fetcher

import (
	"context"
	"time"
)

// Demand reads come first. Prefetch and fill never take a demand
// connection slot (they have their own, DefaultBackgroundConnections), and
// the fill also waits for the image to be quiet (waitQuiet) before each
// request, so it takes no bandwidth or CPU from a start-up.

// demandBusy counts demand fetches starting (+1) and ending (-1).
func (im *Image) demandBusy(d int) {
	im.idleMu.Lock()
	defer im.idleMu.Unlock()
	im.demandRuns += d
	if d > 0 {
		im.lastDemand = time.Now()
	}
	switch {
	case im.demandRuns == 1 && d > 0:
		im.demandIdle = make(chan struct{})
	case im.demandRuns == 0:
		close(im.demandIdle)
	}
}

// waitQuiet returns once no demand fetch is in flight and the image has
// been quiet for quiet: no read (hits included: a start-up served by its
// trace is still busy) and no demand fetch started. A start-up's storm of
// reads, with its short pauses, keeps the fill waiting until it settles.
// After maxWait it asks only for no demand fetch in flight, so a reader
// that never pauses does not starve the fill.
func (im *Image) waitQuiet(ctx context.Context, quiet, maxWait time.Duration) error {
	deadline := time.Now().Add(maxWait)
	for {
		im.idleMu.Lock()
		idle, last := im.demandIdle, im.lastDemand
		im.idleMu.Unlock()
		select {
		case <-idle:
		case <-ctx.Done():
			return ctx.Err()
		}
		if r := time.Unix(0, im.readAt.Load()); r.After(last) {
			last = r
		}
		wait := min(time.Until(last.Add(quiet)), time.Until(deadline))
		if wait <= 0 {
			return nil
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
	}
}

// Idle reports how long the image has done nothing: no read and no fetch
// since then, and none in flight (zero while one is). A process serving
// the image uses it to give memory back when it falls idle.
func (im *Image) Idle() time.Duration {
	im.mu.Lock()
	busy := len(im.inflight) > 0
	im.mu.Unlock()
	if busy {
		return 0
	}
	return time.Since(time.Unix(0, max(im.readAt.Load(), im.fetchedAt.Load())))
}
