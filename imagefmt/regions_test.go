package imagefmt_test

import (
	"bytes"
	"io"
	"runtime"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/lazyblk/lazyblk/imagefmt"
	"github.com/lazyblk/lazyblk/internal/testutil"
)

// versionSizes keeps the versions small enough for a unit test and the
// chunks small enough that each layer spans several.
var versionSizes = testutil.VersionSizes{BaseFiles: 300, Library: 3 << 20, Modules: 80, Weights: 4 << 20}

const testChunk = 256 << 10

// blobBytes returns every data blob of a conversion, by digest.
func blobBytes(t *testing.T, res *imagefmt.Result) map[v1.Hash][]byte {
	t.Helper()
	out := map[v1.Hash][]byte{}
	for _, b := range res.Index.Blobs {
		f, err := res.OpenBlob(b.Digest)
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		out[b.Digest] = data
	}
	return out
}

// TestConvertDeterministic: the same layers converted twice — other temp
// directories, one core against four (other goroutine schedules for the
// parallel chunk encoders) — give a byte-identical index and blobs.
func TestConvertDeterministic(t *testing.T) {
	v := testutil.MakeVersions(t, versionSizes)
	var runs []*imagefmt.Result
	for _, procs := range []int{1, 4} {
		prev := runtime.GOMAXPROCS(procs)
		res, _ := convertImage(t, v.B, imagefmt.WithChunkSize(testChunk))
		runtime.GOMAXPROCS(prev)
		runs = append(runs, res)
	}
	if !bytes.Equal(runs[0].IndexBlob, runs[1].IndexBlob) {
		t.Fatalf("two conversions of the same layers wrote different indexes (%s, %s)", runs[0].IndexDigest, runs[1].IndexDigest)
	}
	a, b := blobBytes(t, runs[0]), blobBytes(t, runs[1])
	for d, data := range a {
		if !bytes.Equal(data, b[d]) {
			t.Errorf("blob %s differs between the two conversions", d)
		}
	}
	if len(a) < 4 {
		t.Errorf("%d blobs for an image of 4 layers: want one per layer region and one for the metadata", len(a))
	}
}

// TestLayerRegionsShared: versions of an image keep the blobs of the
// layers they did not change — B (a new top layer) and D (new weights)
// every lower layer's, C (a few small files of the packages layer
// changed) the base's and the weights' — and their trees are exact.
func TestLayerRegionsShared(t *testing.T) {
	v := testutil.MakeVersions(t, versionSizes)
	resA, _ := convertImage(t, v.A, imagefmt.WithChunkSize(testChunk))
	layerBlobs := func(x *imagefmt.Index) []string {
		var out []string
		for _, g := range x.Regions {
			if g.Kind == imagefmt.RegionLayer {
				d := "none"
				if g.Blob != imagefmt.NoBlob {
					d = x.Blobs[g.Blob].Digest.String()
				}
				out = append(out, d)
			}
		}
		return out
	}
	a := layerBlobs(resA.Index)
	for _, c := range []struct {
		name string
		img  v1.Image
		same []bool // per layer of A: the same blob
	}{
		{"B", v.B, []bool{true, true, true}},
		{"C", v.C, []bool{true, false, true}},
		{"D", v.D, []bool{true, true, false}},
	} {
		t.Run(c.name, func(t *testing.T) {
			res, p := convertImage(t, c.img, imagefmt.WithChunkSize(testChunk))
			got := layerBlobs(res.Index)
			for i, same := range c.same {
				if (got[i] == a[i]) != same {
					t.Errorf("layer %d: blob %s, A's %s; want the same: %v", i, got[i], a[i], same)
				}
			}
			testutil.Require(t, true, "umoci") // the kernel mounts it; umoci unpacks the reference
			want := testutil.Umoci(t, testutil.WriteLayout(t, c.img, "v"), "v")
			for _, d := range testutil.Diff(want, testutil.SnapshotDir(t, testutil.Mount(t, p, "erofs"))) {
				t.Errorf("%s: %s", c.name, d)
			}
		})
	}
}
