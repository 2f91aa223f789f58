package imagefmt

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestTraceDecode(t *testing.T) {
	x := &Index{ChunkSize: MinChunkSize, Chunks: make([]Chunk, 10)}
	h := sha256Hash([]byte("index"))
	files := []TraceFile{{Path: "/usr/lib/libx.so", Ranges: []Range{{0, 4096}, {1 << 20, 8192}}}, {Path: "/app/main.py", Ranges: []Range{{0, 300}}}}
	tr := NewTrace(h, x, []int{3, 1, 9}, files)
	b, err := tr.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeTrace(b)
	if err != nil || got.Index != h || !slices.Equal(got.Chunks, []int{3, 1, 9}) || got.Check(h, x) != nil ||
		!slices.Equal(got.StartupOrder(), []string{"/usr/lib/libx.so", "/app/main.py"}) || got.Files[0].Ranges[1].Len != 8192 {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	v1Trace := `{"version":1,"index":"` + h.String() + `","chunkSize":65536,"chunks":[2]}`
	if got, err := DecodeTrace([]byte(v1Trace)); err != nil || len(got.Files) != 0 {
		t.Errorf("a version 1 trace (chunks only): %+v, %v", got, err)
	}
	if err := got.Check(sha256Hash([]byte("other")), x); !errors.Is(err, ErrTraceMismatch) {
		t.Errorf("another index: %v", err)
	}
	if err := got.Check(h, &Index{ChunkSize: MinChunkSize, Chunks: make([]Chunk, 5)}); !errors.Is(err, ErrTraceMismatch) {
		t.Errorf("chunk beyond the image: %v", err)
	}
	idx := `"index":"` + h.String() + `"`
	for _, c := range []struct{ blob, want string }{
		{`{"version":3,` + idx + `,"chunkSize":65536,"chunks":[]}`, "version"},
		{`{"version":2,` + idx + `,"chunkSize":65536,"chunks":[],"files":[{"path":"rel","ranges":[{"off":0,"len":1}]}]}`, "absolute"},
		{`{"version":2,` + idx + `,"chunkSize":65536,"chunks":[],"files":[{"path":"/a","ranges":[{"off":-1,"len":1}]}]}`, "range"},
		{`{"version":1,"index":"md5:abc","chunkSize":65536,"chunks":[]}`, "hash"},
		{`{"version":1,` + idx + `,"chunkSize":1000,"chunks":[]}`, "chunk size"},
		{`{"version":1,` + idx + `,"chunkSize":65536,"chunks":[1,2,1]}`, "twice"},
		{`{"version":1,` + idx + `,"chunkSize":65536,"chunks":[-1]}`, "negative"},
		{`not json`, "trace"},
	} {
		if _, err := DecodeTrace([]byte(c.blob)); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want an error about %s", c.blob, err, c.want)
		}
	}
	if _, err := DecodeTrace(make([]byte, MaxTraceSize+1)); err == nil {
		t.Error("an oversized trace decoded")
	}
}
