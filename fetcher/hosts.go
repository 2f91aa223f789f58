package fetcher

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	dockerconfig "github.com/containerd/containerd/v2/core/remotes/docker/config"
	"github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/name"
)

// host is one place that serves a repository's blobs: scheme, host[:port]
// and the API path ("/v2", or a mirror's own prefix), reached through base.
type host struct {
	scheme, host, path string
	base               http.RoundTripper
}

// mirrorHosts parses WithMirrors' list: host[:port], or http://host[:port]
// for plain HTTP.
func mirrorHosts(mirrors []string, base http.RoundTripper) []host {
	var hs []host
	for _, m := range mirrors {
		scheme := "https"
		h, plain := strings.CutPrefix(m, "http://")
		if plain {
			scheme = "http"
		}
		hs = append(hs, host{scheme: scheme, host: strings.TrimPrefix(h, "https://"), path: "/v2", base: base})
	}
	return hs
}

// configuredHosts reads containerd's hosts directory (DIR/<registry>/hosts.toml,
// or the docker certs.d layout) for reg: the mirrors that may pull, in
// order, each with its TLS settings (ca, client certs, skip_verify), and
// the transport for the origin (its own CA, when the directory names one).
func configuredHosts(ctx context.Context, dir string, reg name.Registry, base http.RoundTripper, idle int) (mirrors []host, origin http.RoundTripper, err error) {
	// containerd names Docker Hub docker.io (its directory too);
	// go-containerregistry index.docker.io.
	regName := reg.Name()
	if regName == name.DefaultRegistry {
		regName = "docker.io"
	}
	hostDir := dockerconfig.HostDirFromRoot(dir)
	if _, err := hostDir(regName); errdefs.IsNotFound(err) {
		return nil, base, nil // nothing configured for reg: the origin as it is
	}
	hs, err := dockerconfig.ConfigureHosts(ctx, dockerconfig.HostOptions{HostDir: hostDir})(regName)
	if err != nil {
		return nil, nil, fmt.Errorf("fetcher: hosts for %s in %s: %w", regName, dir, err)
	}
	// Each host's client is made for this call: keep as many of its
	// connections idle as the image may use at once.
	transport := func(h docker.RegistryHost) http.RoundTripper {
		if h.Client == nil || h.Client.Transport == nil {
			return base
		}
		if t, ok := h.Client.Transport.(*http.Transport); ok {
			t.MaxIdleConnsPerHost = max(t.MaxIdleConnsPerHost, idle)
		}
		return h.Client.Transport
	}
	origin = base
	for i, h := range hs {
		if i == len(hs)-1 && isOrigin(h, reg) {
			origin = transport(h)
			continue
		}
		if h.Capabilities&docker.HostCapabilityPull == 0 {
			continue
		}
		if h.Host == "" { // [host."#x"]: containerd reads no host name from it (found by FuzzHostsTOML)
			return nil, nil, fmt.Errorf("fetcher: hosts for %s in %s: a [host] entry names no host (scheme %q, path %q)", regName, dir, h.Scheme, h.Path)
		}
		tr := transport(h)
		mirrors = append(mirrors, host{scheme: h.Scheme, host: h.Host, path: strings.TrimSuffix(h.Path, "/"), base: tr})
	}
	return mirrors, origin, nil
}

// isOrigin: the host entry is the registry itself (containerd names
// docker.io's API host registry-1.docker.io; go-containerregistry
// index.docker.io).
func isOrigin(h docker.RegistryHost, reg name.Registry) bool {
	isDocker := func(s string) bool { return s == "docker.io" || s == "registry-1.docker.io" || s == "index.docker.io" }
	return h.Host == reg.Name() || h.Host == reg.RegistryStr() || isDocker(h.Host) && isDocker(reg.Name())
}

// logSkippedMirror says why a mirror takes no reads of this image.
func logSkippedMirror(log *slog.Logger, h host, err error) {
	log.Warn("mirror skipped, reading from the origin", "mirror", h.scheme+"://"+h.host, "err", err)
}
