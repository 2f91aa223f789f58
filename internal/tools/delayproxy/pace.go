package main

import (
	"context"
	"sync"
	"time"
)

// pacer lets bytes through at a fixed rate. It keeps a virtual clock of
// when the link is next free and makes each writer wait until its bytes
// would have crossed it. A sleep that overshoots (timers are coarse: a
// wait of a quarter millisecond can take over one) is made up by the next
// writes, up to catchUp, so the rate delivered is the one configured.
// golang.org/x/time/rate with a small burst lost every overshoot: asked
// for 128 MiB/s per response, it delivered 35 MiB/s for a 1 MiB range
// and 75 MiB/s for 32 MiB (measured with curl through the proxy).
type pacer struct {
	mu    sync.Mutex
	perB  float64   // seconds per byte
	next  time.Time // when the bytes already let through have crossed
	now   func() time.Time
	sleep func(context.Context, time.Duration) error
}

// catchUp bounds how far behind its schedule a pacer may have fallen and
// still make it up: also the burst an idle pacer lets through at once.
const catchUp = 2 * time.Millisecond

// newPacer paces bytesPerSec, starting now (a new pacer has no burst).
func newPacer(bytesPerSec int64) *pacer {
	p := &pacer{perB: 1 / float64(bytesPerSec), now: time.Now, sleep: sleepCtx}
	p.next = p.now()
	return p
}

// wait returns once n more bytes may go, or when ctx ends.
func (p *pacer) wait(ctx context.Context, n int) error {
	p.mu.Lock()
	now := p.now()
	if floor := now.Add(-catchUp); p.next.Before(floor) {
		p.next = floor
	}
	p.next = p.next.Add(time.Duration(float64(n) * p.perB * float64(time.Second)))
	d := p.next.Sub(now)
	p.mu.Unlock()
	return p.sleep(ctx, d)
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
