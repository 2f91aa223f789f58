package e2e

import (
	"path/filepath"
	"testing"

	"github.com/lazyblk/lazyblk/internal/testutil"
)

// TestMountVersion1Image: a block image whose chunk index is version 1,
// converted by the code of that format (testdata/README.md), still mounts
// and reads exactly: its tree equals umoci's unpack of the source layers.
func TestMountVersion1Image(t *testing.T) {
	e := newMountEnv(t)
	img := testutil.Image(t, false, testutil.CaseLayers(t, false, false)...)
	want := testutil.Umoci(t, testutil.WriteLayout(t, img, "src"), "src")
	layout, err := filepath.Abs("testdata/v1-image")
	if err != nil {
		t.Fatal(err)
	}
	out, stderr, code := run(t, "inspect", "--json", "oci:"+layout+":v1")
	if code != 0 {
		t.Fatalf("inspect: exit %d: %s", code, stderr)
	}
	t.Logf("inspect: %s", out)
	dir := t.TempDir()
	e.mount(t, "oci:"+layout+":v1", dir, "--cache-dir", t.TempDir())
	got := testutil.SnapshotDir(t, dir)
	for _, d := range testutil.Diff(want, got) {
		t.Errorf("version 1 image: %s", d)
	}
	e.umount(t, dir)
}
