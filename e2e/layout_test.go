package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lazyblk/lazyblk/internal/testutil"
)

// TestConvertLayout converts between OCI image layouts on disk, a second
// time into the same layout under another tag, and inspects both.
func TestConvertLayout(t *testing.T) {
	img := testutil.Image(t, true, testutil.CaseLayers(t, true, false)...)
	src := testutil.WriteLayout(t, img, "v1")
	out := filepath.Join(t.TempDir(), "out")
	for _, tag := range []string{"a", "b"} {
		if _, stderr, code := run(t, "convert", "--compression", "zstd", "--chunk-size", "64KiB", "oci:"+src+":v1", "oci:"+out+":"+tag); code != 0 {
			t.Fatalf("convert to tag %s: exit %d: %s", tag, code, stderr)
		}
		stdout, stderr, code := run(t, "inspect", "--json", "oci:"+out+":"+tag)
		if code != 0 {
			t.Fatalf("inspect %s: exit %d: %s", tag, code, stderr)
		}
		var got inspected
		if err := json.Unmarshal([]byte(stdout), &got); err != nil {
			t.Fatal(err)
		}
		if got.Raw != 0 || got.Zstd == 0 || got.Chunks < 100 {
			t.Errorf("tag %s: --compression zstd --chunk-size 64KiB gave %+v", tag, got)
		}
	}
	// lazyblk cat streams the filesystem image through the fetcher.
	stdout, stderr, code := run(t, "cat", "--cache-dir", t.TempDir(), "oci:"+out+":a")
	if code != 0 {
		t.Fatalf("cat: exit %d: %s", code, stderr)
	}
	tree := testutil.SnapshotErofs(t, strings.NewReader(stdout))
	if tree["usr/bin/a"].Hardlinks == "" || tree["opq/new"].Size != 3 {
		t.Errorf("cat output is not the converted filesystem: %v %v", tree["usr/bin/a"], tree["opq/new"])
	}
	if _, err := os.Stat(filepath.Join(out, "index.json")); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(filepath.Dir(out))
	if len(entries) != 1 {
		t.Errorf("layout parent holds %d entries, want only the layout (no temp dirs left)", len(entries))
	}
}
