package e2e

import (
	"bytes"
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"

	"github.com/lazyblk/lazyblk/internal/testutil"
)

// TestCatThroughMirror: --hosts-dir takes containerd's hosts.toml layout;
// the mirror it names serves the chunk reads, and a mirror that serves
// corrupt bytes is caught and passed over for the origin.
func TestCatThroughMirror(t *testing.T) {
	reg := testutil.GGCRRegistry(t)
	for _, c := range []struct {
		name        string
		fault       testutil.Fault
		originReads bool
	}{{"serving", testutil.Pass, false}, {"corrupt", testutil.Flip, true}} {
		t.Run(c.name, func(t *testing.T) {
			var mirrorHits, originHits atomic.Int64
			mirror := testutil.FaultProxy(t, reg, func(int64, *http.Request) testutil.Fault { mirrorHits.Add(1); return c.fault })
			origin := testutil.FaultProxy(t, reg, func(int64, *http.Request) testutil.Fault { originHits.Add(1); return testutil.Pass })
			_, want := testutil.BlockImage(t, reg+"/mirrored/img:"+c.name, 2<<20)
			dir := testutil.HostsDir(t, origin,
				fmt.Sprintf("server = \"http://%s\"\n\n[host.\"http://%s\"]\n  capabilities = [\"pull\", \"resolve\"]\n", origin, mirror))
			out, stderr, code := run(t, "cat", "--plain-http", "--hosts-dir", dir, origin+"/mirrored/img:"+c.name)
			if code != 0 || !bytes.Equal([]byte(out), want) {
				t.Fatalf("cat through the mirror: exit %d, %d of %d bytes right: %s", code, len(out), len(want), stderr)
			}
			if mirrorHits.Load() == 0 || (originHits.Load() > 0) != c.originReads {
				t.Errorf("range reads: mirror %d, origin %d; want origin used = %v", mirrorHits.Load(), originHits.Load(), c.originReads)
			}
		})
	}
}
