package blockdev

import (
	"crypto/tls"
	"errors"
	"log/slog"
	"time"
)

const (
	// DefaultRequestTimeout bounds one NBD read, past the fetcher's own
	// 60 s read deadline, so a backend that ignores its context still gets
	// an answer (EIO) to the kernel before the kernel's own timeout.
	DefaultRequestTimeout = 90 * time.Second
	// DefaultInFlight bounds concurrent requests per connection; the kernel
	// queues at most 128 per hardware queue, nbdcopy 64 per connection.
	DefaultInFlight = 128
	// DefaultMemory bounds the bytes of all reads in flight; 4 connections
	// of 128 KiB FUSE requests need under 64 MiB.
	DefaultMemory = 128 << 20

	// maxRequest is the largest read or write payload accepted, the
	// protocol's conventional 32 MiB.
	maxRequest = 32 << 20
)

type options struct {
	requestTimeout time.Duration
	inflight       int
	memory         int64
	log            *slog.Logger
	tls            *tls.Config
}

// Option configures NewServer.
type Option func(*options) error

// WithRequestTimeout bounds each read; a read that runs out answers EIO.
func WithRequestTimeout(d time.Duration) Option {
	return func(o *options) error {
		if d <= 0 {
			return errors.New("blockdev: request timeout must be positive")
		}
		o.requestTimeout = d
		return nil
	}
}

// WithInFlight bounds concurrent requests per connection.
func WithInFlight(n int) Option {
	return func(o *options) error {
		if n < 1 {
			return errors.New("blockdev: in-flight requests must be at least 1")
		}
		o.inflight = n
		return nil
	}
}

// WithMemory bounds the bytes held by reads in flight across connections.
func WithMemory(bytes int64) Option {
	return func(o *options) error {
		if bytes < maxRequest {
			return errors.New("blockdev: memory budget must hold one 32 MiB request")
		}
		o.memory = bytes
		return nil
	}
}

// WithTLS makes every client of Serve and ServeConn start TLS (NBD_OPT_STARTTLS)
// before anything else: other options get NBD_REP_ERR_TLS_REQD, and the
// export is only reached through the encrypted connection. cfg holds the
// server's certificate, and ClientCAs with RequireAndVerifyClientCert
// when clients must present one. Sockets handed to the kernel
// (Transmit) are not affected.
func WithTLS(cfg *tls.Config) Option {
	return func(o *options) error {
		if cfg == nil || len(cfg.Certificates) == 0 && cfg.GetCertificate == nil {
			return errors.New("blockdev: TLS needs a server certificate")
		}
		o.tls = cfg
		return nil
	}
}

// WithLogger logs failed reads and dropped connections to l.
func WithLogger(l *slog.Logger) Option { return func(o *options) error { o.log = l; return nil } }

func makeOptions(opts []Option) (options, error) {
	o := options{requestTimeout: DefaultRequestTimeout, inflight: DefaultInFlight, memory: DefaultMemory,
		log: slog.New(slog.DiscardHandler)}
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return o, err
		}
	}
	return o, nil
}
