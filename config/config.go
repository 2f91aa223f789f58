// Package config reads the daemons' TOML configuration files: one file per
// daemon, strict (an unknown key is an error naming it), every value
// checked at start-up, durations and sizes as strings ("30s", "10GiB").
// A missing file means the documented defaults (Default*).
package config

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"
)

// FetcherExample and SnapshotterExample are the commented configuration
// files that `lazyblk config default` prints: every key, at its default.
var (
	//go:embed fetcher.toml
	FetcherExample string
	//go:embed snapshotter.toml
	SnapshotterExample string
)

// Fetcher is the fetcher daemon's configuration (lazyblk fetcher).
type Fetcher struct {
	// Root holds what survives a reboot: the default cache directory.
	Root string `toml:"root"`
	// State holds mount state and is lost at reboot (/run).
	State string `toml:"state"`
	// Address is the gRPC control socket.
	Address string `toml:"address"`
	// SocketGroup may use Address too (mode 0660); empty: root only (0600).
	SocketGroup string   `toml:"socket_group"`
	Cache       Cache    `toml:"cache"`
	Blockdev    Blockdev `toml:"blockdev"`
	Prefetch    Prefetch `toml:"prefetch"`
	Metrics     Metrics  `toml:"metrics"`
	Registry    Registry `toml:"registry"`
}

// DefaultHostsDir is where containerd keeps its hosts.toml files.
const DefaultHostsDir = "/etc/containerd/certs.d"

// Registry configures how mounts reach registries.
type Registry struct {
	// HostsDir is containerd's hosts.toml directory (mirrors, CAs,
	// client certificates); "" for none.
	HostsDir string `toml:"hosts_dir"`
	// AttemptTimeout bounds one range request; ReadTimeout one block read,
	// retries included (fetcher.WithTimeouts).
	AttemptTimeout string `toml:"attempt_timeout"`
	ReadTimeout    string `toml:"read_timeout"`
}

// Metrics configures the Prometheus endpoint.
type Metrics struct {
	// Address is host:port for GET /metrics; empty: no endpoint.
	Address string `toml:"address"`
}

// Prefetch configures what a mount fetches below demand reads.
type Prefetch struct {
	// Trace replays the image's recorded prefetch trace, when it has one.
	Trace bool `toml:"trace"`
	// FillBelow: images up to this size are fetched whole in the
	// background ("0" never).
	FillBelow string `toml:"fill_below"`
	// FillRate caps trace replay and fill per mount, bytes per second
	// ("0" unlimited).
	FillRate string `toml:"fill_rate"`
}

// Cache configures the chunk cache every mount reads through.
type Cache struct {
	// Dirs are the stripes, one per volume; empty means ROOT/cache.
	Dirs []string `toml:"dirs"`
	Size string   `toml:"size"`
	// LowWatermark: once full, evict down to this percentage of Size.
	LowWatermark int `toml:"low_watermark"`
}

// Blockdev configures how images become block devices.
type Blockdev struct {
	Attach      string `toml:"attach"`
	Connections int    `toml:"connections"`
	IOTimeout   string `toml:"io_timeout"`
}

// Snapshotter is the snapshotter daemon's configuration (lazyblk snapshotter).
type Snapshotter struct {
	// Root holds snapshot metadata (metadata.db) and layer directories.
	Root string `toml:"root"`
	// Address is the snapshots gRPC socket containerd's proxy plugin names.
	Address string `toml:"address"`
	// SocketGroup may use Address too (mode 0660); empty: root only (0600).
	SocketGroup string `toml:"socket_group"`
	// FetcherAddress is the fetcher daemon's socket.
	FetcherAddress string `toml:"fetcher_address"`
	// PlainHTTP lists registries (host:port) the fetcher talks plain HTTP to.
	PlainHTTP []string `toml:"plain_http"`
	Metrics   Metrics  `toml:"metrics"`
}

// DefaultFetcherAddress is the fetcher daemon's socket unless configured
// otherwise: where the snapshotter, `lazyblk mount` and `lazyblk status`
// look for it.
const DefaultFetcherAddress = "/run/lazyblk/fetcher.sock"

// DefaultFetcher is the fetcher daemon's configuration without a file.
func DefaultFetcher() Fetcher {
	return Fetcher{Root: "/var/lib/lazyblk", State: "/run/lazyblk", Address: DefaultFetcherAddress,
		Cache:    Cache{Size: "10GiB", LowWatermark: 90},
		Blockdev: Blockdev{Attach: "auto", Connections: 4, IOTimeout: "30s"},
		Prefetch: Prefetch{Trace: true, FillBelow: "8GiB", FillRate: "0"},
		Registry: Registry{HostsDir: DefaultHostsDir, AttemptTimeout: "10s", ReadTimeout: "60s"}}
}

// DefaultSnapshotter is the snapshotter's configuration without a file.
func DefaultSnapshotter() Snapshotter {
	return Snapshotter{Root: "/var/lib/lazyblk/snapshotter", Address: "/run/lazyblk/snapshotter.sock",
		FetcherAddress: DefaultFetcherAddress}
}

// load decodes path over the defaults in v; "" leaves the defaults.
func load(path string, v any) error {
	if path == "" {
		return nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	d := toml.NewDecoder(bytes.NewReader(b)).DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		var sm *toml.StrictMissingError
		if errors.As(err, &sm) {
			var keys []string
			for _, e := range sm.Errors {
				keys = append(keys, strings.Join(e.Key(), "."))
			}
			return fmt.Errorf("config %s: unknown key %s", path, strings.Join(keys, ", "))
		}
		var de *toml.DecodeError
		if errors.As(err, &de) {
			return fmt.Errorf("config %s: %s: %v", path, strings.Join(de.Key(), "."), de)
		}
		return fmt.Errorf("config %s: %w", path, err)
	}
	return nil
}

// LoadFetcher reads path ("" for none) over DefaultFetcher and checks it.
func LoadFetcher(path string) (Fetcher, error) {
	c := DefaultFetcher()
	if err := load(path, &c); err != nil {
		return c, err
	}
	return c, c.Check()
}

// LoadSnapshotter reads path ("" for none) over DefaultSnapshotter and checks it.
func LoadSnapshotter(path string) (Snapshotter, error) {
	c := DefaultSnapshotter()
	if err := load(path, &c); err != nil {
		return c, err
	}
	return c, c.Check()
}

func absPath(key, v string) error {
	if !filepath.IsAbs(v) {
		return fmt.Errorf("config: %s = %q: want an absolute path", key, v)
	}
	return nil
}

// Check validates every value, naming the key of the first bad one.
func (c Fetcher) Check() error {
	for key, v := range map[string]string{"root": c.Root, "state": c.State, "address": c.Address} {
		if err := absPath(key, v); err != nil {
			return err
		}
	}
	for _, d := range c.Cache.Dirs {
		if err := absPath("cache.dirs", d); err != nil {
			return err
		}
	}
	if c.Registry.HostsDir != "" {
		if err := absPath("registry.hosts_dir", c.Registry.HostsDir); err != nil {
			return err
		}
	}
	if _, err := c.CacheSize(); err != nil {
		return err
	}
	if w := c.Cache.LowWatermark; w < 1 || w > 100 {
		return fmt.Errorf("config: cache.low_watermark = %d: want a percentage of cache.size, 1 to 100", w)
	}
	switch c.Blockdev.Attach {
	case "auto", "ublk", "netlink", "nbdfuse":
	default:
		return fmt.Errorf("config: blockdev.attach = %q: want auto, ublk, netlink or nbdfuse", c.Blockdev.Attach)
	}
	if n := c.Blockdev.Connections; n < 1 || n > 64 {
		return fmt.Errorf("config: blockdev.connections = %d: want 1 to 64", n)
	}
	if _, err := c.IOTimeout(); err != nil {
		return err
	}
	if _, _, err := c.Timeouts(); err != nil {
		return err
	}
	if err := c.Metrics.check(); err != nil {
		return err
	}
	_, _, err := c.Fill()
	return err
}

// Fill is prefetch.fill_below and prefetch.fill_rate in bytes.
func (c Fetcher) Fill() (below, rate int64, err error) {
	if below, err = ParseLimit(c.Prefetch.FillBelow); err != nil {
		return 0, 0, fmt.Errorf("config: prefetch.fill_below = %q: want a size like 8GiB, or 0", c.Prefetch.FillBelow)
	}
	if rate, err = ParseLimit(c.Prefetch.FillRate); err != nil {
		return 0, 0, fmt.Errorf("config: prefetch.fill_rate = %q: want bytes per second like 200MiB, or 0", c.Prefetch.FillRate)
	}
	return below, rate, nil
}

// ParseLimit is ParseSize that also takes "0": no limit, or never.
func ParseLimit(s string) (int64, error) {
	if strings.TrimSpace(s) == "0" {
		return 0, nil
	}
	return ParseSize(s)
}

// CacheDirs are the configured stripes, or ROOT/cache.
func (c Fetcher) CacheDirs() []string {
	if len(c.Cache.Dirs) > 0 {
		return c.Cache.Dirs
	}
	return []string{filepath.Join(c.Root, "cache")}
}

// CacheSize is cache.size in bytes.
func (c Fetcher) CacheSize() (int64, error) {
	n, err := ParseSize(c.Cache.Size)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("config: cache.size = %q: want a positive size like 10GiB", c.Cache.Size)
	}
	return n, nil
}

// IOTimeout is blockdev.io_timeout.
func (c Fetcher) IOTimeout() (time.Duration, error) {
	d, err := time.ParseDuration(c.Blockdev.IOTimeout)
	if err != nil || d < time.Second {
		return 0, fmt.Errorf("config: blockdev.io_timeout = %q: want a duration of at least 1s, like 30s", c.Blockdev.IOTimeout)
	}
	return d, nil
}

// Timeouts are registry.attempt_timeout and registry.read_timeout.
func (c Fetcher) Timeouts() (attempt, read time.Duration, err error) {
	for _, t := range []struct {
		key, v string
		d      *time.Duration
	}{{"attempt_timeout", c.Registry.AttemptTimeout, &attempt}, {"read_timeout", c.Registry.ReadTimeout, &read}} {
		if *t.d, err = time.ParseDuration(t.v); err != nil || *t.d <= 0 {
			return 0, 0, fmt.Errorf("config: registry.%s = %q: want a positive duration like 10s", t.key, t.v)
		}
	}
	return attempt, read, nil
}

// Check validates every value, naming the key of the first bad one.
func (c Snapshotter) Check() error {
	for key, v := range map[string]string{"root": c.Root, "address": c.Address, "fetcher_address": c.FetcherAddress} {
		if err := absPath(key, v); err != nil {
			return err
		}
	}
	for _, h := range c.PlainHTTP {
		if h == "" || strings.ContainsAny(h, "/ ") {
			return fmt.Errorf("config: plain_http entry %q: want host or host:port", h)
		}
	}
	return c.Metrics.check()
}

func (m Metrics) check() error {
	if a := m.Address; a != "" {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return fmt.Errorf("config: metrics.address = %q: want host:port like 127.0.0.1:9464, or empty for none", a)
		}
	}
	return nil
}

// ParseSize reads 4194304, 4MiB, 4M, 64KiB, 64K, 10GiB or 10G.
func ParseSize(s string) (int64, error) {
	units := []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}}
	mult := int64(1)
	num := s
	for _, u := range units {
		if v, ok := strings.CutSuffix(s, u.suffix); ok {
			num, mult = v, u.mult
			break
		}
	}
	n, err := strconv.ParseInt(strings.TrimSpace(num), 10, 64)
	if err != nil || n <= 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("%q is not a size like 4MiB", s)
	}
	return n * mult, nil
}
