package lazy_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lazyblk/lazyblk/internal/testutil"
	"github.com/lazyblk/lazyblk/lazy"
)

// TestMount mounts an image in this process (nbdfuse, what this host
// has; ublk and kernel NBD run in e2e's QEMU guests), reads a file, and
// leaves nothing behind on Close.
func TestMount(t *testing.T) {
	testutil.Require(t, true, "nbdfuse")
	ref := testutil.GGCRRegistry(t) + "/lazy/img:v1"
	testutil.BlockImage(t, ref, 1<<20)
	ctx := context.Background()
	img, err := lazy.Open(ctx, ref, lazy.WithPlainHTTP(), lazy.WithCache([]string{t.TempDir()}, 1<<30))
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	dir := t.TempDir()
	m, err := img.Mount(ctx, dir, lazy.AttachNBDFuse)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "small")); err != nil || string(b) != "small" {
		t.Errorf("read through the mount: %q, %v", b, err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mi), " "+dir+" ") || strings.Contains(string(mi), "lazyblk-mount-") {
		t.Errorf("Close left a mount behind:\n%s", mi)
	}
	if _, err := os.Stat(filepath.Dir(filepath.Dir(m.Device))); err == nil {
		t.Errorf("Close left its work directory %s", filepath.Dir(filepath.Dir(m.Device)))
	}
}
