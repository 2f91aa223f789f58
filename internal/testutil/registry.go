package testutil

import (
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
)

// GGCRRegistry starts go-containerregistry's in-process registry on
// loopback and returns its host:port. It understands closed ranges only.
func GGCRRegistry(t testing.TB) string {
	t.Helper()
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// ReferrersRegistry is GGCRRegistry with the OCI referrers API
// (GET /v2/NAME/referrers/DIGEST), which docker-registry 2.8 lacks.
func ReferrersRegistry(t testing.TB) string {
	t.Helper()
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0)), registry.WithReferrersSupport(true)))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// DockerRegistry starts Debian's docker-registry (distribution 2.8) on
// loopback with storage in a temp dir and returns its host:port.
func DockerRegistry(t testing.TB) string {
	t.Helper()
	Require(t, false, "docker-registry")
	return startDistribution(t, "docker-registry")
}

// DistributionRegistry starts distribution v3's registry (built by
// scripts/build-tools.sh) like DockerRegistry. v3.0.0 has no OCI
// referrers API either: traces go to the referrers tag there too.
func DistributionRegistry(t testing.TB) string {
	t.Helper()
	return startDistribution(t, Tool(t, DistributionV3, "registry"))
}

// Registries are the real registries tests run against, by name.
var Registries = []struct {
	Name  string
	Start func(testing.TB) string
}{{"ggcr", GGCRRegistry}, {"docker-registry", DockerRegistry}, {"distribution-v3", DistributionRegistry}}

// startDistribution runs a distribution registry binary (2.8 and v3 read
// the same configuration) and waits until it answers.
func startDistribution(t testing.TB, bin string) string {
	t.Helper()
	dir := t.TempDir()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	cfg := fmt.Sprintf("version: 0.1\nlog: {level: error}\nstorage:\n  filesystem: {rootdirectory: %s}\n  delete: {enabled: true}\nhttp:\n  addr: %s\n", filepath.Join(dir, "storage"), addr)
	cfgPath := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "serve", cfgPath)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	// Poll until it answers: there is no readiness signal to wait on.
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if resp, err := http.Get("http://" + addr + "/v2/"); err == nil {
			resp.Body.Close()
			return addr
		}
	}
	t.Fatalf("%s on %s did not answer", bin, addr)
	return ""
}

// StoppableRegistry is GGCRRegistry with a stop function that makes it
// refuse every later request, as a registry that went away.
func StoppableRegistry(t testing.TB) (string, func()) {
	t.Helper()
	var down atomic.Bool
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if down.Load() {
			http.Error(w, "registry stopped", http.StatusServiceUnavailable)
			return
		}
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://"), func() { down.Store(true) }
}
