package imagefmt_test

import (
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/lazyblk/lazyblk/imagefmt"
	"github.com/lazyblk/lazyblk/internal/testutil"
)

// TestRoundTripUmoci compares whole trees: umoci's unpack of the source
// layers (an unpacker independent of lazyblk that follows containerd's
// overlay semantics) against the converted erofs image read in pure Go and
// mounted by the kernel, the ext4 image mounted by the kernel, and umoci's
// unpack of the fallback layer.
func TestRoundTripUmoci(t *testing.T) {
	testutil.Require(t, true, "umoci", "mount", "fsck.erofs", "mkfs.ext4")
	// umoci 0.4.7 reads gzip and uncompressed OCI layers; zstd layers are
	// covered by TestFlattenRules.
	img := testutil.Image(t, false, testutil.CaseLayers(t, false, false)...)
	want := testutil.Umoci(t, testutil.WriteLayout(t, img, "src"), "src")
	if len(want) < 50 {
		t.Fatalf("umoci unpacked only %d paths", len(want))
	}

	res, erofsImg := convertImage(t, img)
	testutil.Run(t, "fsck.erofs", erofsImg)
	check := func(name string, got testutil.Tree) {
		t.Helper()
		for _, d := range testutil.Diff(want, got) {
			t.Errorf("%s: %s", name, d)
		}
	}
	check("erofs via go-erofs", openErofs(t, erofsImg))
	check("erofs via kernel", testutil.SnapshotDir(t, testutil.Mount(t, erofsImg, "erofs")))

	fallback := runnable(t, res)
	check("fallback layer via umoci", testutil.Umoci(t, testutil.WriteLayout(t, fallback, "fb"), "fb"))

	_, ext4Img := convertImage(t, img, imagefmt.WithFS(imagefmt.FSExt4))
	got := testutil.SnapshotDir(t, testutil.Mount(t, ext4Img, "ext4"))
	delete(got, "lost+found") // mke2fs always creates it
	check("ext4 via kernel", got)
}

// runnable returns the manifest of a converted image that stock runtimes run.
func runnable(t *testing.T, res *imagefmt.Result) v1.Image {
	t.Helper()
	m, err := res.Image.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range m.Manifests {
		if d.ArtifactType != string(imagefmt.MediaTypeArtifact) {
			img, err := res.Image.Image(d.Digest)
			if err != nil {
				t.Fatal(err)
			}
			return img
		}
	}
	t.Fatal("no runnable manifest in converted image")
	return nil
}
