package imagefmt

import (
	"crypto/sha256"
	"errors"
	"fmt"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"io"
	"os"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// ErrChunkCorrupt reports stored chunk bytes that do not decode to the
// digest the index names.
var ErrChunkCorrupt = errors.New("imagefmt: chunk digest mismatch")

// decoder is shared: DecodeAll is safe for concurrent use, and one decoder
// with bounded concurrency keeps memory flat however many readers there are.
// It skips zstd's own checksum (an xxhash64 of the content, in images
// converted before the converter stopped writing it): the chunk's sha256
// is checked anyway, and skipping it decodes the cold-start image's root
// file system 9% faster (625 → 681 MB/s on one core).
var decoder = sync.OnceValues(func() (*zstd.Decoder, error) {
	return zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderMaxMemory(MaxChunkSize), zstd.IgnoreChecksum(true))
})

// unzstd decodes in, one or more zstd frames, into exactly dst.
func unzstd(in, dst []byte) error {
	d, err := decoder()
	if err != nil {
		return err
	}
	out, err := d.DecodeAll(in, dst[:0])
	if err != nil {
		return fmt.Errorf("zstd: %v", err)
	}
	if len(out) != len(dst) || &out[0] != &dst[0] {
		return fmt.Errorf("zstd: decoded %d bytes, want %d", len(out), len(dst))
	}
	return nil
}

// DecodeChunk turns chunk i's stored bytes into its content in dst, which
// must hold ChunkLen(i) bytes, and verifies the content's digest. No byte of
// dst may be used when it fails.
func (x *Index) DecodeChunk(i int, stored, dst []byte) error {
	c := x.Chunks[i]
	n := x.ChunkLen(i)
	if len(dst) != n {
		return fmt.Errorf("imagefmt: chunk %d: buffer of %d bytes, want %d", i, len(dst), n)
	}
	if len(stored) != int(c.Length) {
		return fmt.Errorf("%w: chunk %d: %d stored bytes, want %d", ErrChunkCorrupt, i, len(stored), c.Length)
	}
	switch c.Encoding {
	case EncodingHole:
		clear(dst)
		return nil
	case EncodingRaw:
		if &dst[0] != &stored[0] { // callers may verify raw bytes in place
			copy(dst, stored)
		}
	case EncodingZstd:
		if err := unzstd(stored, dst); err != nil {
			return fmt.Errorf("%w: chunk %d: %v", ErrChunkCorrupt, i, err)
		}
	}
	if sha256.Sum256(dst) != c.Digest {
		return fmt.Errorf("%w: chunk %d", ErrChunkCorrupt, i)
	}
	return nil
}

// WriteImage reassembles the whole filesystem image from its blobs into
// w, verifying every chunk (holes become sparse regions when w is a file).
// blob(i) reads blob i of x.Blobs.
func (x *Index) WriteImage(blob func(i int) (io.ReaderAt, error), w io.WriterAt) error {
	buf := make([]byte, x.ChunkSize)
	stored := make([]byte, 0, x.ChunkSize)
	for i, c := range x.Chunks {
		if c.Encoding == EncodingHole {
			continue
		}
		if cap(stored) < int(c.Length) {
			stored = make([]byte, 0, c.Length)
		}
		stored = stored[:c.Length]
		data, err := blob(c.Blob)
		if err != nil {
			return err
		}
		if _, err := data.ReadAt(stored, int64(c.Offset)); err != nil {
			return fmt.Errorf("imagefmt: chunk %d: read blob %s: %w", i, x.Blobs[c.Blob].Digest, err)
		}
		dst := buf[:x.ChunkLen(i)]
		if err := x.DecodeChunk(i, stored, dst); err != nil {
			return err
		}
		if _, err := w.WriteAt(dst, int64(i)*int64(x.ChunkSize)); err != nil {
			return err
		}
	}
	if f, ok := w.(interface{ Truncate(int64) error }); ok {
		return f.Truncate(int64(x.ImageSize))
	}
	return nil
}

// OpenBlob opens the converted data blob d.
func (r *Result) OpenBlob(d v1.Hash) (*os.File, error) {
	p, ok := r.blobs[d]
	if !ok {
		return nil, fmt.Errorf("imagefmt: no data blob %s in the conversion", d)
	}
	return os.Open(p)
}

// WriteImage reassembles the converted filesystem image into w, verifying
// every chunk.
func (r *Result) WriteImage(w io.WriterAt) error {
	files := make([]*os.File, len(r.Index.Blobs))
	defer func() {
		for _, f := range files {
			if f != nil {
				f.Close()
			}
		}
	}()
	return r.Index.WriteImage(func(i int) (io.ReaderAt, error) {
		if files[i] == nil {
			f, err := r.OpenBlob(r.Index.Blobs[i].Digest)
			if err != nil {
				return nil, err
			}
			files[i] = f
		}
		return files[i], nil
	}, w)
}
