package fetcher

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/lazyblk/lazyblk/cache"
)

// The model of time, in one place. Every fetch attempt has its own
// timeout; failed attempts are retried with jittered exponential backoff
// up to a bounded count; and every ReadAt has a deadline after which it
// fails (the block layer answers EIO) whatever is still in flight. Shared
// fetches run under the image's lifetime plus the attempt timeout, so one
// impatient reader never cancels the fetch others wait on, and nothing
// waits forever. Above them, per registry host, a breaker (breaker.go):
// once a host's requests fail or time out repeatedly, further requests to
// it fail at once (ErrHostDown) until a probe after a backoff gets an
// answer, so a stalled registry costs a reader one read's error, not a
// read deadline for every page the kernel asks for next.
const (
	// DefaultAttemptTimeout bounds one range request: 32 MiB at a slow
	// 10 MB/s still fits.
	DefaultAttemptTimeout = 10 * time.Second
	// DefaultAttempts bounds tries per fetch (1 + 3 retries).
	DefaultAttempts = 4
	// DefaultReadTimeout bounds one ReadAt, retries included.
	DefaultReadTimeout = 60 * time.Second
	// DefaultConnections bounds parallel demand requests per image; enough
	// to fill a 10 Gb/s link with 4 MiB chunks at 20 ms RTT.
	DefaultConnections = 8
	// DefaultBackgroundConnections bounds prefetch and fill requests,
	// which never take a demand slot.
	DefaultBackgroundConnections = 4
	// DefaultMaxCoalesce caps one range request made for a sequential
	// reader or for prefetch.
	DefaultMaxCoalesce = 8 << 20
	// DefaultMemory bounds the bytes of demand runs between request and
	// cache write, decoded zstd bytes included (prefetch and fill get half
	// as much on their own): two full coalesced runs, what readahead keeps
	// in flight, so memory stays flat however much faster the registry is
	// than the cache disk. Measured: 250 MiB peak RSS reading 10 GiB.
	DefaultMemory = 64 << 20

	backoffBase = 100 * time.Millisecond
	backoffMax  = 2 * time.Second
)

type options struct {
	cache          *cache.Store
	transport      http.RoundTripper
	attemptTimeout time.Duration
	attempts       int
	readTimeout    time.Duration
	connections    int
	background     int
	maxCoalesce    int
	fillRate       int64 // bytes per second, 0 = unlimited
	mirrors        []string
	hostsDir       string
	memory         int64
	log            *slog.Logger

	testHookMissed func(chunk int) // after a reader missed, before it joins or starts a fetch
}

// Option configures Open.
type Option func(*options) error

// WithCache stores fetched chunks in c. Without one, only the chunks
// fetched last are held, in memory (about the memory budget, WithMemory):
// reads of other chunks fetch them again.
func WithCache(c *cache.Store) Option { return func(o *options) error { o.cache = c; return nil } }

// WithTransport sets the base HTTP transport (default: one of the image's
// own, like http.DefaultTransport but keeping a connection idle for every
// demand and background slot; the default transport keeps two, so the
// others would be opened again, TLS handshake and all, for every burst).
func WithTransport(t http.RoundTripper) Option {
	return func(o *options) error { o.transport = t; return nil }
}

// WithTimeouts sets the per-attempt timeout, the attempts per fetch and
// the per-read deadline.
func WithTimeouts(attempt time.Duration, attempts int, read time.Duration) Option {
	return func(o *options) error {
		if attempt <= 0 || read <= 0 || attempts < 1 {
			return fmt.Errorf("fetcher: timeouts must be positive and attempts at least 1")
		}
		o.attemptTimeout, o.attempts, o.readTimeout = attempt, attempts, read
		return nil
	}
}

// WithConnections bounds parallel demand and background requests.
func WithConnections(demand, background int) Option {
	return func(o *options) error {
		if demand < 1 || background < 1 {
			return fmt.Errorf("fetcher: connections must be at least 1")
		}
		o.connections, o.background = demand, background
		return nil
	}
}

// WithMaxCoalesce caps a coalesced range request in bytes.
func WithMaxCoalesce(n int) Option {
	return func(o *options) error {
		if n < 1 {
			return fmt.Errorf("fetcher: max coalesce must be positive")
		}
		o.maxCoalesce = n
		return nil
	}
}

// WithMemory bounds the bytes held by fetched runs not yet cached; it must
// hold at least one coalesced run (WithMaxCoalesce).
func WithMemory(bytes int64) Option {
	return func(o *options) error {
		if bytes < 1 {
			return fmt.Errorf("fetcher: memory budget must be positive")
		}
		o.memory = bytes
		return nil
	}
}

// WithFillRate caps background fill and prefetch in bytes per second.
func WithFillRate(bps int64) Option {
	return func(o *options) error { o.fillRate = bps; return nil }
}

// WithMirrors lists registry hosts (host[:port], or http://host[:port]
// for plain HTTP) that serve the same
// repositories — pull-through caches, P2P agents — tried in order before
// the origin for chunk reads. A mirror that fails or serves bytes that
// fail verification is passed over for the origin.
func WithMirrors(hosts ...string) Option {
	return func(o *options) error { o.mirrors = append(o.mirrors, hosts...); return nil }
}

// WithHostsDir reads registry hosts the way containerd does, from
// dir/<registry>/hosts.toml (dir is usually /etc/containerd/certs.d): its
// hosts with the pull capability are tried before the origin for chunk
// reads, in order, after WithMirrors' own, each with its ca, client and
// skip_verify settings; the origin's own entry lends the origin its TLS
// settings. A missing directory or host entry means none. The image's
// index and manifests still come from the origin.
func WithHostsDir(dir string) Option {
	return func(o *options) error { o.hostsDir = dir; return nil }
}

// WithLogger sets the logger (discarded by default).
func WithLogger(l *slog.Logger) Option { return func(o *options) error { o.log = l; return nil } }

// newOptions applies opts over the defaults.
func newOptions(opts []Option) (options, error) {
	o := defaultOptions()
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return o, err
		}
	}
	return o, nil
}

func defaultOptions() options {
	return options{attemptTimeout: DefaultAttemptTimeout,
		attempts: DefaultAttempts, readTimeout: DefaultReadTimeout, connections: DefaultConnections,
		background: DefaultBackgroundConnections, maxCoalesce: DefaultMaxCoalesce, memory: DefaultMemory,
		log: slog.New(slog.DiscardHandler)}
}

// retry runs fn up to attempts times, each under its own timeout, with
// jittered exponential backoff between tries; it stops early on ctx or on
// an error that retrying cannot fix.
func retry(ctx context.Context, o *options, onRetry func(error), fn func(ctx context.Context) error) error {
	var err error
	for attempt := 0; attempt < o.attempts; attempt++ {
		if attempt > 0 {
			onRetry(err)
			d := min(backoffBase<<(attempt-1), backoffMax)
			d = d/2 + rand.N(d) // jitter in [d/2, 3d/2)
			t := time.NewTimer(d)
			select {
			case <-ctx.Done():
				t.Stop()
				return errors.Join(err, ctx.Err())
			case <-t.C:
			}
		}
		actx, cancel := context.WithTimeout(ctx, o.attemptTimeout)
		err = fn(actx)
		cancel()
		if err == nil || !retryable(err) || ctx.Err() != nil {
			return err
		}
	}
	return err
}

func retryable(err error) bool {
	var he *HTTPError
	if errors.As(err, &he) {
		return he.retryable()
	}
	// Connection resets and refusals arrive as net.Error from the client,
	// or as ErrShortBody when the body breaks off. Registry API answers
	// (manifests, whole blobs) arrive as transport errors; an index that
	// fails its digest is fetched again. Corrupt chunks are not retried
	// here: decode refetches them within the same attempt budget.
	var te *transport.Error
	if errors.As(err, &te) {
		return te.Temporary() || te.StatusCode >= 500
	}
	var ne net.Error
	return errors.Is(err, ErrShortBody) || errors.Is(err, ErrDigestMismatch) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.As(err, &ne) || errors.Is(err, context.DeadlineExceeded)
}
