package main

import (
	"fmt"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/lazyblk/lazyblk/config"
	"github.com/lazyblk/lazyblk/fetcher"
	"github.com/lazyblk/lazyblk/mounts"
)

func sourceFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringSliceFlag{Name: "cache-dir", Usage: "chunk cache directory, repeatable: one per stripe, e.g. one per volume (default: none, only the chunks read last are kept, in memory)"},
		&cli.StringFlag{Name: "cache-size", Value: "10GiB", Usage: "cache capacity across all stripes"},
		&cli.BoolFlag{Name: "plain-http", Usage: "talk plain HTTP to the registry"},
		hostsDirFlag(),
		&cli.DurationFlag{Name: "attempt-timeout", Value: fetcher.DefaultAttemptTimeout,
			Usage: "one range request may take this long before it is retried (4 attempts in all)"},
		&cli.DurationFlag{Name: "read-timeout", Value: fetcher.DefaultReadTimeout, Usage: "a block read fails with EIO after this long, " +
			"retries included; a registry host that keeps failing fails reads at once until it answers a probe again"},
	}
}

func hostsDirFlag() cli.Flag {
	return &cli.StringFlag{Name: "hosts-dir", Value: config.DefaultHostsDir,
		Usage: "containerd's hosts.toml directory: mirrors chunk reads try first, CAs, client certificates (\"\": none)"}
}

// sourceFromFlags reads REF (the first argument) and the source flags.
func sourceFromFlags(c *cli.Context) (mounts.Source, error) {
	s := mounts.Source{Ref: c.Args().First(), PlainHTTP: c.Bool("plain-http"), CacheDirs: c.StringSlice("cache-dir"),
		HostsDir: c.String("hosts-dir"), AttemptTimeout: c.Duration("attempt-timeout"), ReadTimeout: c.Duration("read-timeout")}
	if err := s.Check(); err != nil {
		return s, cli.Exit(err.Error(), 2)
	}
	size, err := config.ParseSize(c.String("cache-size"))
	if err != nil {
		return s, cli.Exit("--cache-size: "+err.Error(), 2)
	}
	s.CacheSize = size
	return s, nil
}

// backgroundFromFlags reads mount's --no-trace, --fill-below and --fill-rate.
func backgroundFromFlags(c *cli.Context) (mounts.Background, error) {
	b := mounts.Background{Trace: !c.Bool("no-trace")}
	for _, f := range []struct {
		name string
		v    *int64
	}{{"fill-below", &b.FillBelow}, {"fill-rate", &b.FillRate}} {
		n, err := config.ParseLimit(c.String(f.name))
		if err != nil {
			return b, cli.Exit(fmt.Sprintf("--%s: %v", f.name, err), 2)
		}
		*f.v = n
	}
	return b, nil
}

func stateDirFlag() cli.Flag {
	return &cli.StringFlag{Name: "state-dir", Value: mounts.DefaultRoot, EnvVars: []string{"LAZYBLK_STATE_DIR"},
		Usage: "where mounts record their state"}
}

func fetcherAddressFlag() cli.Flag {
	return &cli.StringFlag{Name: "fetcher-address", Value: config.DefaultFetcherAddress, EnvVars: []string{"LAZYBLK_FETCHER_ADDRESS"},
		Usage: "the fetcher daemon's socket: used when a daemon answers there (empty: never)"}
}

func manager(c *cli.Context) *mounts.Manager {
	return &mounts.Manager{Root: c.String("state-dir")}
}

// registryFlags are what commands that only read from or write to a
// registry share.
func registryFlags(jsonUsage string) []cli.Flag {
	return []cli.Flag{
		&cli.BoolFlag{Name: "plain-http", Usage: "talk plain HTTP to the registry"},
		&cli.BoolFlag{Name: "json", Usage: jsonUsage},
	}
}

// refArgs checks that the command got n arguments, usage naming them, and
// parses the first as REF.
func refArgs(c *cli.Context, n int, usage string) (fetcher.Location, error) {
	name := strings.TrimPrefix(c.Command.HelpName, "lazyblk ")
	if c.NArg() != n {
		return fetcher.Location{}, cli.Exit(fmt.Sprintf("%s needs %s (see lazyblk %s --help)", name, usage, name), 2)
	}
	loc, err := fetcher.ParseLocation(c.Args().First(), c.Bool("plain-http"))
	if err != nil {
		return loc, cli.Exit(err.Error(), 2)
	}
	return loc, nil
}

// describeArg parses the command's one REF argument and describes the
// block image it names.
func describeArg(c *cli.Context) (fetcher.Location, *fetcher.Description, error) {
	loc, err := refArgs(c, 1, "REF")
	if err != nil {
		return loc, nil, err
	}
	d, err := fetcher.Describe(c.Context, loc)
	return loc, d, err
}
