package imagefmt_test

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/lazyblk/lazyblk/imagefmt"
	"github.com/lazyblk/lazyblk/internal/testutil"
)

// storedBlobs returns the converted image's data blobs by digest.
func storedBlobs(t *testing.T, res *imagefmt.Result) map[v1.Hash][]byte {
	t.Helper()
	m, err := res.Image.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	out := map[v1.Hash][]byte{}
	for _, d := range m.Manifests {
		if d.ArtifactType != string(imagefmt.MediaTypeArtifact) {
			continue
		}
		img, err := res.Image.Image(d.Digest)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range res.Index.Blobs {
			l, err := img.LayerByDigest(b.Digest)
			if err != nil {
				t.Fatal(err)
			}
			rc, err := l.Compressed()
			if err != nil {
				t.Fatal(err)
			}
			out[b.Digest], err = io.ReadAll(rc)
			rc.Close()
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	return out
}

// TestPiecesDecodeAlone: every piece of every stored chunk, raw and zstd,
// decodes and verifies on its own to the chunk's bytes at its place; a
// piece whose stored bytes are corrupt fails alone, the others still
// decode; the pieces survive the index's encoding; and WithPieceSize(0)
// writes none.
func TestPiecesDecodeAlone(t *testing.T) {
	img := testutil.Image(t, false, testutil.Layer(t, []testutil.Entry{
		testutil.File("random.bin", 0o644, string(testutil.Random(5<<20, 7))),
		testutil.File("text.txt", 0o644, strings.Repeat("compressible text, piece by piece\n", 300000)),
	}, testutil.Uncompressed, false))
	res, _ := convertImage(t, img)
	x := res.Index
	if x.PieceSize != imagefmt.DefaultPieceSize {
		t.Fatalf("piece size %d, want %d", x.PieceSize, imagefmt.DefaultPieceSize)
	}
	blobs := storedBlobs(t, res)
	seen := map[imagefmt.Encoding]int{}
	for i, c := range x.Chunks {
		if c.Encoding == imagefmt.EncodingHole {
			continue
		}
		seen[c.Encoding]++
		stored := blobs[x.Blobs[c.Blob].Digest][c.Offset : c.Offset+uint64(c.Length)]
		full := make([]byte, x.ChunkLen(i))
		if err := x.DecodeChunk(i, stored, full); err != nil {
			t.Fatalf("chunk %d (%v): %v", i, c.Encoding, err)
		}
		n := x.NumPieces(i)
		ps := int(x.PieceSize)
		for k := range n {
			got := make([]byte, min(ps, len(full)-k*ps))
			if err := x.DecodePieces(i, k, k, stored, got); err != nil || !bytes.Equal(got, full[k*ps:k*ps+len(got)]) {
				t.Fatalf("chunk %d (%v) piece %d alone: %v (equal %v)", i, c.Encoding, k, err, bytes.Equal(got, full[k*ps:k*ps+len(got)]))
			}
		}
		all := make([]byte, len(full))
		if err := x.DecodePieces(i, 0, n-1, stored, all); err != nil || !bytes.Equal(all, full) {
			t.Fatalf("chunk %d: all pieces: %v", i, err)
		}
		if n < 2 {
			continue
		}
		bad := bytes.Clone(stored)
		bad[int(c.Pieces[0].Length)+int(c.Pieces[1].Length)/2] ^= 0xff // inside piece 1
		buf := make([]byte, ps)
		if err := x.DecodePieces(i, 1, 1, bad, buf); !errors.Is(err, imagefmt.ErrChunkCorrupt) {
			t.Errorf("chunk %d (%v): corrupt piece 1 decoded: %v", i, c.Encoding, err)
		}
		if err := x.DecodePieces(i, 0, 0, bad, buf); err != nil {
			t.Errorf("chunk %d (%v): piece 0, next to a corrupt one: %v", i, c.Encoding, err)
		}
	}
	if seen[imagefmt.EncodingRaw] == 0 || seen[imagefmt.EncodingZstd] == 0 {
		t.Fatalf("stored chunks by encoding %v: want raw and zstd ones", seen)
	}
	again, err := imagefmt.DecodeIndex(res.IndexBlob)
	if err != nil || !reflect.DeepEqual(again.Chunks, x.Chunks) || again.PieceSize != x.PieceSize {
		t.Fatalf("the index's pieces do not survive encoding: %v", err)
	}

	res0, _ := convertImage(t, img, imagefmt.WithPieceSize(0))
	for i, c := range res0.Index.Chunks {
		if res0.Index.PieceSize != 0 || len(c.Pieces) != 0 {
			t.Fatalf("WithPieceSize(0): chunk %d has %d pieces, index piece size %d", i, len(c.Pieces), res0.Index.PieceSize)
		}
	}
}
