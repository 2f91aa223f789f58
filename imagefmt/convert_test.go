package imagefmt_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/lazyblk/lazyblk/imagefmt"
	"github.com/lazyblk/lazyblk/internal/testutil"
)

// convertImage converts img and reassembles the filesystem image into a
// file, verifying every chunk on the way.
func convertImage(t *testing.T, img v1.Image, opts ...imagefmt.Option) (*imagefmt.Result, string) {
	t.Helper()
	opts = append([]imagefmt.Option{imagefmt.WithTempDir(t.TempDir())}, opts...)
	res, err := imagefmt.Convert(context.Background(), img, opts...)
	if err != nil {
		t.Fatalf("convert: %v", err)
	}
	t.Cleanup(func() { res.Close() })
	out := filepath.Join(t.TempDir(), "image.fs")
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := res.WriteImage(f); err != nil {
		t.Fatalf("reassemble: %v", err)
	}
	return res, out
}

func openErofs(t *testing.T, p string) testutil.Tree {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	return testutil.SnapshotErofs(t, f)
}

// TestFlattenRules checks each flattening rule on the pure-Go reader's view
// of the converted erofs image; TestRoundTripUmoci compares whole trees.
func TestFlattenRules(t *testing.T) {
	for _, docker := range []bool{false, true} {
		name := map[bool]string{false: "oci", true: "docker"}[docker]
		t.Run(name, func(t *testing.T) {
			img := testutil.Image(t, docker, testutil.CaseLayers(t, docker, !docker)...)
			_, p := convertImage(t, img)
			tree := openErofs(t, p)
			checks := []struct {
				name string
				ok   bool
			}{
				{"opaque dir hides lower children", !has(tree, "opq/old1") && !has(tree, "opq/old2") && has(tree, "opq/new")},
				{"whiteout removes a dir", !has(tree, "gone") && !has(tree, "gone/x")},
				{"whiteout then recreate", tree["whited"].Size == 4},
				{"dir -> file -> dir", tree["d2f"].Type == "dir" && has(tree, "d2f/again") && !has(tree, "d2f/child")},
				{"file -> dir", tree["f2d"].Type == "dir" && tree["f2d"].Mode == 0o711 && has(tree, "f2d/inside")},
				{"hardlink group within and across layers", tree["usr/bin/a"].Hardlinks == "cross,usr/bin/a,usr/bin/b,usr/bin/c"},
				{"link keeps replaced target's content", tree["hl-later"].Size == int64(len("original target")) && tree["hl-later"].Hardlinks == "" && tree["old/target"].Size == int64(len("replaced target"))},
				{"setuid", tree["usr/bin/su"].Mode == 0o4711},
				{"setgid", tree["usr/bin/wall"].Mode == 0o2755 && tree["usr/bin/wall"].GID == 5},
				{"sticky", tree["tmp"].Mode == 0o1777},
				{"large ids", tree["bigid"].UID == 100000000 && tree["bigid"].GID == 200000000},
				{"nanosecond mtime", tree["etc/passwd"].MtimeNs == testutil.T.UnixNano()},
				{"security.capability", len(tree["usr/bin/ping"].Xattrs["security.capability"]) == 20 && tree["usr/bin/ping"].Xattrs["user.comment"] == "hello"},
				{"dir xattr", tree["xdir"].Xattrs["trusted.note"] == "dir xattr"},
				{"symlinks", tree["abs"].Target == "/etc/passwd" && tree["usr/rel"].Target == "../etc/passwd" && tree["dangling"].Target == "/nope/nowhere"},
				{"devices", tree["dev/null"].Rdev == "1:3" && tree["dev/sda"].Type == "block" && tree["dev/big"].Rdev == "300:70000" && tree["fifo"].Type == "fifo"},
				{"PAX long name", has(tree, "long/"+strings.Repeat("n", 200)) && has(tree, strings.Repeat("d/", 60)+"deepfile")},
				{"empty file", tree["empty"].Type == "file" && tree["empty"].Size == 0},
				{"zero runs", tree["zeros"].Size == 3<<20+4 && tree["mixed"].Size == 6<<20+4},
			}
			for _, c := range checks {
				if !c.ok {
					t.Errorf("%s: rule broken", c.name)
				}
			}
			if t.Failed() {
				for p, m := range tree {
					t.Logf("%s: %s", p, m)
				}
			}
		})
	}
}

func has(tree testutil.Tree, p string) bool { _, ok := tree[p]; return ok }
