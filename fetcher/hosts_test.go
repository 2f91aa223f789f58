package fetcher_test

import (
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"

	"github.com/lazyblk/lazyblk/fetcher"
	"github.com/lazyblk/lazyblk/internal/testutil"
)

// TestHostsDir: containerd's hosts.toml names the mirrors. A TLS mirror
// trusted through its ca takes the chunk reads; one that is down is passed
// over; a host without the pull capability is never asked; without the ca
// the mirror is not trusted and the origin serves. Reads stay exact.
func TestHostsDir(t *testing.T) {
	reg := testutil.GGCRRegistry(t)
	loc, want := testutil.BlockImage(t, reg+"/img:v1", 1<<20)
	counting := func(n *atomic.Int64) func(int64, *http.Request) testutil.Fault {
		return func(int64, *http.Request) testutil.Fault { n.Add(1); return testutil.Pass }
	}
	var mirrorHits, resolveHits, originHits atomic.Int64
	mirror, ca := testutil.TLSFaultProxy(t, reg, counting(&mirrorHits))
	resolveOnly := testutil.FaultProxy(t, reg, counting(&resolveHits))
	origin := testutil.FaultProxy(t, reg, counting(&originHits))
	hostsDir := func(caLine string) string {
		return testutil.HostsDir(t, origin, fmt.Sprintf(`server = "http://%s"

[host."http://127.0.0.1:1"]
  capabilities = ["pull", "resolve"]

[host."http://%s"]
  capabilities = ["resolve"]

[host."https://%s"]
  capabilities = ["pull", "resolve"]
  %s
`, origin, resolveOnly, mirror, caLine))
	}

	im := openImage(t, viaProxy(t, loc, origin), fast, fetcher.WithHostsDir(hostsDir(fmt.Sprintf("ca = %q", ca))))
	readRandom(t, im, want, 17, 30)
	if mirrorHits.Load() == 0 || originHits.Load() != 0 || resolveHits.Load() != 0 {
		t.Errorf("range reads: mirror %d, origin %d, resolve-only host %d; want all from the mirror",
			mirrorHits.Load(), originHits.Load(), resolveHits.Load())
	}

	mirrorHits.Store(0)
	im = openImage(t, viaProxy(t, loc, origin), fast, fetcher.WithHostsDir(hostsDir("")))
	readRandom(t, im, want, 19, 30)
	if mirrorHits.Load() != 0 || originHits.Load() == 0 {
		t.Errorf("untrusted mirror: range reads: mirror %d, origin %d; want all from the origin", mirrorHits.Load(), originHits.Load())
	}

	// skip_verify trusts the mirror without its CA.
	mirrorHits.Store(0)
	originHits.Store(0)
	im = openImage(t, viaProxy(t, loc, origin), fast, fetcher.WithHostsDir(hostsDir("skip_verify = true")))
	readRandom(t, im, want, 29, 30)
	if mirrorHits.Load() == 0 || originHits.Load() != 0 {
		t.Errorf("skip_verify mirror: range reads: mirror %d, origin %d; want all from the mirror", mirrorHits.Load(), originHits.Load())
	}

	// A mirror that demands a client certificate gets the one "client" names.
	var mtlsHits atomic.Int64
	mtls, mtlsCA, cert, key := testutil.MTLSFaultProxy(t, reg, counting(&mtlsHits))
	originHits.Store(0)
	for _, clientLine := range []string{fmt.Sprintf("client = [[%q, %q]]", cert, key), ""} {
		dir := testutil.HostsDir(t, origin, fmt.Sprintf("server = \"http://%s\"\n\n[host.\"https://%s\"]\n  capabilities = [\"pull\"]\n  ca = %q\n  %s\n",
			origin, mtls, mtlsCA, clientLine))
		im = openImage(t, viaProxy(t, loc, origin), fast, fetcher.WithHostsDir(dir))
		readRandom(t, im, want, 31, 10)
		if withCert := clientLine != ""; withCert != (mtlsHits.Load() > 0) || withCert == (originHits.Load() > 0) {
			t.Errorf("client certificate given: %v; range reads: mirror %d, origin %d", withCert, mtlsHits.Load(), originHits.Load())
		}
		mtlsHits.Store(0)
		originHits.Store(0)
	}

	// No entry for the registry: the origin alone.
	im = openImage(t, viaProxy(t, loc, origin), fast, fetcher.WithHostsDir(t.TempDir()))
	readRandom(t, im, want, 23, 10)
	if originHits.Load() == 0 {
		t.Error("no hosts entry: the origin was not asked")
	}
}
