package main

import (
	"net/http"

	"fmt"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"log/slog"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	dockerconfig "github.com/containerd/containerd/v2/core/remotes/docker/config"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/snapshotters"
	"github.com/urfave/cli/v2"
	"google.golang.org/grpc"

	"github.com/lazyblk/lazyblk/config"
	"github.com/lazyblk/lazyblk/fetcherd"
	"github.com/lazyblk/lazyblk/snapshotter"
)

func snapshotterCommand() *cli.Command {
	return &cli.Command{
		Name:  "snapshotter",
		Usage: "run the containerd snapshotter (proxy plugin \"lazyblk\")",
		Description: `Serves containerd's snapshots API on a unix socket. Ordinary layers are
containerd's overlayfs snapshotter; a lazyblk image's layer is mounted lazily
by the fetcher daemon (lazyblk fetcher) instead of being downloaded.
If the lazy mount fails, the layer is downloaded and unpacked as usual, and the
fallback is logged, counted and shown by 'lazyblk status' (a layer whose labels
lack the image reference is a misconfiguration, and the warning says which).

containerd 2.x (/etc/containerd/config.toml, version 3):
  [proxy_plugins.lazyblk]
    type = "snapshot"
    address = "/run/lazyblk/snapshotter.sock"
  # for Kubernetes (CRI):
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = "lazyblk"
    disable_snapshot_annotations = false
  [[plugins.'io.containerd.transfer.v1.local'.unpack_config]]
    platform = "linux/amd64"
    snapshotter = "lazyblk"
containerd 1.6/1.7 (version 2): the same proxy_plugins table, and for CRI
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "lazyblk"
    disable_snapshot_annotations = false

Runs on defaults without a config file: root /var/lib/lazyblk/snapshotter,
socket /run/lazyblk/snapshotter.sock, fetcher at /run/lazyblk/fetcher.sock.
'lazyblk config default snapshotter' prints every key, commented.

Examples:
  lazyblk snapshotter
  lazyblk snapshotter --config /etc/lazyblk/snapshotter.toml`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "config", Usage: "TOML configuration file (default: none, built-in defaults)"},
			&cli.StringFlag{Name: "root", Usage: "snapshot metadata and layers; overrides root"},
			&cli.StringFlag{Name: "address", Usage: "snapshots API socket; overrides address"},
			&cli.StringFlag{Name: "fetcher-address", Usage: "the fetcher daemon's socket; overrides fetcher_address"},
			&cli.StringFlag{Name: "metrics-address", Usage: "host:port of a Prometheus endpoint (GET /metrics); overrides metrics.address"},
		},
		Action: runSnapshotter,
	}
}

func runSnapshotter(c *cli.Context) error {
	cfg, err := config.LoadSnapshotter(c.String("config"))
	if err == nil {
		err = overrides(c, cfg.Check, map[string]*string{"root": &cfg.Root, "address": &cfg.Address, "fetcher-address": &cfg.FetcherAddress,
			"metrics-address": &cfg.Metrics.Address})
	}
	if err != nil {
		return cli.Exit(err.Error(), 2)
	}
	client, cc, err := fetcherd.Dial(cfg.FetcherAddress)
	if err != nil {
		return err
	}
	defer cc.Close()
	sn, err := snapshotter.New(c.Context, cfg.Root, client, snapshotter.WithPlainHTTP(cfg.PlainHTTP...))
	if err != nil {
		return fmt.Errorf("snapshotter %s: %w", cfg.Root, err)
	}
	defer sn.Close()
	l, err := fetcherd.Listen(cfg.Address, cfg.SocketGroup)
	if err != nil {
		return err
	}
	if err := serveMetrics(c, "snapshotter", cfg.Metrics.Address, snapshotterMetrics(sn)); err != nil {
		l.Close()
		return err
	}
	g := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(g, snapshotservice.FromSnapshotter(sn))
	slog.Info("snapshotter", "root", cfg.Root, "fetcher", cfg.FetcherAddress)
	err = serveGRPC(c, "snapshotter", g, l)
	slog.Info("snapshotter stopped", "stats", fmt.Sprintf("%+v", sn.Stats()))
	return err
}

func pullCommand() *cli.Command {
	return &cli.Command{
		Name:      "pull",
		Usage:     "pull an image into containerd for the lazyblk snapshotter",
		ArgsUsage: "REF",
		Description: `Pulls REF through containerd like 'ctr images pull', passing the snapshotter the
labels it needs to mount lazyblk images lazily (the image reference; CRI
passes them itself when disable_snapshot_annotations = false, plain ctr and
nerdctl do not). Layers of lazyblk images are not
downloaded; ordinary images are pulled and unpacked as usual. Afterwards
'ctr run --snapshotter lazyblk' and nerdctl use the image as usual.

Examples:
  lazyblk pull registry.local/app:v1-lazyblk
  lazyblk pull --plain-http --address /run/containerd/containerd.sock 127.0.0.1:5000/app:v1
  ctr run --rm --snapshotter lazyblk registry.local/app:v1-lazyblk app1 python3 -c 'import torch'`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "address", Value: "/run/containerd/containerd.sock", EnvVars: []string{"CONTAINERD_ADDRESS"}, Usage: "containerd's socket"},
			&cli.StringFlag{Name: "namespace", Value: "default", EnvVars: []string{"CONTAINERD_NAMESPACE"}, Usage: "containerd namespace"},
			&cli.StringFlag{Name: "snapshotter", Value: "lazyblk", Usage: "containerd snapshotter to unpack into"},
			&cli.BoolFlag{Name: "plain-http", Usage: "talk plain HTTP to the registry"},
			hostsDirFlag(),
			&cli.BoolFlag{Name: "json", Usage: "print the result as JSON"},
		},
		Action: runPull,
	}
}

func runPull(c *cli.Context) error {
	start := time.Now()
	if c.NArg() != 1 {
		return cli.Exit("pull needs REF (see lazyblk pull --help)", 2)
	}
	ref := c.Args().First()
	client, err := containerd.New(c.String("address"), containerd.WithTimeout(10*time.Second))
	if err != nil {
		return fmt.Errorf("containerd at %s: %w", c.String("address"), err)
	}
	defer client.Close()
	ctx := namespaces.WithNamespace(c.Context, c.String("namespace"))
	hosts := dockerconfig.HostOptions{HostDir: dockerconfig.HostDirFromRoot(c.String("hosts-dir"))}
	if c.Bool("plain-http") {
		hosts.DefaultScheme = "http"
	}
	resolver := docker.NewResolver(docker.ResolverOptions{Hosts: dockerconfig.ConfigureHosts(ctx, hosts)})
	img, err := client.Pull(ctx, ref, containerd.WithPullUnpack, containerd.WithPullSnapshotter(c.String("snapshotter")),
		containerd.WithResolver(resolver), containerd.WithImageHandlerWrapper(snapshotters.AppendInfoHandlerWrapper(ref)))
	if err != nil {
		return fmt.Errorf("pull %s: %w", ref, err)
	}
	out := struct {
		Name   string `json:"name"`
		Digest string `json:"digest"`
		MS     int64  `json:"ms"`
	}{img.Name(), img.Target().Digest.String(), time.Since(start).Milliseconds()}
	if c.Bool("json") {
		return printJSON(c.App.Writer, out)
	}
	_, err = fmt.Fprintf(c.App.Writer, "pulled %s (%s) in %d ms\n", out.Name, out.Digest, out.MS)
	return err
}

const fallbacksHelp = "lazyblk layers containerd downloaded and unpacked instead of mounted lazily, by reason: " +
	"labels (a misconfiguration: CRI passed no image reference; see lazyblk status) or mount (the lazy mount failed)."

// snapshotterMetrics exposes the snapshotter's counters.
func snapshotterMetrics(sn *snapshotter.Snapshotter) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "lazyblk_snapshotter_remote_layers_total",
			Help: "lazyblk layers mounted lazily (containerd skipped their download)."},
			func() float64 { return float64(sn.Stats().Remote) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "lazyblk_snapshotter_fallbacks_total",
			Help: fallbacksHelp, ConstLabels: prometheus.Labels{"reason": snapshotter.FallbackMount}},
			func() float64 { st := sn.Stats(); return float64(st.Fallbacks - st.Misconfigured) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "lazyblk_snapshotter_fallbacks_total",
			Help: fallbacksHelp, ConstLabels: prometheus.Labels{"reason": snapshotter.FallbackLabels}},
			func() float64 { return float64(sn.Stats().Misconfigured) }),
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
}
