package main

import (
	"context"
	"testing"
	"time"
)

// fakeClock is a pacer's clock whose sleeps overshoot by a fixed amount,
// as Go timers do by tens of microseconds to a millisecond under load.
type fakeClock struct {
	t         time.Time
	overshoot time.Duration
}

func (c *fakeClock) now() time.Time { return c.t }

func (c *fakeClock) sleep(_ context.Context, d time.Duration) error {
	if d > 0 {
		c.t = c.t.Add(d + c.overshoot)
	}
	return nil
}

func pacedOn(c *fakeClock, bytesPerSec int64) *pacer {
	p := newPacer(bytesPerSec)
	p.now, p.sleep, p.next = c.now, c.sleep, c.t
	return p
}

// TestPacerRate: 4 MiB in 32 KiB writes at 128 MiB/s takes 31.25 ms, with
// sleeps that overshoot by 0.5 ms each (the old limiter took 128 × 0.5 ms
// longer, twice the time) and with exact ones; never less.
func TestPacerRate(t *testing.T) {
	const rate, total, write = 128 << 20, 4 << 20, 32 << 10
	want := time.Duration(float64(total) / rate * float64(time.Second))
	for _, overshoot := range []time.Duration{0, 500 * time.Microsecond, 1500 * time.Microsecond} {
		c := &fakeClock{t: time.Unix(1000, 0), overshoot: overshoot}
		p := pacedOn(c, rate)
		start := c.t
		for range total / write {
			if err := p.wait(context.Background(), write); err != nil {
				t.Fatal(err)
			}
		}
		if took := c.t.Sub(start); took < want-time.Microsecond || took > want+overshoot {
			t.Errorf("overshoot %v: 4 MiB took %v, want %v to %v", overshoot, took, want, want+overshoot)
		}
	}
}

// TestPacerIdleBurst: an idle pacer lets at most catchUp's worth through
// without waiting; a new one none.
func TestPacerIdleBurst(t *testing.T) {
	const rate = 100 << 20
	c := &fakeClock{t: time.Unix(1000, 0)}
	p := pacedOn(c, rate)
	start := c.t
	p.wait(context.Background(), 1<<20)
	if took := c.t.Sub(start); took < 10*time.Millisecond {
		t.Errorf("a new pacer let 1 MiB through in %v at 100 MiB/s", took)
	}
	c.t = c.t.Add(time.Second) // idle
	start = c.t
	free := int(catchUp.Seconds() * rate)
	p.wait(context.Background(), free)
	if c.t != start {
		t.Errorf("an idle pacer held %d bytes (its catch-up) for %v", free, c.t.Sub(start))
	}
	p.wait(context.Background(), free)
	if took := c.t.Sub(start); took < catchUp*9/10 {
		t.Errorf("an idle pacer let twice its catch-up through in %v", took)
	}
}
