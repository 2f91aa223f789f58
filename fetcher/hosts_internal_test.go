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

// FuzzHostsTOML: whatever a node's hosts.toml says (written by an
// operator, or a P2P agent), reading it gives mirrors or an error, never
// a panic, and every mirror has a host to ask. (It found [host."#x"],
// which containerd reads as a host without a name: now refused.)
func FuzzHostsTOML(f *testing.F) {
	f.Add("server = \"https://registry.example\"\n[host.\"https://mirror.example\"]\n  capabilities = [\"pull\", \"resolve\"]\n  skip_verify = true\n")
	f.Add("[host.\"http://10.0.0.1:5000\"]\n  capabilities = [\"pull\"]\n  ca = \"/nonexistent/ca.pem\"\n  client = [[\"/x.crt\", \"/x.key\"]]\n  override_path = true\n")
	f.Add("[host.\"mirror\"]\ncapabilities = \"pull\"\n[host.\"https://a/b/c\"]\nheader = {x = \"y\"}\n")
	f.Add("server = 5\n[[host]]\n")
	reg, err := name.NewRegistry("registry.example")
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, conf string) {
		dir := t.TempDir()
		if err := os.MkdirAll(filepath.Join(dir, reg.RegistryStr()), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, reg.RegistryStr(), "hosts.toml"), []byte(conf), 0o644); err != nil {
			t.Fatal(err)
		}
		mirrors, _, err := configuredHosts(context.Background(), dir, reg, http.DefaultTransport, 4)
		if err != nil {
			return
		}
		for _, m := range mirrors {
			if m.host == "" {
				t.Fatalf("a mirror without a host: %+v", m)
			}
		}
	})
}
