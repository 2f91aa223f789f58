package main

import (
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/urfave/cli/v2"
	"google.golang.org/grpc"

	"github.com/lazyblk/lazyblk/config"
	"github.com/lazyblk/lazyblk/fetcherd"
	"github.com/lazyblk/lazyblk/mounts"
)

func fetcherCommand() *cli.Command {
	return &cli.Command{
		Name:  "fetcher",
		Usage: "run the fetcher daemon: mounts block images on request, owns the chunk cache",
		Description: `Serves the control API (api/fetcher/v1: Mount, Unmount, List, Prefetch, Stats)
over gRPC on a unix socket. The snapshotter and 'lazyblk mount' use it; every
mount it makes reads through its cache.

Each mount is served by a process of its own that outlives the daemon:
stopping or restarting the daemon leaves mounts and running containers alone.
At start it hands kernel NBD devices whose server died to new servers.

Runs on defaults without a config file: root /var/lib/lazyblk (cache in
ROOT/cache, 10GiB), state /run/lazyblk, socket /run/lazyblk/fetcher.sock.
'lazyblk config default fetcher' prints every key, commented.

Examples:
  lazyblk fetcher
  lazyblk fetcher --config /etc/lazyblk/fetcher.toml
  lazyblk --log-level info fetcher --root /data/lazyblk --address /run/lazyblk/f.sock
  lazyblk fetcher --metrics-address 127.0.0.1:9464   # then: curl 127.0.0.1:9464/metrics`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "config", Usage: "TOML configuration file (default: none, built-in defaults)"},
			&cli.StringFlag{Name: "root", Usage: "persistent directory (default cache location); overrides root"},
			&cli.StringFlag{Name: "state", Usage: "mount state directory; overrides state"},
			&cli.StringFlag{Name: "address", Usage: "control socket; overrides address"},
			&cli.StringFlag{Name: "metrics-address", Usage: "host:port of a Prometheus endpoint (GET /metrics); overrides metrics.address"},
		},
		Action: runFetcher,
	}
}

func runFetcher(c *cli.Context) error {
	cfg, err := config.LoadFetcher(c.String("config"))
	if err == nil {
		err = overrides(c, cfg.Check, map[string]*string{"root": &cfg.Root, "state": &cfg.State, "address": &cfg.Address,
			"metrics-address": &cfg.Metrics.Address})
	}
	if err != nil {
		return cli.Exit(err.Error(), 2)
	}
	size, _ := cfg.CacheSize()
	timeout, _ := cfg.IOTimeout()
	fillBelow, fillRate, _ := cfg.Fill()
	attempt, read, _ := cfg.Timeouts()
	for _, d := range cfg.CacheDirs() {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("cache directory: %w", err)
		}
	}
	m := &mounts.Manager{Root: cfg.State}
	srv := &fetcherd.Server{Mounts: m, Defaults: fetcherd.Defaults{Attach: cfg.Blockdev.Attach,
		Connections: cfg.Blockdev.Connections, IOTimeout: timeout, CacheDirs: cfg.CacheDirs(), CacheSize: size,
		CacheLow: float64(cfg.Cache.LowWatermark) / 100, HostsDir: cfg.Registry.HostsDir,
		AttemptTimeout: attempt, ReadTimeout: read,
		Background: mounts.Background{Trace: cfg.Prefetch.Trace, FillBelow: fillBelow, FillRate: fillRate}}}
	l, err := fetcherd.Listen(cfg.Address, cfg.SocketGroup)
	if err != nil {
		return err
	}
	if err := serveMetrics(c, "fetcher", cfg.Metrics.Address, srv.MetricsHandler()); err != nil {
		l.Close()
		return err
	}
	fetcherd.Recover(c.Context, m)
	slog.Info("fetcher daemon", "state", cfg.State, "cache", cfg.CacheDirs())
	return serveGRPC(c, "fetcher", fetcherd.NewGRPCServer(srv), l)
}

// serveMetrics serves GET /metrics on addr (host:port; "" for none) until
// the command's context ends, and says where on stderr.
func serveMetrics(c *cli.Context, daemon, addr string, h http.Handler) error {
	if addr == "" {
		return nil
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics endpoint (metrics.address): %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", h)
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-c.Context.Done()
		hs.Close()
	}()
	go func() {
		if err := hs.Serve(l); err != http.ErrServerClosed {
			slog.Error("metrics endpoint stopped", "address", addr, "err", err)
		}
	}()
	fmt.Fprintf(c.App.ErrWriter, "lazyblk %s: metrics on http://%s/metrics\n", daemon, l.Addr())
	return nil
}

// overrides applies the flags that were given over their configuration
// keys, then checks the result.
func overrides(c *cli.Context, check func() error, keys map[string]*string) error {
	for flag, dst := range keys {
		if c.IsSet(flag) {
			*dst = c.String(flag)
		}
	}
	return check()
}

// serveGRPC serves g on l until the command's context ends (SIGTERM,
// SIGINT), then stops gracefully. The "listening on" line is what
// supervisors and tests wait for.
func serveGRPC(c *cli.Context, name string, g *grpc.Server, l net.Listener) error {
	go func() {
		<-c.Context.Done()
		g.GracefulStop()
	}()
	fmt.Fprintf(c.App.ErrWriter, "lazyblk %s: listening on %s\n", name, l.Addr())
	return g.Serve(l)
}
