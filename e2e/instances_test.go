package e2e

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"github.com/lazyblk/lazyblk/blockdev"
	"github.com/lazyblk/lazyblk/internal/testutil"
)

// TestManyInstancesOneExport is the serverless pattern of many sandboxes
// of one image on a node: 16 NBD clients (nbdcopy, as 16 microVMs' disks
// would) read the whole image at once from one lazyblk serve with an
// empty cache. Every one gets the image's exact bytes; the registry sees
// each byte range once (the export's single image fetches each chunk
// once, whoever asks); and the serving process's memory per extra
// instance is measured: its peak RSS serving 16 against serving one.
func TestManyInstancesOneExport(t *testing.T) {
	testutil.Require(t, false, "nbdcopy")
	const n = 16
	host := testutil.GGCRRegistry(t)
	var mu sync.Mutex
	ranges := map[string]int{}
	proxy := testutil.FaultProxy(t, host, func(_ int64, r *http.Request) testutil.Fault {
		mu.Lock()
		defer mu.Unlock()
		ranges[r.URL.Path+" "+r.Header.Get("Range")]++
		return testutil.Pass
	})
	ref := proxy + "/many/img:v1"
	_, image := testutil.BlockImage(t, host+"/many/img:v1", 32<<20)
	// run serves the image from an empty cache to k clients at once and
	// returns the serving process's peak RSS.
	run := func(k int) int64 {
		sock := filepath.Join(t.TempDir(), "export.sock")
		serve, _ := startServe(t, lazyblk, "--plain-http", "--cache-dir", t.TempDir(), "--listen", "unix:"+sock, ref)
		defer func() { serve.Process.Signal(os.Interrupt); serve.Wait() }()
		var wg sync.WaitGroup
		errs := make([]error, k)
		for i := range k {
			wg.Add(1)
			go func() {
				defer wg.Done()
				out := filepath.Join(t.TempDir(), fmt.Sprintf("copy%d", i))
				if b, err := exec.Command("nbdcopy", "nbd+unix:///?socket="+sock, out).CombinedOutput(); err != nil {
					errs[i] = fmt.Errorf("client %d of %d: %v: %s", i, k, err, b)
					return
				}
				if got, err := os.ReadFile(out); err != nil || !bytes.Equal(got, image) {
					errs[i] = fmt.Errorf("client %d of %d read %d bytes that are not the image's %d (%v)", i, k, len(got), len(image), err)
				}
				os.Remove(out)
			}()
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				t.Error(err)
			}
		}
		return procStatus(t, serve.Process.Pid, "VmHWM")
	}
	one := run(1)
	mu.Lock()
	clear(ranges)
	mu.Unlock()
	many := run(n)
	mu.Lock()
	for r, c := range ranges {
		if c > 1 {
			t.Errorf("range %s fetched %d times by %d instances at once, want once", r, c, n)
		}
	}
	total := len(ranges)
	mu.Unlock()
	if total == 0 {
		t.Error("the registry saw no range request: the test measured nothing")
	}
	// Instances share one bound: the reads in flight of every connection
	// hold at most blockdev.DefaultMemory, whatever the number of clients
	// (plus the garbage collector's headroom).
	if grow := many - one; grow > blockdev.DefaultMemory*3/2 {
		t.Errorf("serving %d clients took %.1f MiB more than one, over the server's memory budget of %d MiB (+50%%)",
			n, float64(grow)/(1<<20), blockdev.DefaultMemory>>20)
	}
	t.Logf("instances: %d NBD clients of one export on an empty cache, %d range requests, none repeated; serving process peak RSS %.1f MiB for one client, %.1f MiB for %d: %.2f MiB per extra instance",
		n, total, float64(one)/(1<<20), float64(many)/(1<<20), n, float64(many-one)/(1<<20)/float64(n-1))
}
