package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lazyblk/lazyblk/imagefmt"
	"github.com/lazyblk/lazyblk/internal/testutil"
)

// idleRSS is the bound on a serving process's memory when idle.
const idleRSS = 64 << 20

// TestServeGivesMemoryBackWhenIdle: a serving process (built without the
// race detector) that has read a 256 MiB image whole, cold, holds well
// over 64 MiB at its peak; once it has been idle a few seconds it holds
// under 64 MiB. Before it gave memory back (mounts.TrimWhenIdle) it kept
// its peak for minutes.
func TestServeGivesMemoryBackWhenIdle(t *testing.T) {
	testutil.Require(t, false, "nbdcopy")
	ref := testutil.DockerRegistry(t) + "/serve/big:v1"
	testutil.BlockImage(t, ref, 256<<20, imagefmt.WithChunkSize(imagefmt.DefaultChunkSize))
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	cmd, lines := startServe(t, staticLazyblk(t), "--plain-http", "--cache-dir", t.TempDir(), "--cache-size", "1GiB",
		"--listen", "unix:"+sock, ref)
	go func() { // drain, so the server never blocks on its log
		for lines.Scan() {
		}
	}()
	testutil.Run(t, "nbdcopy", "--connections=4", "nbd+unix:///?socket="+sock, "null:")

	pid := cmd.Process.Pid
	if peak := procStatus(t, pid, "VmHWM"); peak <= idleRSS {
		t.Fatalf("the cold read peaked at %d MiB: too little to show memory given back", peak>>20)
	} else {
		t.Logf("peak RSS of the read: %d MiB", peak>>20)
	}
	start := time.Now()
	deadline := start.Add(30 * time.Second) // the process waits 5 s of idleness, then trims
	for {
		rss := procStatus(t, pid, "VmRSS")
		if rss <= idleRSS {
			t.Logf("RSS %d MiB after %v idle", rss>>20, time.Since(start).Round(100*time.Millisecond))
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("RSS still %d MiB after %v idle; want at most %d MiB", rss>>20, time.Since(start).Round(time.Second), idleRSS>>20)
		}
		time.Sleep(100 * time.Millisecond) // polling /proc: there is nothing to wait on
	}
}

// procStatus returns a size field of /proc/PID/status (VmRSS, VmHWM) in bytes.
func procStatus(t *testing.T, pid int, field string) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			var kib int64
			if _, err := fmt.Sscanf(strings.TrimSpace(v), "%d kB", &kib); err != nil {
				t.Fatalf("%s: %q: %v", field, line, err)
			}
			return kib << 10
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}
