package main

import (
	"context"
	"log/slog"

	"github.com/urfave/cli/v2"

	"github.com/lazyblk/lazyblk/cache"
	"github.com/lazyblk/lazyblk/fetcher"
)

// source is where an image's chunks come from and where they are kept:
// what cat, serve and mount share, and what mount hands to its serving
// process through the state file.
type source struct {
	Ref       string   `json:"ref"`
	PlainHTTP bool     `json:"plainHTTP,omitempty"`
	CacheDirs []string `json:"cacheDirs,omitempty"`
	CacheSize int64    `json:"cacheSize,omitempty"`
}

func sourceFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringSliceFlag{Name: "cache-dir", Usage: "chunk cache directory, repeatable: one per stripe, e.g. one per volume (default: no cache)"},
		&cli.StringFlag{Name: "cache-size", Value: "10GiB", Usage: "cache capacity across all stripes"},
		&cli.BoolFlag{Name: "plain-http", Usage: "talk plain HTTP to the registry"},
	}
}

// sourceFromFlags reads REF (the first argument) and the source flags.
func sourceFromFlags(c *cli.Context) (source, error) {
	s := source{Ref: c.Args().First(), PlainHTTP: c.Bool("plain-http"), CacheDirs: c.StringSlice("cache-dir")}
	if _, err := fetcher.ParseLocation(s.Ref, s.PlainHTTP); err != nil {
		return s, cli.Exit(err.Error(), 2)
	}
	size, err := parseSize(c.String("cache-size"))
	if err != nil {
		return s, cli.Exit("--cache-size: "+err.Error(), 2)
	}
	s.CacheSize = size
	return s, nil
}

// open resolves the image and fetches its index; the image reads through
// the cache when one is configured.
func (s source) open(ctx context.Context) (*fetcher.Image, error) {
	loc, err := fetcher.ParseLocation(s.Ref, s.PlainHTTP)
	if err != nil {
		return nil, err
	}
	opts := []fetcher.Option{fetcher.WithLogger(slog.Default())}
	if len(s.CacheDirs) > 0 {
		store, err := cache.Open(s.CacheDirs, s.CacheSize, cache.WithLogger(slog.Default()))
		if err != nil {
			return nil, err
		}
		opts = append(opts, fetcher.WithCache(store))
	}
	return fetcher.Open(ctx, loc, opts...)
}
