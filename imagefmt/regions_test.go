package imagefmt_test

import (
	"bytes"
	"io"
	"io/fs"
	"os"
	"runtime"
	"testing"

	erofs "github.com/erofs/go-erofs"
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

// TestStartupOrderSplitsBigFiles: with a start-up order, a big file the
// start-up read a few ranges of is split — those ranges at the front of
// its region, the rest among the big files — and still reads back exactly
// through the kernel (a chunk-based erofs inode); a small start-up file
// comes right after; the tree equals umoci's.
func TestStartupOrderSplitsBigFiles(t *testing.T) {
	v := testutil.MakeVersions(t, versionSizes)
	startup := []imagefmt.TraceFile{
		{Path: "/opt/pkg/libbig.so", Ranges: []imagefmt.Range{{Off: 0, Len: 8192}, {Off: 1 << 20, Len: 100 << 10}}},
		{Path: "/opt/pkg/modules/mod0007.py", Ranges: []imagefmt.Range{{Off: 0, Len: 4096}}},
	}
	res, p := convertImage(t, v.A, imagefmt.WithChunkSize(testChunk), imagefmt.WithStartupOrder(startup))
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fsys, err := erofs.Open(f)
	if err != nil {
		t.Fatal(err)
	}
	ranges := func(path string) []erofs.DataRange {
		info, err := fs.Stat(fsys, path)
		if err != nil {
			t.Fatal(err)
		}
		return info.(interface{ DataRange() []erofs.DataRange }).DataRange()
	}
	var packages imagefmt.Region
	for _, g := range res.Index.Regions {
		if g.Kind == imagefmt.RegionLayer && g.Layer == diffID(t, v.A, 1) {
			packages = g
		}
	}
	start := int64(packages.First) * testChunk
	lib := ranges("opt/pkg/libbig.so")
	// Read: [0, 8 KiB) and [1 MiB, 1 MiB + 100 KiB), rounded out to 64 KiB
	// with one more 64 KiB after each (readahead): 128 + 192 KiB, back to
	// back at the region's start.
	if lib[0].Offset != start || len(lib) < 3 {
		t.Fatalf("libbig.so's data ranges %+v: want the pieces the start-up read first in the region (at %d), the rest apart", lib, start)
	}
	var hot int64
	for _, d := range lib {
		if d.Offset == start+hot {
			hot += d.Size
		}
	}
	if hot != 320<<10 {
		t.Errorf("%d bytes of libbig.so at the region's front, want the 320 KiB read (rounded out, one granule more)", hot)
	}
	if mod := ranges("opt/pkg/modules/mod0007.py"); mod[0].Offset != start+hot {
		t.Errorf("the next start-up file is at %d, want right after libbig.so's pieces (%d)", mod[0].Offset, start+hot)
	}
	testutil.Require(t, true, "umoci")
	want := testutil.Umoci(t, testutil.WriteLayout(t, v.A, "a"), "a")
	for _, d := range testutil.Diff(want, testutil.SnapshotDir(t, testutil.Mount(t, p, "erofs"))) {
		t.Error(d)
	}
}

func diffID(t *testing.T, img v1.Image, layer int) v1.Hash {
	t.Helper()
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	return cfg.RootFS.DiffIDs[layer]
}
