package fetcher

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
)

// TestDockerHubHostsDir: Docker Hub's hosts.toml lives in docker.io/, the
// name containerd uses, although go-containerregistry calls the registry
// index.docker.io.
func TestDockerHubHostsDir(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "docker.io"), 0o755); err != nil {
		t.Fatal(err)
	}
	conf := "server = \"https://registry-1.docker.io\"\n\n[host.\"https://mirror.example\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
	if err := os.WriteFile(filepath.Join(dir, "docker.io", "hosts.toml"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	reg, err := name.NewRegistry("docker.io")
	if err != nil {
		t.Fatal(err)
	}
	mirrors, _, err := configuredHosts(context.Background(), dir, reg, http.DefaultTransport, 12)
	if err != nil || len(mirrors) != 1 || mirrors[0].host != "mirror.example" || mirrors[0].path != "/v2" {
		t.Fatalf("mirrors %+v, %v; want mirror.example with /v2", mirrors, err)
	}
}
