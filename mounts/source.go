package mounts

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/lazyblk/lazyblk/cache"
	"github.com/lazyblk/lazyblk/fetcher"
)

// Source is where an image's chunks come from and where they are kept:
// what cat, serve and mount share, and what a mount hands to its serving
// process through the state file.
type Source struct {
	Ref       string   `json:"ref"`
	PlainHTTP bool     `json:"plainHTTP,omitempty"`
	CacheDirs []string `json:"cacheDirs,omitempty"`
	CacheSize int64    `json:"cacheSize,omitempty"`
	// CacheLow is the cache's low watermark, a fraction of CacheSize
	// (cache.WithLowWatermark); 0 for the cache's default.
	CacheLow float64 `json:"cacheLow,omitempty"`
	// HostsDir is containerd's hosts.toml directory: mirrors for chunk
	// reads, CAs and client certificates (fetcher.WithHostsDir).
	HostsDir string `json:"hostsDir,omitempty"`
	// IndexDigest and IndexSize, when set, pin the image to the chunk
	// index they name (the lazyblk.index annotations a snapshotter gets as
	// labels): Ref then only names the repository, and a tag that moved
	// since the pull does not change what is mounted.
	IndexDigest string `json:"indexDigest,omitempty"`
	IndexSize   int64  `json:"indexSize,omitempty"`
	// AttemptTimeout and ReadTimeout override the fetcher's defaults
	// (fetcher.WithTimeouts) when set.
	AttemptTimeout time.Duration `json:"attemptTimeout,omitempty"`
	ReadTimeout    time.Duration `json:"readTimeout,omitempty"`
}

// Check validates the source without touching the network.
func (s Source) Check() error {
	if _, err := fetcher.ParseLocation(s.Ref, s.PlainHTTP); err != nil {
		return err
	}
	if s.AttemptTimeout < 0 || s.ReadTimeout < 0 {
		return fmt.Errorf("timeouts must be positive (attempt %v, read %v)", s.AttemptTimeout, s.ReadTimeout)
	}
	if s.IndexDigest != "" {
		if _, err := v1.NewHash(s.IndexDigest); err != nil {
			return fmt.Errorf("index digest %q: %w", s.IndexDigest, err)
		}
		if s.IndexSize <= 0 {
			return fmt.Errorf("index digest %s without its size", s.IndexDigest)
		}
	}
	return nil
}

// Open resolves the image and fetches its index, whose digest it returns
// with the image; the image reads through the cache when one is
// configured. opts add to the fetcher's options.
func (s Source) Open(ctx context.Context, opts ...fetcher.Option) (*fetcher.Image, v1.Hash, error) {
	return s.open(ctx, nil, opts...)
}

// open is Open with options for the cache, when there is one.
func (s Source) open(ctx context.Context, copts []cache.Option, opts ...fetcher.Option) (*fetcher.Image, v1.Hash, error) {
	if err := s.Check(); err != nil {
		return nil, v1.Hash{}, err
	}
	loc, _ := fetcher.ParseLocation(s.Ref, s.PlainHTTP)
	opts = append([]fetcher.Option{fetcher.WithLogger(slog.Default())}, opts...)
	if s.HostsDir != "" {
		opts = append(opts, fetcher.WithHostsDir(s.HostsDir))
	}
	if s.AttemptTimeout > 0 || s.ReadTimeout > 0 {
		attempt, read := cmp.Or(s.AttemptTimeout, fetcher.DefaultAttemptTimeout), cmp.Or(s.ReadTimeout, fetcher.DefaultReadTimeout)
		opts = append(opts, fetcher.WithTimeouts(attempt, fetcher.DefaultAttempts, read))
	}
	if len(s.CacheDirs) > 0 {
		copts := append([]cache.Option{cache.WithLogger(slog.Default())}, copts...)
		if s.CacheLow > 0 {
			copts = append(copts, cache.WithLowWatermark(s.CacheLow))
		}
		store, err := cache.Open(s.CacheDirs, s.CacheSize, copts...)
		if err != nil {
			return nil, v1.Hash{}, err
		}
		opts = append(opts, fetcher.WithCache(store))
	}
	var (
		d   *fetcher.Description
		err error
	)
	if s.IndexDigest == "" {
		d, err = fetcher.Describe(ctx, loc, opts...)
	} else {
		h, _ := v1.NewHash(s.IndexDigest)
		d, err = fetcher.DescribePinned(ctx, loc, h, s.IndexSize, opts...)
	}
	if err != nil {
		return nil, v1.Hash{}, err
	}
	im, err := fetcher.OpenDescribed(ctx, loc, d, opts...)
	return im, d.IndexDigest, err
}
