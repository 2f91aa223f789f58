package main

import (
	"cmp"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	fetcherv1 "github.com/lazyblk/lazyblk/api/fetcher/v1"
	"github.com/lazyblk/lazyblk/config"
	"github.com/lazyblk/lazyblk/fetcher"
	"github.com/lazyblk/lazyblk/fetcherd"
)

func configCommand() *cli.Command {
	return &cli.Command{
		Name:  "config",
		Usage: "print the daemons' configuration files",
		Subcommands: []*cli.Command{{
			Name:      "default",
			Usage:     "print a commented configuration with every key at its default",
			ArgsUsage: "[fetcher|snapshotter]",
			Description: `Prints the file of the daemon named, or without an argument both, each
under a comment naming where it goes.

Examples:
  lazyblk config default fetcher > /etc/lazyblk/fetcher.toml
  lazyblk config default snapshotter > /etc/lazyblk/snapshotter.toml
  lazyblk config default`,
			Action: func(c *cli.Context) error {
				files := map[string]string{"fetcher": config.FetcherExample, "snapshotter": config.SnapshotterExample}
				switch name := c.Args().First(); {
				case c.NArg() > 1:
					return cli.Exit("config default takes one of fetcher or snapshotter", 2)
				case name == "":
					for _, n := range []string{"fetcher", "snapshotter"} {
						fmt.Fprintf(c.App.Writer, "# ---- /etc/lazyblk/%s.toml (lazyblk config default %s) ----\n%s\n", n, n, files[n])
					}
				case files[name] != "":
					fmt.Fprint(c.App.Writer, files[name])
				default:
					return cli.Exit(fmt.Sprintf("config default: no daemon %q: want fetcher or snapshotter", name), 2)
				}
				return nil
			},
		}},
	}
}

func statusCommand() *cli.Command {
	return &cli.Command{
		Name:  "status",
		Usage: "show the fetcher daemon's mounts and what each has fetched",
		Description: `Asks the fetcher daemon (lazyblk fetcher) for its mounts and their counters.

Examples:
  lazyblk status
  lazyblk status --json --address /run/lazyblk/fetcher.sock`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "address", Value: config.DefaultFetcherAddress, EnvVars: []string{"LAZYBLK_FETCHER_ADDRESS"},
				Usage: "the fetcher daemon's socket"},
			&cli.BoolFlag{Name: "json", Usage: "print JSON"},
		},
		Action: runStatus,
	}
}

// mountStatus is one line of status.
type mountStatus struct {
	*fetcherv1.MountInfo
	Stats *fetcherv1.ImageStats `json:"stats,omitempty"`
}

func runStatus(c *cli.Context) error {
	addr := c.String("address")
	if !fetcherd.Running(addr) {
		return fmt.Errorf("status: no fetcher daemon answers at %s (start one with lazyblk fetcher)", addr)
	}
	client, cc, err := fetcherd.Dial(addr)
	if err != nil {
		return err
	}
	defer cc.Close()
	l, err := client.List(c.Context, &fetcherv1.ListRequest{})
	if err != nil {
		return daemonError(addr, err)
	}
	st, err := client.Stats(c.Context, &fetcherv1.StatsRequest{})
	if err != nil {
		return daemonError(addr, err)
	}
	byDir := map[string]*fetcherv1.ImageStats{}
	for _, s := range st.Images {
		byDir[s.Dir] = s
	}
	out := []mountStatus{}
	for _, m := range l.Mounts {
		out = append(out, mountStatus{m, byDir[m.Dir]})
	}
	if c.Bool("json") {
		return printJSON(c.App.Writer, struct {
			Mounts    []mountStatus          `json:"mounts"`
			Fallbacks []*fetcherv1.Fallback  `json:"fallbacks"`
			Warm      []*fetcherv1.WarmImage `json:"warm"`
		}{out, append([]*fetcherv1.Fallback{}, l.Fallbacks...), append([]*fetcherv1.WarmImage{}, l.Warm...)})
	}
	defer printFallbacks(c.App.Writer, l.Fallbacks)
	defer printWarmImages(c.App.Writer, l.Warm)
	tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DIR\tREF\tFS\tATTACH\tSERVING\tFETCHED\tCACHED\tHITS\tMISSES\tREADS\tREGISTRY\tPREFETCH")
	for _, m := range out {
		fetched, cached, reads := "-", "-", "-"
		hits, misses, prefetch, registry := "-", "-", "-", "-"
		if s := m.Stats; s != nil && s.ImageSize > 0 {
			fetched = fmt.Sprintf("%.1f MiB (%.1f%%)", float64(s.BytesFetched)/(1<<20), 100*float64(s.BytesFetched)/float64(s.ImageSize))
			cached = fmt.Sprintf("%.1f%%", 100*float64(s.CachedBytes)/float64(s.ImageSize))
			reads = fmt.Sprint(s.ReadsInFlight)
			if s.ReadsInFlight > 0 {
				reads += fmt.Sprintf(" (oldest %s)", (time.Duration(s.OldestReadMs) * time.Millisecond).String())
			}
			if s.ReadsStuck > 0 {
				reads += fmt.Sprintf(", %d STUCK", s.ReadsStuck)
			}
			hits, misses, prefetch = fmt.Sprint(s.CacheHits), fmt.Sprint(s.CacheMisses), s.PrefetchPhase
			registry = registryStatus(s.Hosts)
			if s.TraceChunks > 0 {
				prefetch += fmt.Sprintf(" (trace of %d chunks)", s.TraceChunks)
			}
			if s.PrefetchError != "" {
				prefetch += ": " + s.PrefetchError
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%v\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", m.Dir, m.Ref, m.Fs, m.Attach, m.Serving, fetched, cached,
			hits, misses, reads, registry, prefetch)
	}
	return tw.Flush()
}

// registryStatus sums up a mount's registry hosts: "up", or each host
// whose breaker is not closed, with the reads it failed at once.
func registryStatus(hosts []*fetcherv1.RegistryHost) string {
	var down []string
	for _, h := range hosts {
		if h.State != fetcher.BreakerClosed {
			down = append(down, fmt.Sprintf("%s %s (%d reads failed fast)", h.Host, strings.ToUpper(h.State), h.FailedFast))
		}
	}
	if len(down) == 0 {
		return "up"
	}
	return strings.Join(down, ", ")
}

// printFallbacks warns of lazyblk layers the snapshotter left to
// containerd's full download, the latest last, each with why.
func printFallbacks(w io.Writer, fbs []*fetcherv1.Fallback) {
	if len(fbs) == 0 {
		return
	}
	fmt.Fprintf(w, "\nWARNING: %d recent lazyblk layers were downloaded whole instead of mounted lazily:\n", len(fbs))
	for _, f := range fbs {
		fmt.Fprintf(w, "  %s  %s  %s (reason %s, %d so far): %s\n", time.UnixMilli(f.UnixMs).Format(time.RFC3339),
			cmp.Or(f.Ref, "(no reference)"), f.Layer, f.Reason, f.Count, f.Message)
	}
}

// printWarmImages lists the images warmed without a mount (lazyblk
// prefetch warm), with the share of each the cache holds now.
func printWarmImages(w io.Writer, ws []*fetcherv1.WarmImage) {
	if len(ws) == 0 {
		return
	}
	fmt.Fprintln(w, "\nWarm images (lazyblk prefetch warm):")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "REF\tWARMED\tCACHED\tSIZE")
	for _, wi := range ws {
		what := "trace"
		if wi.All {
			what = "all"
		}
		pct := 0.0
		if wi.ImageSize > 0 {
			pct = 100 * float64(wi.CachedBytes) / float64(wi.ImageSize)
		}
		fmt.Fprintf(tw, "%s\t%s, %s\t%.1f%%\t%s\n", wi.Ref, what, time.UnixMilli(wi.WarmedUnixMs).Format(time.TimeOnly), pct, mib(wi.ImageSize))
	}
	tw.Flush()
}
