package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/pelletier/go-toml/v2"
)

func write(t *testing.T, s string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "c.toml")
	if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDefaultsAreValid(t *testing.T) {
	if _, err := LoadFetcher(""); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadSnapshotter(""); err != nil {
		t.Fatal(err)
	}
}

// TestRoundTrip writes every key of a non-default configuration and reads
// it back unchanged.
func TestRoundTrip(t *testing.T) {
	f := Fetcher{Root: "/r", State: "/s", Address: "/s/f.sock", Cache: Cache{Dirs: []string{"/v1", "/v2"}, Size: "2GiB", LowWatermark: 75},
		Blockdev: Blockdev{Attach: "ublk", Connections: 2, IOTimeout: "5s"},
		Prefetch: Prefetch{Trace: false, FillBelow: "0", FillRate: "100MiB"}, Metrics: Metrics{Address: "127.0.0.1:9464"},
		Registry: Registry{HostsDir: "/etc/hosts.d", AttemptTimeout: "3s", ReadTimeout: "20s"}}
	s := Snapshotter{Root: "/sr", Address: "/s/sn.sock", FetcherAddress: "/s/f.sock", PlainHTTP: []string{"127.0.0.1:5000"},
		Metrics: Metrics{Address: "[::1]:9465"}}
	for _, c := range []struct {
		v    any
		load func(string) (any, error)
	}{
		{f, func(p string) (any, error) { return LoadFetcher(p) }},
		{s, func(p string) (any, error) { return LoadSnapshotter(p) }},
	} {
		b, err := toml.Marshal(c.v)
		if err != nil {
			t.Fatal(err)
		}
		got, err := c.load(write(t, string(b)))
		if err != nil || !reflect.DeepEqual(got, c.v) {
			t.Errorf("round trip of\n%s\ngot %+v, %v", b, got, err)
		}
	}
}

func TestRejects(t *testing.T) {
	for _, c := range []struct{ file, key string }{
		{"cache_size = \"1G\"", "cache_size"},
		{"[cache]\nsise = \"1G\"", "cache.sise"},
		{"[cache]\nsize = \"lots\"", "cache.size"},
		{"[cache]\ndirs = [\"relative\"]", "cache.dirs"},
		{"[cache]\nlow_watermark = 0", "cache.low_watermark"},
		{"[cache]\nlow_watermark = 101", "cache.low_watermark"},
		{"[blockdev]\nattach = \"loop\"", "blockdev.attach"},
		{"[blockdev]\nconnections = 0", "blockdev.connections"},
		{"[blockdev]\nio_timeout = \"30\"", "blockdev.io_timeout"},
		{"[blockdev]\nconnections = \"four\"", "blockdev.connections"},
		{"root = \"var/lib\"", "root"},
		{"[prefetch]\nfill_below = \"big\"", "prefetch.fill_below"},
		{"[prefetch]\nfill_rate = \"-1M\"", "prefetch.fill_rate"},
		{"[prefetch]\ntrace = \"yes\"", "prefetch.trace"},
		{"[metrics]\naddress = \"9464\"", "metrics.address"},
		{"[metrics]\nport = 9464", "metrics.port"},
		{"[registry]\nhosts_dir = \"certs.d\"", "registry.hosts_dir"},
		{"[registry]\nattempt_timeout = \"10\"", "registry.attempt_timeout"},
		{"[registry]\nread_timeout = \"-1s\"", "registry.read_timeout"},
	} {
		_, err := LoadFetcher(write(t, c.file))
		if err == nil || !strings.Contains(err.Error(), c.key) {
			t.Errorf("%q: got %v, want an error naming %s", c.file, err, c.key)
		}
	}
	if _, err := LoadSnapshotter(write(t, "plain_http = [\"http://x\"]")); err == nil || !strings.Contains(err.Error(), "plain_http") {
		t.Errorf("snapshotter plain_http URL: %v", err)
	}
	if _, err := LoadSnapshotter(write(t, "[metrics]\naddress = \"localhost\"")); err == nil || !strings.Contains(err.Error(), "metrics.address") {
		t.Errorf("snapshotter metrics.address without a port: %v", err)
	}
	if _, err := LoadFetcher("/nonexistent/fetcher.toml"); err == nil || !strings.Contains(err.Error(), "/nonexistent/fetcher.toml") {
		t.Errorf("missing file: %v", err)
	}
}

// TestExamples loads the commented example configurations (what `lazyblk
// config default` prints): they must parse and equal the defaults they
// document.
func TestExamples(t *testing.T) {
	f, err := LoadFetcher(write(t, FetcherExample))
	if err != nil {
		t.Fatal(err)
	}
	want := DefaultFetcher()
	want.Cache.Dirs = []string{}
	if !reflect.DeepEqual(f, want) {
		t.Errorf("fetcher.toml = %+v, defaults %+v", f, want)
	}
	s, err := LoadSnapshotter(write(t, SnapshotterExample))
	if err != nil {
		t.Fatal(err)
	}
	wantS := DefaultSnapshotter()
	wantS.PlainHTTP = []string{}
	if !reflect.DeepEqual(s, wantS) {
		t.Errorf("snapshotter.toml = %+v, defaults %+v", s, wantS)
	}
}
