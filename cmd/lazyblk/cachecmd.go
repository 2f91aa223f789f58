package main

import (
	"fmt"
	"math"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/lazyblk/lazyblk/cache"
	"github.com/lazyblk/lazyblk/config"
	"github.com/lazyblk/lazyblk/mounts"
)

func cacheCommand() *cli.Command {
	flags := []cli.Flag{
		&cli.StringFlag{Name: "config", Usage: "the fetcher daemon's TOML configuration: its [cache] dirs and root (default: built-in defaults)"},
		&cli.StringSliceFlag{Name: "cache-dir", Usage: "cache stripe directory, repeatable (overrides the configuration)"},
		&cli.BoolFlag{Name: "json", Usage: "print JSON"},
		stateDirFlag(),
	}
	return &cli.Command{
		Name:  "cache",
		Usage: "show or shrink the node's chunk cache",
		Description: `The chunk cache is shared by every mount on the node: chunks are kept by digest,
striped over the configured directories, and evicted least recently used
first when a mount's process needs room. These commands work on it directly;
mounts that are running keep working (an evicted chunk is fetched again).

Examples:
  lazyblk cache stats
  lazyblk cache stats --json --cache-dir /mnt/ebs1/lazyblk --cache-dir /mnt/ebs2/lazyblk
  lazyblk cache gc --target 20GiB`,
		Subcommands: []*cli.Command{{
			Name:  "stats",
			Usage: "chunks and bytes held, per stripe",
			Description: `Examples:
  lazyblk cache stats
  lazyblk cache stats --json --config /etc/lazyblk/fetcher.toml`,
			Flags:  flags,
			Action: func(c *cli.Context) error { return runCache(c, math.MaxInt64) },
		}, {
			Name:  "gc",
			Usage: "evict least recently used chunks until the cache holds at most --target bytes",
			Description: `Chunks that running containers have read (pinned by their mounts, found
through --state-dir) are kept, so the cache may stay above --target.

Examples:
  lazyblk cache gc --target 20GiB
  lazyblk cache gc --target 0 --cache-dir /mnt/ebs1/lazyblk --cache-dir /mnt/ebs2/lazyblk`,
			Flags: append(flags, &cli.StringFlag{Name: "target", Required: true,
				Usage: "bytes to keep at most, like 20GiB (0: empty the cache)"}),
			Action: func(c *cli.Context) error {
				target, err := config.ParseLimit(c.String("target"))
				if err != nil {
					return cli.Exit(fmt.Sprintf("--target %q: %v", c.String("target"), err), 2)
				}
				return runCache(c, target)
			},
		}},
	}
}

// cacheReport is what cache stats and cache gc print.
type cacheReport struct {
	Dirs    []string            `json:"dirs"`
	Chunks  int                 `json:"chunks"`
	Bytes   int64               `json:"bytes"`
	Evicted int64               `json:"evicted,omitempty"` // chunks, by gc
	Freed   int64               `json:"freed,omitempty"`   // bytes, by gc
	Stripes []cache.StripeStats `json:"stripes"`
}

// runCache opens the cache, evicts down to keep bytes (least recently
// used first, pinned chunks kept; MaxInt64: nothing) and reports what it
// holds.
func runCache(c *cli.Context, keep int64) error {
	dirs := c.StringSlice("cache-dir")
	if len(dirs) == 0 {
		cfg, err := config.LoadFetcher(c.String("config"))
		if err != nil {
			return cli.Exit(err.Error(), 2)
		}
		dirs = cfg.CacheDirs()
	}
	s, err := cache.Open(dirs, math.MaxInt64, cache.WithPinned(mounts.Pinned(c.String("state-dir"))))
	if err != nil {
		return err
	}
	before := s.Stats()
	if err := s.SetCapacity(keep); err != nil {
		return err
	}
	st := s.Stats()
	rep := cacheReport{Dirs: dirs, Chunks: st.Chunks, Bytes: st.Used, Stripes: st.Stripes}
	if keep < math.MaxInt64 {
		rep.Evicted, rep.Freed = int64(before.Chunks-st.Chunks), before.Used-st.Used
	}
	if c.Bool("json") {
		return printJSON(c.App.Writer, rep)
	}
	w := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "STRIPE\tBYTES")
	for _, sp := range st.Stripes {
		fmt.Fprintf(w, "%s\t%s\n", sp.Dir, human(uint64(sp.Bytes)))
	}
	fmt.Fprintf(w, "total\t%s in %d chunks\n", human(uint64(st.Used)), st.Chunks)
	if keep < math.MaxInt64 {
		fmt.Fprintf(w, "evicted\t%s in %d chunks\n", human(uint64(rep.Freed)), rep.Evicted)
	}
	return w.Flush()
}
