package imagefmt

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sync/atomic"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sync/errgroup"
)

// Compression selects how chunks are stored.
type Compression string

const (
	// CompressionAuto stores a chunk as zstd only when that saves at least
	// autoSavings of it: model weights and other high-entropy data stay raw,
	// so serving them costs one copy and no CPU.
	CompressionAuto Compression = "auto"
	CompressionZstd Compression = "zstd"
	CompressionNone Compression = "none"
)

const autoSavings = 0.10

// ParseCompression validates a --compression value.
func ParseCompression(s string) (Compression, error) {
	switch c := Compression(s); c {
	case CompressionAuto, CompressionZstd, CompressionNone:
		return c, nil
	}
	return "", fmt.Errorf("imagefmt: unknown compression %q (want auto, zstd or none)", s)
}

// chunker receives a filesystem image as a byte stream and turns it into
// chunks: hashed and compressed in parallel, appended to their blob in
// order, identical chunks of a blob stored once, all-zero chunks stored
// not at all.
//
// The stream is cut into regions at chunk boundaries (startRegion), each
// stored in a blob of its own in dir: a region's blob depends on the
// region's bytes alone, so two images with a region in common share its
// blob. Chunk 0 goes to the last region's blob.
//
// It is an io.WriteSeeker because filesystem writers stream their data and
// then seek back once to write the superblock. Chunk 0 is therefore held in
// memory until finish, and a seek may only go back into chunk 0.
type chunker struct {
	chunkSize int
	pieceSize int // 0: no pieces
	comp      Compression
	dir       string // where blobs are written

	pos, size int64
	written   *atomic.Int64 // size, for progress; may be nil
	head      []byte        // chunk 0, held until finish
	cur       []byte        // the chunk being filled (index curIdx)
	curIdx    int
	region    int // the region chunks are submitted to
	starts    []int

	work  chan *chunkJob
	order chan *chunkJob
	free  chan []byte
	g     *errgroup.Group
	ctx   context.Context

	closed bool // finish or close ran: the goroutines are gone

	// Written only by the ordering goroutine; read after g.Wait.
	chunks []Chunk
	blobs  []*blobFile // by region; nil for a region that stored nothing
}

// blobFile is the blob one region's chunks are stored in.
type blobFile struct {
	path string
	f    *os.File
	hash hash.Hash
	size uint64
	seen map[[32]byte]Chunk
}

type chunkJob struct {
	idx    int
	region int
	buf    []byte // nil: a hole that was never materialised (writeZeros)
	done   chan struct{}
	c      Chunk
	out    []byte // stored bytes (buf itself when raw)
}

func newChunker(ctx context.Context, dir string, chunkSize, pieceSize int, comp Compression) *chunker {
	workers := runtime.GOMAXPROCS(0)
	inflight := 2 * workers
	g, ctx := errgroup.WithContext(ctx)
	k := &chunker{
		chunkSize: chunkSize, pieceSize: pieceSize, comp: comp, dir: dir, starts: []int{0},
		work: make(chan *chunkJob, inflight), order: make(chan *chunkJob, inflight),
		free: make(chan []byte, inflight+2), g: g, ctx: ctx,
	}
	for range workers {
		g.Go(k.encodeLoop)
	}
	g.Go(k.writeLoop)
	return k
}

// startRegion begins a new region at the current position, which must be
// a chunk boundary past chunk 0.
func (k *chunker) startRegion() error {
	if k.pos != k.size || k.size%int64(k.chunkSize) != 0 || k.size == 0 {
		return fmt.Errorf("imagefmt: region start at %d is not a chunk boundary after chunk 0", k.size)
	}
	k.region++
	k.starts = append(k.starts, k.curIdx)
	return nil
}

// writeZeros appends n zero bytes; whole chunks of them become holes
// without being hashed or even allocated.
func (k *chunker) writeZeros(n int64) error {
	for n > 0 {
		if len(k.cur) == 0 && k.curIdx > 0 && n >= int64(k.chunkSize) && k.pos == k.size {
			if err := k.submit(k.curIdx, nil); err != nil {
				return err
			}
			k.curIdx++
			k.advance(int64(k.chunkSize))
			n -= int64(k.chunkSize)
			continue
		}
		m := min(n, int64(len(zeros)))
		if _, err := k.Write(zeros[:m]); err != nil {
			return err
		}
		n -= m
	}
	return nil
}

func (k *chunker) advance(n int64) {
	k.pos += n
	k.size = k.pos
	if k.written != nil {
		k.written.Store(k.size)
	}
}

func (k *chunker) buffer() []byte {
	select {
	case b := <-k.free:
		return b[:0]
	default:
		return make([]byte, 0, k.chunkSize)
	}
}

// Write appends at the current position, or patches chunk 0 after a seek.
func (k *chunker) Write(p []byte) (int, error) {
	if k.pos < k.size {
		held := k.head
		if k.curIdx == 0 {
			held = k.cur
		}
		if k.pos+int64(len(p)) > int64(len(held)) {
			return 0, fmt.Errorf("imagefmt: rewrite at %d+%d outside the held first chunk", k.pos, len(p))
		}
		copy(held[k.pos:], p)
		k.pos += int64(len(p))
		return len(p), nil
	}
	n := 0
	for len(p) > 0 {
		if k.cur == nil {
			k.cur = k.buffer()
		}
		m := min(len(p), k.chunkSize-len(k.cur))
		k.cur = append(k.cur, p[:m]...)
		p, n = p[m:], n+m
		k.advance(int64(m))
		if len(k.cur) == k.chunkSize {
			if err := k.emit(); err != nil {
				return n, err
			}
		}
	}
	return n, nil
}

func (k *chunker) Seek(off int64, whence int) (int64, error) {
	switch whence {
	case io.SeekCurrent:
		off += k.pos
	case io.SeekEnd:
		off += k.size
	}
	if off < 0 || off > k.size {
		return k.pos, fmt.Errorf("imagefmt: seek to %d outside [0,%d]", off, k.size)
	}
	if off < k.size && off >= int64(k.chunkSize) {
		return k.pos, fmt.Errorf("imagefmt: seek to %d: only the first chunk can be rewritten", off)
	}
	k.pos = off
	return off, nil
}

// emit hands the filled current chunk to the encoders, holding chunk 0.
func (k *chunker) emit() error {
	buf, idx := k.cur, k.curIdx
	k.cur, k.curIdx = nil, k.curIdx+1
	if idx == 0 {
		k.head = buf
		return nil
	}
	return k.submit(idx, buf)
}

func (k *chunker) submit(idx int, buf []byte) error {
	j := &chunkJob{idx: idx, region: k.region, buf: buf, done: make(chan struct{})}
	select {
	case k.order <- j:
	case <-k.ctx.Done():
		return k.abort()
	}
	select {
	case k.work <- j:
		return nil
	case <-k.ctx.Done():
		return k.abort()
	}
}

func (k *chunker) abort() error {
	if err := k.g.Wait(); err != nil {
		return err
	}
	return k.ctx.Err()
}

// finish flushes the last chunk and chunk 0, waits for every encoder and
// returns the chunks in order, the first chunk of each region, and each
// region's blob (nil for a region that stored nothing).
func (k *chunker) finish() ([]Chunk, []int, []*blobFile, error) {
	var err error
	k.closed = true
	if len(k.cur) > 0 {
		err = k.emit()
	}
	if err == nil && k.head != nil {
		err = k.submit(0, k.head)
	}
	close(k.work)
	close(k.order)
	err = errors.Join(err, k.g.Wait(), k.closeBlobs())
	if err != nil {
		return nil, nil, nil, err
	}
	for len(k.blobs) <= k.region {
		k.blobs = append(k.blobs, nil)
	}
	return k.chunks, k.starts, k.blobs, nil
}

// closeBlobs closes the blob files (the caller removes the directory).
func (k *chunker) closeBlobs() error {
	var errs []error
	for _, b := range k.blobs {
		if b != nil && b.f != nil {
			errs = append(errs, b.f.Close())
			b.f = nil
		}
	}
	return errors.Join(errs...)
}

// close releases the goroutines after a failure elsewhere.
func (k *chunker) close() {
	if k.closed {
		return
	}
	k.closed = true
	close(k.work)
	close(k.order)
	_ = k.g.Wait()
	_ = k.closeBlobs()
}

func (k *chunker) encodeLoop() error {
	var enc *zstd.Encoder
	defer func() {
		if enc != nil {
			enc.Close()
		}
	}()
	for j := range k.work {
		if j.buf == nil || isZero(j.buf) {
			j.c.Encoding = EncodingHole
			close(j.done)
			continue
		}
		j.c.Digest = sha256.Sum256(j.buf)
		j.c.Encoding, j.out = EncodingRaw, j.buf
		pieces := k.pieces(j.buf)
		if k.comp != CompressionNone {
			if enc == nil {
				var err error
				// No zstd checksum: the chunk's sha256 covers it.
				if enc, err = zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1), zstd.WithEncoderCRC(false)); err != nil {
					return err
				}
			}
			// One frame per piece (the whole chunk when there are no
			// pieces): a piece then decodes alone.
			var z []byte
			frames := make([]uint32, 0, len(pieces))
			for start := 0; start < len(j.buf); start += k.pieceLen() {
				n := len(z)
				z = enc.EncodeAll(j.buf[start:min(start+k.pieceLen(), len(j.buf))], z)
				frames = append(frames, uint32(len(z)-n))
			}
			if k.comp == CompressionZstd || float64(len(z)) <= (1-autoSavings)*float64(len(j.buf)) {
				j.c.Encoding, j.out = EncodingZstd, z
				for i := range pieces {
					pieces[i].Length = frames[i]
				}
			}
		}
		j.c.Pieces = pieces
		close(j.done)
	}
	return nil
}

// writeLoop appends encoded chunks to their region's blob in submission
// order.
func (k *chunker) writeLoop() error {
	for j := range k.order {
		select {
		case <-j.done:
		case <-k.ctx.Done():
			return k.ctx.Err()
		}
		for len(k.chunks) <= j.idx {
			k.chunks = append(k.chunks, Chunk{Blob: NoBlob})
		}
		if j.c.Encoding != EncodingHole {
			if err := k.store(j); err != nil {
				return err
			}
		} else {
			j.c.Blob = NoBlob
		}
		k.chunks[j.idx] = j.c
		if j.buf != nil {
			select {
			case k.free <- j.buf:
			default:
			}
		}
	}
	return nil
}

// store appends j's bytes to its region's blob, unless the blob holds
// them already.
func (k *chunker) store(j *chunkJob) error {
	for len(k.blobs) <= j.region {
		k.blobs = append(k.blobs, nil)
	}
	b := k.blobs[j.region]
	if b == nil {
		p := filepath.Join(k.dir, fmt.Sprintf("blob-%d", j.region))
		f, err := os.Create(p)
		if err != nil {
			return fmt.Errorf("imagefmt: create blob: %w", err)
		}
		b = &blobFile{path: p, f: f, hash: sha256.New(), seen: map[[32]byte]Chunk{}}
		k.blobs[j.region] = b
	}
	if prev, ok := b.seen[j.c.Digest]; ok {
		j.c = prev
		return nil
	}
	j.c.Blob, j.c.Offset, j.c.Length = j.region, b.size, uint32(len(j.out))
	if _, err := b.f.Write(j.out); err != nil {
		return fmt.Errorf("imagefmt: write blob: %w", err)
	}
	b.hash.Write(j.out)
	b.size += uint64(len(j.out))
	b.seen[j.c.Digest] = j.c
	return nil
}

// zeros is what isZero compares against.
var zeros [64 << 10]byte

// isZero reports whether b is all zeros. bytes.Equal runs in assembly at
// memory speed; a loop over the bytes took a third of converting a sparse
// 5 GiB file, and minutes of it under the race detector.
func isZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zeros))
		if !bytes.Equal(b[:n], zeros[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}

// pieceLen is how much content one zstd frame holds: a piece, or the
// whole chunk without pieces.
func (k *chunker) pieceLen() int {
	if k.pieceSize == 0 {
		return k.chunkSize
	}
	return k.pieceSize
}

// pieces returns buf's pieces with their digests and raw lengths; nil
// without pieces.
func (k *chunker) pieces(buf []byte) []Piece {
	if k.pieceSize == 0 {
		return nil
	}
	out := make([]Piece, 0, (len(buf)+k.pieceSize-1)/k.pieceSize)
	for start := 0; start < len(buf); start += k.pieceSize {
		p := buf[start:min(start+k.pieceSize, len(buf))]
		out = append(out, Piece{Digest: sha256.Sum256(p), Length: uint32(len(p))})
	}
	return out
}
