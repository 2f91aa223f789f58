package imagefmt

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/bits"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Chunk-size bounds. 64 KiB keeps per-chunk HTTP overhead tolerable; 64 MiB
// keeps one demand miss from stalling a reader for long on a slow link.
const (
	MinChunkSize     = 64 << 10
	MaxChunkSize     = 64 << 20
	DefaultChunkSize = 4 << 20
)

// Index versions. Version 1 stores every chunk in one data blob; version 2
// in one blob per region (a layer's files, the metadata), so images that
// share layers share blobs. DecodeIndex reads both; the converter writes
// version 2.
const (
	IndexVersion1 = 1
	IndexVersion2 = 2
	IndexVersion  = IndexVersion2
)

const (
	indexMagic      = "LZBLKIX\x00"
	indexHeaderSize = 68 // version 1
	chunkRecordSize = 48
)

// ErrInvalidIndex reports a chunk index that cannot be decoded or is
// inconsistent with itself.
var ErrInvalidIndex = errors.New("imagefmt: invalid chunk index")

// FSType is the filesystem inside a block image.
type FSType uint8

const (
	FSErofs FSType = 1
	FSExt4  FSType = 2
)

func (t FSType) String() string {
	switch t {
	case FSErofs:
		return "erofs"
	case FSExt4:
		return "ext4"
	}
	return fmt.Sprintf("fstype(%d)", uint8(t))
}

// ParseFSType parses "erofs" or "ext4".
func ParseFSType(s string) (FSType, error) {
	switch s {
	case "erofs":
		return FSErofs, nil
	case "ext4":
		return FSExt4, nil
	}
	return 0, fmt.Errorf("imagefmt: unknown filesystem %q (want erofs or ext4)", s)
}

// Encoding is how one chunk is stored in its blob.
type Encoding uint8

const (
	// EncodingHole is an all-zero chunk: nothing is stored, reads yield zeros.
	EncodingHole Encoding = 0
	EncodingRaw  Encoding = 1
	EncodingZstd Encoding = 2
)

func (e Encoding) String() string {
	switch e {
	case EncodingHole:
		return "hole"
	case EncodingRaw:
		return "raw"
	case EncodingZstd:
		return "zstd"
	}
	return fmt.Sprintf("encoding(%d)", uint8(e))
}

// Chunk describes one chunk of the filesystem image.
type Chunk struct {
	// Digest is the sha256 of the chunk's uncompressed bytes (zero for holes).
	Digest [sha256.Size]byte
	// Blob is the blob holding the stored bytes (an index into
	// Index.Blobs): its region's. Offset and Length locate them there.
	Blob     int
	Offset   uint64
	Length   uint32
	Encoding Encoding
	// Pieces are the chunk's pieces when the index has a PieceSize.
	Pieces []Piece
}

// Blob is one data blob of a block image, named by the sha256 of its
// bytes.
type Blob struct {
	Digest v1.Hash
	Size   uint64
}

// RegionKind says what a region of the filesystem image holds.
type RegionKind uint8

const (
	// RegionImage is the whole image in one region: version 1 indexes, and
	// ext4, whose writer places data itself.
	RegionImage RegionKind = 1
	// RegionHead is chunk 0: the superblock.
	RegionHead RegionKind = 2
	// RegionLayer holds the file data one source layer brought.
	RegionLayer RegionKind = 3
	// RegionMeta holds the filesystem's metadata: inodes, directories,
	// xattrs, small files inline.
	RegionMeta RegionKind = 4
)

func (k RegionKind) String() string {
	switch k {
	case RegionImage:
		return "image"
	case RegionHead:
		return "head"
	case RegionLayer:
		return "layer"
	case RegionMeta:
		return "metadata"
	}
	return fmt.Sprintf("region(%d)", uint8(k))
}

// NoBlob is a region's Blob when it stores nothing (all holes).
const NoBlob = -1

// Region is a run of chunks stored in one blob.
type Region struct {
	Kind RegionKind
	// Layer is the diff ID of the source layer a RegionLayer holds.
	Layer        v1.Hash
	First, Count int // chunks [First, First+Count)
	Blob         int // index into Index.Blobs, or NoBlob
}

// Index is the chunk index of one block image.
type Index struct {
	// Version is the format the index was decoded from, or is to be
	// encoded in (0: IndexVersion).
	Version   int
	FS        FSType
	ChunkSize uint32
	// ImageSize is the size of the filesystem image in bytes; the last chunk
	// may be shorter than ChunkSize.
	ImageSize uint64
	Blobs     []Blob
	// Regions cover the chunks in order, each stored in one blob; a
	// version 1 index has one RegionImage.
	Regions []Region
	Chunks  []Chunk
	// PieceSize, when not 0, cuts every stored chunk into pieces a reader
	// can decode and verify alone (pieces.go); version 2 only.
	PieceSize uint32
}

// StoredSize is the bytes of every blob.
func (x *Index) StoredSize() uint64 {
	var n uint64
	for _, b := range x.Blobs {
		n += b.Size
	}
	return n
}

// ChunkLen returns the uncompressed length of chunk i.
func (x *Index) ChunkLen(i int) int {
	start := uint64(i) * uint64(x.ChunkSize)
	return int(min(uint64(x.ChunkSize), x.ImageSize-start))
}

// Stats summarises an index.
type Stats struct {
	Chunks, Holes, Raw, Zstd int
	StoredBytes              uint64
}

// Stats counts chunks by encoding and sums stored bytes.
func (x *Index) Stats() Stats {
	var s Stats
	s.Chunks = len(x.Chunks)
	for _, c := range x.Chunks {
		switch c.Encoding {
		case EncodingHole:
			s.Holes++
		case EncodingRaw:
			s.Raw++
		case EncodingZstd:
			s.Zstd++
		}
		s.StoredBytes += uint64(c.Length)
	}
	return s
}

// ValidChunkSize reports whether n is a power of two within bounds.
func ValidChunkSize(n int) error {
	if n < MinChunkSize || n > MaxChunkSize || bits.OnesCount(uint(n)) != 1 {
		return fmt.Errorf("imagefmt: chunk size %d must be a power of two from %d to %d", n, MinChunkSize, MaxChunkSize)
	}
	return nil
}

// validate checks the invariants every reader relies on.
func (x *Index) validate() error {
	if x.FS != FSErofs && x.FS != FSExt4 {
		return fmt.Errorf("%w: unknown filesystem type %d", ErrInvalidIndex, x.FS)
	}
	if err := ValidChunkSize(int(x.ChunkSize)); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidIndex, err)
	}
	want := (x.ImageSize + uint64(x.ChunkSize) - 1) / uint64(x.ChunkSize)
	if uint64(len(x.Chunks)) != want {
		return fmt.Errorf("%w: image of %d bytes needs %d chunks, index has %d", ErrInvalidIndex, x.ImageSize, want, len(x.Chunks))
	}
	for i, b := range x.Blobs {
		if _, err := hexDigest(b.Digest); err != nil {
			return fmt.Errorf("%w: blob %d: %v", ErrInvalidIndex, i, err)
		}
	}
	next := 0
	for r, g := range x.Regions {
		if g.First != next || g.Count < 0 || g.Count > len(x.Chunks)-next {
			return fmt.Errorf("%w: region %d covers chunks [%d,+%d), want it to start at %d within %d chunks",
				ErrInvalidIndex, r, g.First, g.Count, next, len(x.Chunks))
		}
		if g.Blob != NoBlob && (g.Blob < 0 || g.Blob >= len(x.Blobs)) {
			return fmt.Errorf("%w: region %d: blob %d of %d", ErrInvalidIndex, r, g.Blob, len(x.Blobs))
		}
		if g.Kind < RegionImage || g.Kind > RegionMeta {
			return fmt.Errorf("%w: region %d: unknown kind %d", ErrInvalidIndex, r, g.Kind)
		}
		for i := g.First; i < g.First+g.Count; i++ {
			if err := x.validChunk(i, g.Blob); err != nil {
				return err
			}
		}
		next += g.Count
	}
	if next != len(x.Chunks) {
		return fmt.Errorf("%w: regions cover %d of %d chunks", ErrInvalidIndex, next, len(x.Chunks))
	}
	if x.PieceSize != 0 && (x.PieceSize&(x.PieceSize-1) != 0 || x.PieceSize < MinPieceSize || x.PieceSize > x.ChunkSize || x.Version == IndexVersion1) {
		return fmt.Errorf("%w: piece size %d: want a power of two from %d to the chunk size, in version 2", ErrInvalidIndex, x.PieceSize, MinPieceSize)
	}
	for i := range x.Chunks {
		if err := x.validPieces(i); err != nil {
			return err
		}
	}
	return nil
}

// validChunk checks chunk i, which its region stores in blob.
func (x *Index) validChunk(i, blob int) error {
	c := x.Chunks[i]
	n := uint64(x.ChunkLen(i))
	if c.Encoding == EncodingHole {
		if c.Length != 0 || c.Offset != 0 || c.Digest != ([32]byte{}) {
			return fmt.Errorf("%w: chunk %d: hole with stored bytes or digest", ErrInvalidIndex, i)
		}
		return nil
	}
	if blob == NoBlob || c.Blob != blob {
		return fmt.Errorf("%w: chunk %d: stored outside its region's blob", ErrInvalidIndex, i)
	}
	size := x.Blobs[blob].Size
	if c.Offset > size || uint64(c.Length) > size-c.Offset {
		return fmt.Errorf("%w: chunk %d: [%d,+%d) outside blob of %d bytes", ErrInvalidIndex, i, c.Offset, c.Length, size)
	}
	switch c.Encoding {
	case EncodingRaw:
		if uint64(c.Length) != n {
			return fmt.Errorf("%w: chunk %d: raw length %d, want %d", ErrInvalidIndex, i, c.Length, n)
		}
	case EncodingZstd:
		if c.Length == 0 || uint64(c.Length) > n+n/8+64 {
			return fmt.Errorf("%w: chunk %d: zstd length %d implausible for %d bytes", ErrInvalidIndex, i, c.Length, n)
		}
	default:
		return fmt.Errorf("%w: chunk %d: unknown encoding %d", ErrInvalidIndex, i, c.Encoding)
	}
	return nil
}

func hexDigest(h v1.Hash) ([32]byte, error) {
	var out [32]byte
	if h.Algorithm != "sha256" || len(h.Hex) != 64 {
		return out, fmt.Errorf("want a sha256 digest, got %q", h.String())
	}
	tmp, err := hex.DecodeString(h.Hex)
	if err != nil || len(tmp) != 32 || hex.EncodeToString(tmp) != h.Hex {
		return out, fmt.Errorf("malformed sha256 hex %q", h.Hex)
	}
	copy(out[:], tmp)
	return out, nil
}
