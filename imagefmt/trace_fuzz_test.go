package imagefmt

import (
	"archive/tar"
	"bytes"
	"cmp"
	"encoding/json"
	"slices"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// fuzzTree is a small tree of three files in one layer, as planLayout
// sees it (no data: only sizes matter to the plan).
func fuzzTree() *tree {
	t := newTree(nil)
	for _, f := range []struct {
		name string
		size int64
	}{{"small", 10 << 10}, {"big", 3 << 20}, {"huge", 9 << 20}} {
		ino := &inode{typ: tar.TypeReg, mode: 0o644, size: f.size}
		t.root.children[f.name] = &node{name: f.name, ino: ino}
		if len(t.files) == 0 {
			t.files = append(t.files, nil)
		}
		t.files[0] = append(t.files[0], layerFile{path: "/" + f.name, ino: ino})
	}
	return t
}

// FuzzTrace: a trace blob from a registry (a peer) decodes or is refused,
// never panics; one that decodes re-encodes to itself, is checked against
// an index without panicking, and its files order a layout (what convert
// --startup-trace does with them) that places every byte of every file
// exactly once.
func FuzzTrace(f *testing.F) {
	x := sampleIndexV2()
	h := v1.Hash{Algorithm: "sha256", Hex: "0123456789012345678901234567890123456789012345678901234567890123"}
	good, _ := NewTrace(h, x, []int{0, 2, 1}, []TraceFile{{Path: "/big", Ranges: []Range{{Off: 0, Len: 4096}, {Off: 2 << 20, Len: 65536}}},
		{Path: "/small", Ranges: []Range{{Off: 0, Len: 10 << 10}}}}).MarshalBinary()
	f.Add(good)
	f.Add([]byte(`{"version":2,"index":"sha256:0123456789012345678901234567890123456789012345678901234567890123","chunkSize":1048576,` +
		`"chunks":[1],"files":[{"path":"/huge","ranges":[{"off":9437000,"len":99999999}]},{"path":"/huge","ranges":[{"off":0,"len":1}]}]}`))
	f.Add([]byte(`{"version":1,"index":"sha256:x","chunkSize":3,"chunks":[-1,1,1]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		tr, err := DecodeTrace(b)
		if err != nil {
			return
		}
		again, err := tr.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		tr2, err := DecodeTrace(again) // "files":[] comes back as no files: compare encodings
		if err != nil {
			t.Fatalf("an accepted trace does not decode once re-encoded: %v", err)
		}
		if again2, _ := tr2.MarshalBinary(); !bytes.Equal(again, again2) {
			t.Fatalf("an accepted trace does not survive re-encoding:\n%s\n%s", again, again2)
		}
		_ = tr.Check(h, x)
		_ = tr.StartupOrder()
		if len(tr.Files) > 1000 {
			return // keeps each run quick; nothing in planLayout depends on the count
		}
		tree := fuzzTree()
		p := planLayout(tree, nil, 1<<20, tr.Files)
		for _, ch := range tree.files[0] {
			var covered int64
			next := int64(0)
			pl := append([]placement(nil), p.placed[ch.ino]...)
			slices.SortFunc(pl, func(a, b placement) int { return cmp.Compare(a.fileOff, b.fileOff) })
			for _, s := range pl {
				if s.fileOff != next || s.len <= 0 {
					t.Fatalf("%s: placements %+v do not cover the file once, in order", ch.path, pl)
				}
				next += s.len
				covered += s.len
			}
			if covered != ch.ino.size {
				js, _ := json.Marshal(tr.Files)
				t.Fatalf("%s: %d of %d bytes placed for the trace files %s", ch.path, covered, ch.ino.size, js)
			}
		}
	})
}
