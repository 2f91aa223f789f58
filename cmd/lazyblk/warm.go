package main

import (
	"fmt"
	"io"
	"sync/atomic"

	"github.com/urfave/cli/v2"

	fetcherv1 "github.com/lazyblk/lazyblk/api/fetcher/v1"
	"github.com/lazyblk/lazyblk/fetcherd"
	"github.com/lazyblk/lazyblk/lazy"
	"github.com/lazyblk/lazyblk/mounts"
)

func prefetchWarmCommand() *cli.Command {
	return &cli.Command{
		Name:      "warm",
		Usage:     "fetch an image's start-up (or, with --all, all of it) into the node's cache without mounting it",
		ArgsUsage: "REF",
		Description: `Pre-warms a node before a request lands: fetches the chunks of the newest
prefetch trace the registry holds for REF (lazyblk prefetch record/push made it),
or with --all every chunk, into the cache, so the next mount of REF starts from
cache hits. Without a trace, warm fails unless --all is given.

When a fetcher daemon answers (--fetcher-address), it warms its own cache and
lazyblk status lists the image with how much of it is cached; otherwise warm
uses the cache given with --cache-dir. A progress bar shows on a terminal.

Examples:
  lazyblk prefetch warm registry.example.com/app:v1-lazyblk
  lazyblk prefetch warm --all --json registry.example.com/model:v3-lazyblk
  lazyblk prefetch warm --cache-dir /var/cache/lazyblk --all REF`,
		Flags: append(sourceFlags(), fetcherAddressFlag(),
			&cli.BoolFlag{Name: "all", Usage: "every chunk of the image, not only its trace's"},
			&cli.BoolFlag{Name: "json", Usage: "print the result as JSON"}),
		Action: runWarm,
	}
}

func runWarm(c *cli.Context) error {
	if c.NArg() != 1 {
		return cli.Exit("prefetch warm needs REF (see lazyblk prefetch warm --help)", 2)
	}
	src, err := sourceFromFlags(c)
	if err != nil {
		return err
	}
	var cached, size atomic.Int64
	bar := startMeter(c.App.ErrWriter, !c.Bool("json"), func() (string, int64, int64) { return "cached", cached.Load(), size.Load() })
	progress := func(c, s int64) { cached.Store(c); size.Store(s) }
	var rep *mounts.WarmReport
	if addr := c.String("fetcher-address"); addr != "" && !c.IsSet("cache-dir") && fetcherd.Running(addr) {
		rep, err = warmThroughDaemon(c, addr, src, progress)
	} else {
		rep, err = warmHere(c, src, progress)
	}
	bar.stop()
	if err != nil {
		return err
	}
	if c.Bool("json") {
		return printJSON(c.App.Writer, rep)
	}
	return printWarm(c.App.Writer, rep)
}

func warmHere(c *cli.Context, src mounts.Source, progress func(cached, size int64)) (*mounts.WarmReport, error) {
	if len(src.CacheDirs) == 0 {
		return nil, cli.Exit("prefetch warm needs a cache: --cache-dir, or a fetcher daemon (lazyblk fetcher)", 2)
	}
	img, err := lazy.Open(c.Context, src.Ref, lazyOptions(src)...)
	if err != nil {
		return nil, err
	}
	defer img.Close()
	return img.Warm(c.Context, c.Bool("all"), progress)
}

func warmThroughDaemon(c *cli.Context, addr string, src mounts.Source, progress func(cached, size int64)) (*mounts.WarmReport, error) {
	client, cc, err := fetcherd.Dial(addr)
	if err != nil {
		return nil, err
	}
	defer cc.Close()
	stream, err := client.Warm(c.Context, &fetcherv1.WarmRequest{Ref: src.Ref, PlainHttp: src.PlainHTTP, All: c.Bool("all")})
	if err != nil {
		return nil, daemonError(addr, err)
	}
	for {
		p, err := stream.Recv()
		if err != nil {
			return nil, daemonError(addr, err)
		}
		progress(p.CachedBytes, p.ImageSize)
		if p.Done {
			return &mounts.WarmReport{Ref: src.Ref, All: c.Bool("all"), Trace: p.TraceDigest, TraceChunks: int(p.TraceChunks),
				Size: p.ImageSize, Cached: p.CachedBytes, Fetched: p.FetchedBytes, Seconds: p.Seconds}, nil
		}
	}
}

func printWarm(w io.Writer, r *mounts.WarmReport) error {
	what := "every chunk"
	if !r.All {
		what = fmt.Sprintf("the %d chunks of trace %.19s", r.TraceChunks, r.Trace)
	}
	_, err := fmt.Fprintf(w, "warmed %s (%s): %s of %s cached, %s fetched in %.1f s\n",
		r.Ref, what, mib(r.Cached), mib(r.Size), mib(r.Fetched), r.Seconds)
	return err
}
