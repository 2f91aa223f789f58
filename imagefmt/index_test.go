package imagefmt

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/klauspost/compress/zstd"
)

func sampleIndex() *Index {
	data := v1.Hash{Algorithm: "sha256", Hex: "4f2a3e0c1e4e5b2c7d9a6b3f0e1d2c3b4a5f6e7d8c9b0a1f2e3d4c5b6a7f8e9d"}
	return &Index{
		FS: FSErofs, ChunkSize: MinChunkSize, ImageSize: 3*MinChunkSize - 4096, Data: data, DataSize: MinChunkSize + 100,
		Chunks: []Chunk{
			{Digest: sha256.Sum256([]byte("a")), Offset: 0, Length: MinChunkSize, Encoding: EncodingRaw},
			{Encoding: EncodingHole},
			{Digest: sha256.Sum256([]byte("b")), Offset: MinChunkSize, Length: 100, Encoding: EncodingZstd},
		},
	}
}

func TestIndexRoundTrip(t *testing.T) {
	x := sampleIndex()
	b, err := x.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != indexHeaderSize+3*chunkRecordSize {
		t.Errorf("encoded %d bytes", len(b))
	}
	y, err := DecodeIndex(b)
	if err != nil {
		t.Fatal(err)
	}
	b2, _ := y.MarshalBinary()
	if !bytes.Equal(b, b2) || y.Data != x.Data || y.ChunkLen(2) != MinChunkSize-4096 {
		t.Errorf("round trip changed the index: %+v", y)
	}
}

func TestDecodeIndexRejects(t *testing.T) {
	good, _ := sampleIndex().MarshalBinary()
	mutate := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	cases := []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"bad magic", mutate(func(b []byte) []byte { b[0] = 'X'; return b })},
		{"future version", mutate(func(b []byte) []byte { b[8] = 2; return b })},
		{"unknown fs", mutate(func(b []byte) []byte { b[10] = 9; return b })},
		{"chunk size too small", mutate(func(b []byte) []byte { b[11] = 12; return b })},
		{"truncated records", good[:len(good)-1]},
		{"chunk count lies", mutate(func(b []byte) []byte { b[64] = 0xff; b[67] = 0xff; return b })},
		{"image size needs more chunks", mutate(func(b []byte) []byte { b[20] = 1; return b })},
		{"chunk beyond data blob", mutate(func(b []byte) []byte { b[indexHeaderSize+2*chunkRecordSize+39] = 1; return b })},
		{"raw length wrong", mutate(func(b []byte) []byte { b[indexHeaderSize+40] = 1; return b })},
		{"hole with bytes", mutate(func(b []byte) []byte { b[indexHeaderSize+chunkRecordSize+40] = 1; return b })},
		{"unknown encoding", mutate(func(b []byte) []byte { b[indexHeaderSize+44] = 7; return b })},
		{"reserved set", mutate(func(b []byte) []byte { b[indexHeaderSize+45] = 1; return b })},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if _, err := DecodeIndex(c.b); !errors.Is(err, ErrInvalidIndex) {
				t.Errorf("got %v, want ErrInvalidIndex", err)
			}
		})
	}
}

func TestDecodeChunkDetectsCorruption(t *testing.T) {
	content := bytes.Repeat([]byte("lazyblk "), MinChunkSize/8)
	x := &Index{FS: FSErofs, ChunkSize: MinChunkSize, ImageSize: MinChunkSize,
		Chunks: []Chunk{{Digest: sha256.Sum256(content), Length: MinChunkSize, Encoding: EncodingRaw}}}
	dst := make([]byte, MinChunkSize)
	if err := x.DecodeChunk(0, content, dst); err != nil || !bytes.Equal(dst, content) {
		t.Fatalf("good chunk: %v", err)
	}
	bad := append([]byte(nil), content...)
	bad[12345] ^= 1
	if err := x.DecodeChunk(0, bad, dst); !errors.Is(err, ErrChunkCorrupt) {
		t.Errorf("flipped byte: got %v, want ErrChunkCorrupt", err)
	}
}

// TestDecodeChunkTrustsOnlySHA256: a zstd frame's own checksum (images
// converted before the converter stopped writing it) is not checked — a
// wrong one does not fail a chunk whose content matches its digest — and
// a frame that decodes to other bytes still fails on the digest.
func TestDecodeChunkTrustsOnlySHA256(t *testing.T) {
	content := bytes.Repeat([]byte("lazyblk "), MinChunkSize/8)
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderCRC(true))
	if err != nil {
		t.Fatal(err)
	}
	z := enc.EncodeAll(content, nil)
	z[len(z)-1] ^= 0xff // the frame's xxhash64 checksum: its last 4 bytes
	x := &Index{FS: FSErofs, ChunkSize: MinChunkSize, ImageSize: MinChunkSize,
		Chunks: []Chunk{{Digest: sha256.Sum256(content), Length: uint32(len(z)), Encoding: EncodingZstd}}}
	dst := make([]byte, MinChunkSize)
	if err := x.DecodeChunk(0, z, dst); err != nil || !bytes.Equal(dst, content) {
		t.Fatalf("wrong frame checksum, right content: %v", err)
	}
	other := bytes.Repeat([]byte("lazyblX "), MinChunkSize/8)
	zo := enc.EncodeAll(other, nil)
	x.Chunks[0].Length = uint32(len(zo))
	if err := x.DecodeChunk(0, zo, dst); !errors.Is(err, ErrChunkCorrupt) {
		t.Errorf("a frame of other content: got %v, want ErrChunkCorrupt", err)
	}
}

// FuzzDecodeIndex: malformed indexes give errors, never panics, and never
// allocate beyond what the input's length implies.
func FuzzDecodeIndex(f *testing.F) {
	good, _ := sampleIndex().MarshalBinary()
	f.Add(good)
	f.Add(good[:indexHeaderSize])
	f.Add([]byte(indexMagic))
	f.Fuzz(func(t *testing.T, b []byte) {
		x, err := DecodeIndex(b)
		if err != nil {
			return
		}
		if len(x.Chunks)*chunkRecordSize+indexHeaderSize != len(b) {
			t.Fatalf("decoded %d chunks from %d bytes", len(x.Chunks), len(b))
		}
		again, err := x.MarshalBinary()
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("accepted index does not re-encode identically: %v", err)
		}
	})
}
