package imagefmt_test

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	erofs "github.com/erofs/go-erofs"

	"github.com/lazyblk/lazyblk/imagefmt"
	"github.com/lazyblk/lazyblk/internal/testutil"
)

// TestSparseMultiGiB: a 5 GiB file that is zeros but for three segments
// converts into holes — stored bytes stay tiny — and reads back exactly.
func TestSparseMultiGiB(t *testing.T) {
	const size = 5 << 30
	segments := map[int64][]byte{
		0:             []byte("head"),
		3<<30 + 12345: []byte("middle"),
		size - 4:      []byte("tail"),
	}
	layer := testutil.Layer(t, []testutil.Entry{testutil.SparseEntry(t, "models/sparse.bin", size, segments)}, testutil.Gzip, false)
	res, p := convertImage(t, testutil.Image(t, false, layer), imagefmt.WithoutFallback())

	st := res.Index.Stats()
	if st.Holes < st.Chunks-8 || res.Index.StoredSize() > 1<<20 {
		t.Errorf("5 GiB sparse file: %d of %d chunks are holes, %d bytes stored", st.Holes, st.Chunks, res.Index.StoredSize())
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fsys, err := erofs.Open(f)
	if err != nil {
		t.Fatal(err)
	}
	info, err := fs.Stat(fsys, "models/sparse.bin")
	if err != nil {
		t.Fatal(err)
	}
	if info.Size() != size {
		t.Fatalf("size %d, want %d", info.Size(), size)
	}
	if os.Geteuid() != 0 {
		t.Log("content check needs root (kernel mount); CI runs it")
		return
	}
	mnt := testutil.Mount(t, p, "erofs")
	g, err := os.Open(filepath.Join(mnt, "models/sparse.bin"))
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	for off, want := range segments {
		got := make([]byte, len(want)+8)
		n, _ := g.ReadAt(got, off-4)
		if off == 0 {
			n, _ = g.ReadAt(got[4:], 0)
			n += 4
		}
		exp := append(append(make([]byte, 4), want...), make([]byte, 4)...)
		if off == size-4 {
			exp, got = exp[:8], got[:n]
		}
		if !bytes.Equal(got, exp) {
			t.Errorf("at %d: got %q want %q", off, got, exp)
		}
	}
}
