package imagefmt

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"

	"golang.org/x/sync/errgroup"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// ErrUnsupportedLayer reports a layer media type the converter cannot read.
var ErrUnsupportedLayer = errors.New("imagefmt: unsupported layer media type")

type options struct {
	fs          FSType
	chunkSize   int
	pieceSize   int // WithPieceSize
	compression Compression
	fallback    bool
	tempDir     string
	log         *slog.Logger
	progress    *Progress
	startup     []TraceFile // WithStartupOrder
}

// Progress counts a conversion's work as it goes, for a caller to show:
// read it from any goroutine while Convert runs.
type Progress struct {
	Layers     atomic.Int64 // layers in the image
	LayersDone atomic.Int64 // layers applied
	LayerBytes atomic.Int64 // uncompressed layer bytes read
	ImageBytes atomic.Int64 // filesystem image bytes chunked
}

// WithProgress counts the conversion's work into p.
func WithProgress(p *Progress) Option {
	return func(o *options) error { o.progress = p; return nil }
}

// Option configures Convert.
type Option func(*options) error

// WithFS picks the filesystem; erofs by default because it is read-only by
// design, compact, and written here without root or external tools.
func WithFS(t FSType) Option {
	return func(o *options) error {
		if t != FSErofs && t != FSExt4 {
			return fmt.Errorf("imagefmt: unknown filesystem %v", t)
		}
		o.fs = t
		return nil
	}
}

// WithChunkSize sets the chunk size (DefaultChunkSize: 4 MiB balances one
// demand miss's latency against request count for multi-GiB images).
func WithChunkSize(n int) Option {
	return func(o *options) error {
		if err := ValidChunkSize(n); err != nil {
			return err
		}
		o.chunkSize = n
		return nil
	}
}

// WithPieceSize sets the size of the pieces a reader can decode and
// verify alone (pieces.go): a power of two from MinPieceSize to the chunk
// size, DefaultPieceSize by default; 0 writes chunks without pieces.
func WithPieceSize(n int) Option {
	return func(o *options) error {
		if n != 0 && (n&(n-1) != 0 || n < MinPieceSize || n > MaxChunkSize) {
			return fmt.Errorf("imagefmt: piece size %d: want 0 or a power of two from %d", n, MinPieceSize)
		}
		o.pieceSize = n
		return nil
	}
}

// WithCompression sets chunk compression (CompressionAuto by default).
func WithCompression(c Compression) Option {
	return func(o *options) error {
		if _, err := ParseCompression(string(c)); err != nil {
			return err
		}
		o.compression = c
		return nil
	}
}

// WithoutFallback omits the squashed layer stock runtimes unpack; the image
// then runs only through lazyblk.
func WithoutFallback() Option {
	return func(o *options) error { o.fallback = false; return nil }
}

// WithTempDir places the spool and blobs (os.TempDir by default). It needs
// room for the image's uncompressed file data plus its stored chunks.
func WithTempDir(dir string) Option {
	return func(o *options) error { o.tempDir = dir; return nil }
}

// WithLogger sets the logger (discarded by default).
func WithLogger(l *slog.Logger) Option {
	return func(o *options) error { o.log = l; return nil }
}

// Result is a converted image, ready to push. Its blobs live in temporary
// files until Close.
type Result struct {
	Index       *Index
	IndexBlob   []byte
	IndexDigest v1.Hash
	// Image is what to push: an image index holding the runnable manifest
	// and the lazyblk artifact manifest (see doc.go).
	Image   v1.ImageIndex
	dir     string
	blobs   map[v1.Hash]string // the file of each data blob
	startup *startupResult     // WithStartupOrder's files, where they landed
}

// Close removes the temporary files.
func (r *Result) Close() error { return os.RemoveAll(r.dir) }

// Convert flattens src's layers into one filesystem image, chunks it and
// lays it out for a registry. On error nothing is left behind.
func Convert(ctx context.Context, src v1.Image, opts ...Option) (_ *Result, err error) {
	o := options{fs: FSErofs, chunkSize: DefaultChunkSize, pieceSize: DefaultPieceSize, compression: CompressionAuto, fallback: true,
		log: slog.New(slog.DiscardHandler)}
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, err
		}
	}
	dir, err := os.MkdirTemp(o.tempDir, "lazyblk-convert-*")
	if err != nil {
		return nil, fmt.Errorf("imagefmt: temp dir: %w", err)
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, os.RemoveAll(dir))
		}
	}()
	sp, err := newSpool(dir)
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, sp.close()) }()

	cfg, err := src.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("imagefmt: read image config: %w", err)
	}
	t := newTree(sp)
	if o.progress == nil {
		o.progress = &Progress{}
	}
	if err := applyLayers(ctx, t, src, cfg, o.log, o.progress); err != nil {
		return nil, err
	}

	var (
		idx   *Index
		blobs map[v1.Hash]string
		plan  *layoutPlan
		fb    fallbackBlob
	)
	g, gctx := errgroup.WithContext(ctx)
	if o.fallback {
		g.Go(func() error {
			var err error
			fb, err = writeFile(filepath.Join(dir, fallbackFile), func(w io.Writer) (fallbackBlob, error) {
				return writeFallback(gctx, t, w)
			})
			return err
		})
	}
	g.Go(func() error {
		var err error
		idx, blobs, plan, err = buildImage(gctx, t, layerDiffIDs(cfg), o, dir)
		return err
	})
	if err := g.Wait(); err != nil {
		return nil, err
	}
	blob, err := idx.MarshalBinary()
	if err != nil {
		return nil, err
	}
	res := &Result{Index: idx, IndexBlob: blob, IndexDigest: sha256Hash(blob), dir: dir, blobs: blobs,
		startup: newStartupResult(t, plan, o.startup)}
	if res.Image, err = layoutImage(cfg, res, o.fallback, fb); err != nil {
		return nil, err
	}
	o.log.Info("converted", "fs", o.fs, "image_size", idx.ImageSize, "chunks", len(idx.Chunks), "blobs", len(idx.Blobs),
		"stored", idx.StoredSize())
	return res, nil
}

const fallbackFile = "fallback.tar.gz"

// buildImage writes the filesystem image through a chunker into blobs in
// dir and returns its index: erofs in the layer-stable layout
// (regions.go), one blob per layer region and one for chunk 0 and the
// metadata; ext4 as mkfs.ext4 lays it out, one region, one blob.
func buildImage(ctx context.Context, t *tree, diffIDs []v1.Hash, o options, dir string) (*Index, map[v1.Hash]string, *layoutPlan, error) {
	pieceSize := min(o.pieceSize, o.chunkSize) // a chunk of 64 KiB is its own piece
	k := newChunker(ctx, dir, o.chunkSize, pieceSize, o.compression)
	k.written = &o.progress.ImageBytes
	defer k.close()
	var (
		plan *layoutPlan
		err  error
	)
	switch o.fs {
	case FSErofs:
		plan = planLayout(t, diffIDs, int64(o.chunkSize), o.startup)
		err = writeErofs(t, k, plan)
	case FSExt4:
		err = writeExt4(ctx, t, k, dir)
	}
	if err != nil {
		return nil, nil, nil, err
	}
	size := k.size
	chunks, starts, blobs, err := k.finish()
	if err != nil {
		return nil, nil, nil, err
	}
	idx := &Index{Version: IndexVersion, FS: o.fs, ChunkSize: uint32(o.chunkSize), ImageSize: uint64(size), Chunks: chunks,
		PieceSize: uint32(pieceSize)}
	return idx, idx.setRegions(plan, starts, blobs), plan, nil
}

// setRegions fills in the index's blobs and regions from what the chunker
// wrote: each region's chunks, first chunk of region r at starts[r], in
// blobs[r] (nil when it stored nothing; chunk 0 is stored in the last).
// Regions whose bytes are the same share one blob, named by its digest.
// It returns the file of each blob.
func (x *Index) setRegions(plan *layoutPlan, starts []int, blobs []*blobFile) map[v1.Hash]string {
	blobIndex := make([]int, len(blobs)) // chunker region -> index blob
	byDigest := map[v1.Hash]int{}
	paths := map[v1.Hash]string{}
	for r, b := range blobs {
		blobIndex[r] = NoBlob
		if b == nil {
			continue
		}
		d := v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%x", b.hash.Sum(nil))}
		i, seen := byDigest[d]
		if !seen {
			i = len(x.Blobs)
			byDigest[d] = i
			x.Blobs = append(x.Blobs, Blob{Digest: d, Size: b.size})
			paths[d] = b.path
		}
		blobIndex[r] = i
	}
	for i := range x.Chunks {
		if c := &x.Chunks[i]; c.Encoding != EncodingHole {
			c.Blob = blobIndex[c.Blob]
		}
	}
	count := func(r int) int {
		if r+1 < len(starts) {
			return starts[r+1] - starts[r]
		}
		return len(x.Chunks) - starts[r]
	}
	if plan == nil { // ext4: one region, chunk 0 in it
		x.Regions = []Region{{Kind: RegionImage, Count: len(x.Chunks), Blob: blobIndex[len(blobs)-1]}}
		return paths
	}
	meta := blobIndex[len(blobs)-1]
	x.Regions = append(x.Regions, Region{Kind: RegionHead, First: 0, Count: 1, Blob: meta})
	for i, rp := range plan.regions {
		x.Regions = append(x.Regions, Region{Kind: RegionLayer, Layer: rp.diffID, First: starts[i+1], Count: count(i + 1),
			Blob: blobIndex[i+1]})
	}
	last := len(starts) - 1
	x.Regions = append(x.Regions, Region{Kind: RegionMeta, First: starts[last], Count: count(last), Blob: meta})
	return paths
}

// layerDiffIDs are the source layers' uncompressed digests, by layer.
func layerDiffIDs(cfg *v1.ConfigFile) []v1.Hash { return cfg.RootFS.DiffIDs }

// applyLayers applies every layer in order, checking each against the
// digest the manifest names and the diff ID the config names.
func applyLayers(ctx context.Context, t *tree, src v1.Image, cfg *v1.ConfigFile, log *slog.Logger, p *Progress) error {
	layers, err := src.Layers()
	if err != nil {
		return fmt.Errorf("imagefmt: list layers: %w", err)
	}
	if len(layers) != len(cfg.RootFS.DiffIDs) {
		return fmt.Errorf("imagefmt: manifest has %d layers, config names %d diff IDs", len(layers), len(cfg.RootFS.DiffIDs))
	}
	p.Layers.Store(int64(len(layers)))
	for i, l := range layers {
		if err := ctx.Err(); err != nil {
			return err
		}
		dgst, err := l.Digest()
		if err != nil {
			return fmt.Errorf("imagefmt: layer %d: %w", i, err)
		}
		if err := applyLayer(t, i, l, cfg.RootFS.DiffIDs[i], &p.LayerBytes); err != nil {
			return fmt.Errorf("imagefmt: layer %d (%s): %w", i, dgst, err)
		}
		p.LayersDone.Add(1)
		log.Debug("applied layer", "digest", dgst, "layer", i)
	}
	return nil
}

func applyLayer(t *tree, i int, l v1.Layer, diffID v1.Hash, read *atomic.Int64) error {
	mt, err := l.MediaType()
	if err != nil {
		return err
	}
	if !readableLayer(mt) {
		return fmt.Errorf("%w: %s", ErrUnsupportedLayer, mt)
	}
	rc, err := l.Uncompressed()
	if err != nil {
		return err
	}
	defer rc.Close()
	h := sha256.New()
	r := io.TeeReader(counting{rc, read}, h)
	if err := t.applyLayer(i, r); err != nil {
		return err
	}
	// Drain the tar's padding: the digest checks run at end of stream.
	if _, err := io.Copy(io.Discard, r); err != nil {
		return err
	}
	if got := fmt.Sprintf("sha256:%x", h.Sum(nil)); got != diffID.String() {
		return fmt.Errorf("%w: uncompressed content is %s, config names diff ID %s", ErrBadLayer, got, diffID)
	}
	return nil
}

// counting counts the bytes read through it.
type counting struct {
	r io.Reader
	n *atomic.Int64
}

func (c counting) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

func readableLayer(mt types.MediaType) bool {
	switch mt {
	case types.DockerLayer, types.DockerUncompressedLayer, types.OCILayer, types.OCILayerZStd,
		types.OCIUncompressedLayer, types.OCIRestrictedLayer, types.OCIUncompressedRestrictedLayer:
		return true
	}
	return false
}

// writeFile creates name and runs fill on it. No fsync: these are
// temporary blobs, pushed and removed by this process.
func writeFile[T any](name string, fill func(io.Writer) (T, error)) (T, error) {
	var zero T
	f, err := os.Create(name)
	if err != nil {
		return zero, err
	}
	v, err := fill(f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return zero, err
	}
	return v, nil
}

func sha256Hash(b []byte) v1.Hash {
	return v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%x", sha256.Sum256(b))}
}
