package imagefmt

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"reflect"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/klauspost/compress/zstd"
)

var sampleBlob = v1.Hash{Algorithm: "sha256", Hex: "4f2a3e0c1e4e5b2c7d9a6b3f0e1d2c3b4a5f6e7d8c9b0a1f2e3d4c5b6a7f8e9d"}

// sampleIndex is a version 1 index: one blob, one region.
func sampleIndex() *Index {
	return &Index{
		Version: IndexVersion1, FS: FSErofs, ChunkSize: MinChunkSize, ImageSize: 3*MinChunkSize - 4096,
		Blobs:   []Blob{{Digest: sampleBlob, Size: MinChunkSize + 100}},
		Regions: []Region{{Kind: RegionImage, Count: 3}},
		Chunks: []Chunk{
			{Digest: sha256.Sum256([]byte("a")), Offset: 0, Length: MinChunkSize, Encoding: EncodingRaw},
			{Encoding: EncodingHole, Blob: NoBlob},
			{Digest: sha256.Sum256([]byte("b")), Offset: MinChunkSize, Length: 100, Encoding: EncodingZstd},
		},
	}
}

// sampleIndexV2 is a version 2 index: a head, two layer regions (one
// storing nothing), the metadata in the head's blob.
func sampleIndexV2() *Index {
	layer := v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("ab", 32)}
	meta := v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("cd", 32)}
	return &Index{
		Version: IndexVersion2, FS: FSErofs, ChunkSize: MinChunkSize, ImageSize: 5*MinChunkSize - 4096,
		Blobs: []Blob{{Digest: sampleBlob, Size: MinChunkSize}, {Digest: meta, Size: 200}},
		Regions: []Region{{Kind: RegionHead, First: 0, Count: 1, Blob: 1},
			{Kind: RegionLayer, Layer: layer, First: 1, Count: 2, Blob: 0},
			{Kind: RegionLayer, Layer: meta, First: 3, Count: 1, Blob: NoBlob},
			{Kind: RegionMeta, First: 4, Count: 1, Blob: 1}},
		Chunks: []Chunk{
			{Digest: sha256.Sum256([]byte("sb")), Blob: 1, Offset: 100, Length: 100, Encoding: EncodingZstd},
			{Digest: sha256.Sum256([]byte("a")), Blob: 0, Offset: 0, Length: MinChunkSize, Encoding: EncodingRaw},
			{Encoding: EncodingHole, Blob: NoBlob},
			{Encoding: EncodingHole, Blob: NoBlob},
			{Digest: sha256.Sum256([]byte("m")), Blob: 1, Offset: 0, Length: 100, Encoding: EncodingZstd},
		},
	}
}

func TestIndexRoundTrip(t *testing.T) {
	for _, x := range []*Index{sampleIndex(), sampleIndexV2()} {
		b, err := x.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		want := indexHeaderSize + 5*chunkRecordSize
		if x.Version == IndexVersion1 {
			want = indexHeaderSize + 3*chunkRecordSize
		} else {
			want = headerSizeV2 + 2*blobRecordSize + 4*regionRecSize + 5*chunkRecordSize
		}
		if len(b) != want {
			t.Errorf("version %d: encoded %d bytes, want %d", x.Version, len(b), want)
		}
		y, err := DecodeIndex(b)
		if err != nil {
			t.Fatal(err)
		}
		b2, _ := y.MarshalBinary()
		if !bytes.Equal(b, b2) || !reflect.DeepEqual(x, y) {
			t.Errorf("version %d: round trip changed the index:\n%+v\n%+v", x.Version, x, y)
		}
	}
}

func TestDecodeIndexRejects(t *testing.T) {
	good, _ := sampleIndex().MarshalBinary()
	mutate := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	good2, _ := sampleIndexV2().MarshalBinary()
	mutate2 := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), good2...)) }
	regions := headerSizeV2 + 2*blobRecordSize
	chunks := regions + 4*regionRecSize
	cases := []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"bad magic", mutate(func(b []byte) []byte { b[0] = 'X'; return b })},
		{"future version", mutate(func(b []byte) []byte { b[8] = 3; return b })},
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
		{"v2 truncated", good2[:len(good2)-1]},
		{"v2 reserved header", mutate2(func(b []byte) []byte { b[40] = 1; return b })},
		{"v2 region gap", mutate2(func(b []byte) []byte { b[regions+regionRecSize+4] = 2; return b })},
		{"v2 region past the end", mutate2(func(b []byte) []byte { b[regions+3*regionRecSize+8] = 2; return b })},
		{"v2 unknown blob", mutate2(func(b []byte) []byte { b[regions+regionRecSize+2] = 7; return b })},
		{"v2 unknown kind", mutate2(func(b []byte) []byte { b[regions] = 9; return b })},
		{"v2 stored chunk in a region without blob", mutate2(func(b []byte) []byte {
			b[regions+regionRecSize+2], b[regions+regionRecSize+3] = 0xff, 0xff
			return b
		})},
		{"v2 chunk beyond its blob", mutate2(func(b []byte) []byte { b[chunks+4*chunkRecordSize+32] = 150; return b })},
		{"v2 layer named on a metadata region", mutate2(func(b []byte) []byte { b[regions+3*regionRecSize+20] = 1; return b })},
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
	good2, _ := sampleIndexV2().MarshalBinary()
	f.Add(good)
	f.Add(good2)
	f.Add(good[:indexHeaderSize])
	f.Add([]byte(indexMagic))
	f.Fuzz(func(t *testing.T, b []byte) {
		x, err := DecodeIndex(b)
		if err != nil {
			return
		}
		if len(x.Chunks)*chunkRecordSize > len(b) || len(x.Blobs)*blobRecordSize > len(b) || len(x.Regions)*regionRecSize > len(b) {
			t.Fatalf("decoded %d chunks, %d blobs, %d regions from %d bytes", len(x.Chunks), len(x.Blobs), len(x.Regions), len(b))
		}
		again, err := x.MarshalBinary()
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("accepted index does not re-encode identically: %v", err)
		}
	})
}
