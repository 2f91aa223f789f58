package fetcher

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"sort"
	"sync"
	"time"
)

// ErrHostDown reports a range request that was not sent: its registry
// host (origin or mirror) failed repeatedly and is down until a probe
// gets an answer. A read that meets it fails at once (EIO to the block
// layer) instead of waiting out the attempts and backoffs of every
// request the kernel sends after it.
var ErrHostDown = errors.New("fetcher: registry host down")

// Why a breaker: a registry that stops answering costs each block request
// every attempt's timeout, and the kernel answers a failed read by asking
// for the next pages, each costing the same: a reader of a 64 MiB file
// waited hours for its error (4 attempts of 10 s per 64 KiB). Once a host
// is known down, its misses fail at once; cached chunks are served as
// ever. After a backoff the next request first probes the host with a
// one-byte range under a short timeout, while requests that come meanwhile
// wait for its answer; an answer closes the breaker for everyone, with no
// remount.
const (
	// breakerFailures consecutive failed requests to a host, spread over
	// at least breakerSpan, open its breaker. The span keeps a burst of
	// simultaneous failures (every connection reset at once) from
	// opening it: those are what retries are for.
	breakerFailures = 2
	breakerSpan     = time.Second
	// breakerBackoff is the first wait before a probe; it doubles with
	// every failed probe up to breakerMaxBackoff, so a host that comes
	// back is used again within seconds while a dead one sees one small
	// request every few seconds per process.
	breakerBackoff    = time.Second
	breakerMaxBackoff = 5 * time.Second
	// probeTimeout bounds a probe (and so the wait of the requests that
	// come while it runs): a byte from a host that is up arrives in
	// milliseconds.
	probeTimeout = 2 * time.Second
)

// Breaker states, as HostStats reports them.
const (
	BreakerClosed  = "closed"  // requests go through
	BreakerOpen    = "open"    // requests fail at once (ErrHostDown)
	BreakerProbing = "probing" // one request is testing the host; the others wait for its answer
)

// HostStats is one registry host's breaker, as Stats reports it.
type HostStats struct {
	Host  string `json:"host"`
	State string `json:"state"`
	// FailedFast counts requests refused while the breaker was open:
	// block reads that failed at once instead of waiting on the host.
	FailedFast int64 `json:"failedFast"`
	// Opened counts the times the breaker opened.
	Opened int64 `json:"opened"`
	// LastError is the failure that opened the breaker (or the last
	// failed probe), while it is not closed.
	LastError string `json:"lastError,omitempty"`
	// ProbeIn is how soon an open breaker lets the next request probe
	// the host (0 when that request may go now).
	ProbeIn time.Duration `json:"probeInNanos,omitempty"`
}

// breaker tracks one registry host's health for every image of the
// process that reads from it.
type breaker struct {
	host string

	mu         sync.Mutex // guards every field below
	state      string
	failures   int       // consecutive failed requests
	firstFail  time.Time // when the first of them failed
	backoff    time.Duration
	retryAt    time.Time     // open: when the next request may probe
	probed     chan struct{} // probing: closed when the probe has its answer
	lastErr    error
	failedFast int64
	opened     int64
}

// breakers holds one breaker per host for the whole process: a host that
// stalls is down for every mount and image of it. Breakers are small and
// own no goroutine (probes are ordinary requests), so they are never
// removed.
var breakers = struct {
	sync.Mutex // guards m
	m          map[string]*breaker
}{m: map[string]*breaker{}}

// breakerFor returns host's breaker.
func breakerFor(host string) *breaker {
	breakers.Lock()
	defer breakers.Unlock()
	b, ok := breakers.m[host]
	if !ok {
		b = &breaker{host: host, state: BreakerClosed}
		breakers.m[host] = b
	}
	return b
}

// allow says whether a request may go to the host now, waiting (within
// ctx) for a probe in flight to get its answer. probe: the caller must
// probe the host first and report the probe with done.
func (b *breaker) allow(ctx context.Context) (probe bool, err error) {
	for {
		b.mu.Lock()
		switch {
		case b.state == BreakerClosed:
			b.mu.Unlock()
			return false, nil
		case b.state == BreakerProbing:
			wait := b.probed
			b.mu.Unlock()
			select {
			case <-wait:
				continue
			case <-ctx.Done():
				return false, ctx.Err()
			}
		}
		now := time.Now()
		if !now.Before(b.retryAt) {
			b.state, b.probed = BreakerProbing, make(chan struct{})
			b.mu.Unlock()
			return true, nil
		}
		b.failedFast++
		err := fmt.Errorf("%w: %s (%v; next probe in %v)", ErrHostDown, b.host, b.lastErr,
			b.retryAt.Sub(now).Round(100*time.Millisecond))
		b.mu.Unlock()
		return false, err
	}
}

// done records the outcome of a request allow let through, or of a
// probe.
func (b *breaker) done(probe bool, err error) {
	now := time.Now()
	failed := hostFailure(err)
	b.mu.Lock()
	defer b.mu.Unlock()
	if probe {
		defer close(b.probed)
	}
	if !failed {
		if err == nil || !errors.Is(err, context.Canceled) {
			// An answer, even 404: the host is up.
			b.state, b.failures, b.backoff, b.lastErr = BreakerClosed, 0, 0, nil
		} else if probe {
			b.state = BreakerOpen // the probe was called off: the next request probes
		}
		return
	}
	b.lastErr = err
	if probe {
		b.backoff = min(2*b.backoff, breakerMaxBackoff)
		b.open(now)
		return
	}
	if b.failures == 0 {
		b.firstFail = now
	}
	b.failures++
	if b.state == BreakerClosed && b.failures >= breakerFailures && now.Sub(b.firstFail) >= breakerSpan {
		b.backoff = breakerBackoff
		b.opened++
		b.open(now)
	}
}

// open refuses requests for about the current backoff (jittered, so the
// processes of a node do not probe in step).
func (b *breaker) open(now time.Time) {
	b.state = BreakerOpen
	b.retryAt = now.Add(b.backoff/2 + rand.N(b.backoff))
}

// wait returns once the breaker is closed, or open and due for a probe.
func (b *breaker) wait(ctx context.Context) error {
	for {
		b.mu.Lock()
		state, probed, d := b.state, b.probed, time.Until(b.retryAt)
		b.mu.Unlock()
		if state == BreakerClosed || state == BreakerOpen && d <= 0 {
			return ctx.Err()
		}
		var t *time.Timer
		if state == BreakerOpen {
			t = time.NewTimer(d)
			probed = nil // wait for the timer
		}
		var timer <-chan time.Time
		if t != nil {
			timer = t.C
		}
		select {
		case <-ctx.Done():
			if t != nil {
				t.Stop()
			}
			return ctx.Err()
		case <-probed:
		case <-timer:
		}
	}
}

func (b *breaker) stats() HostStats {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := HostStats{Host: b.host, State: b.state, FailedFast: b.failedFast, Opened: b.opened}
	if b.state != BreakerClosed && b.lastErr != nil {
		s.LastError = b.lastErr.Error()
	}
	if b.state == BreakerOpen {
		s.ProbeIn = max(0, time.Until(b.retryAt))
	}
	return s
}

// hostFailure reports whether err says the host is unwell: no answer in
// time, a broken connection, a truncated body, or a 5xx. An HTTP answer
// of any other status is the host working; so is a TLS handshake that
// failed on a certificate (a configuration this client has, not the
// host's health); a request its caller cancelled says nothing of the
// host.
func hostFailure(err error) bool {
	var cert *tls.CertificateVerificationError
	var alert tls.AlertError
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, ErrHostDown) || errors.As(err, &cert) || errors.As(err, &alert) {
		return false
	}
	var he *HTTPError
	if errors.As(err, &he) {
		return he.Status >= 500 && he.Status != http.StatusNotImplemented
	}
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrShortBody) || errors.As(err, &ne)
}

// hostStats returns the breakers of hosts, sorted by host.
func hostStats(hosts []string) []HostStats {
	out := make([]HostStats, 0, len(hosts))
	for _, h := range hosts {
		out = append(out, breakerFor(h).stats())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Host < out[j].Host })
	return out
}
