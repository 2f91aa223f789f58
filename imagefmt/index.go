package imagefmt

import (
	"crypto/sha256"
	"encoding/binary"
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

// IndexVersion is the only chunk index version this package writes and reads.
const IndexVersion = 1

const (
	indexMagic      = "LZBLKIX\x00"
	indexHeaderSize = 68
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

// Encoding is how one chunk is stored in the data blob.
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
	// Offset and Length locate the stored bytes in the data blob.
	Offset   uint64
	Length   uint32
	Encoding Encoding
}

// Index is the chunk index of one block image.
type Index struct {
	FS        FSType
	ChunkSize uint32
	// ImageSize is the size of the filesystem image in bytes; the last chunk
	// may be shorter than ChunkSize.
	ImageSize uint64
	// Data names the blob holding every stored chunk.
	Data     v1.Hash
	DataSize uint64
	Chunks   []Chunk
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

// MarshalBinary encodes the index (layout in doc.go).
func (x *Index) MarshalBinary() ([]byte, error) {
	if err := x.validate(); err != nil {
		return nil, err
	}
	b := make([]byte, indexHeaderSize+chunkRecordSize*len(x.Chunks))
	copy(b, indexMagic)
	le := binary.LittleEndian
	le.PutUint16(b[8:], IndexVersion)
	b[10] = byte(x.FS)
	b[11] = byte(bits.TrailingZeros32(x.ChunkSize))
	le.PutUint64(b[16:], x.ImageSize)
	dataDigest, _ := hexDigest(x.Data)
	copy(b[24:56], dataDigest[:])
	le.PutUint64(b[56:], x.DataSize)
	le.PutUint32(b[64:], uint32(len(x.Chunks)))
	for i, c := range x.Chunks {
		r := b[indexHeaderSize+i*chunkRecordSize:]
		copy(r[:32], c.Digest[:])
		le.PutUint64(r[32:], c.Offset)
		le.PutUint32(r[40:], c.Length)
		r[44] = byte(c.Encoding)
	}
	return b, nil
}

// DecodeIndex decodes and validates an encoded index. It never allocates
// more than the input's size implies.
func DecodeIndex(b []byte) (*Index, error) {
	if len(b) < indexHeaderSize || string(b[:8]) != indexMagic {
		return nil, fmt.Errorf("%w: bad magic or short header (%d bytes)", ErrInvalidIndex, len(b))
	}
	le := binary.LittleEndian
	if v := le.Uint16(b[8:]); v != IndexVersion {
		return nil, fmt.Errorf("%w: version %d, this build reads version %d", ErrInvalidIndex, v, IndexVersion)
	}
	shift := b[11]
	if shift > 31 || le.Uint32(b[12:]) != 0 {
		return nil, fmt.Errorf("%w: bad chunk shift %d or reserved bits set", ErrInvalidIndex, shift)
	}
	n := le.Uint32(b[64:])
	if uint64(len(b)-indexHeaderSize) != uint64(n)*chunkRecordSize {
		return nil, fmt.Errorf("%w: %d chunks need %d bytes, have %d", ErrInvalidIndex, n, uint64(n)*chunkRecordSize, len(b)-indexHeaderSize)
	}
	x := &Index{
		FS:        FSType(b[10]),
		ChunkSize: 1 << shift,
		ImageSize: le.Uint64(b[16:]),
		Data:      v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(b[24:56])},
		DataSize:  le.Uint64(b[56:]),
		Chunks:    make([]Chunk, n),
	}
	for i := range x.Chunks {
		r := b[indexHeaderSize+i*chunkRecordSize:]
		c := &x.Chunks[i]
		copy(c.Digest[:], r[:32])
		c.Offset = le.Uint64(r[32:])
		c.Length = le.Uint32(r[40:])
		c.Encoding = Encoding(r[44])
		if r[45]|r[46]|r[47] != 0 {
			return nil, fmt.Errorf("%w: chunk %d: reserved bytes set", ErrInvalidIndex, i)
		}
	}
	if err := x.validate(); err != nil {
		return nil, err
	}
	return x, nil
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
	if _, err := hexDigest(x.Data); err != nil {
		return fmt.Errorf("%w: data blob: %v", ErrInvalidIndex, err)
	}
	for i, c := range x.Chunks {
		n := uint64(x.ChunkLen(i))
		if c.Offset > x.DataSize || uint64(c.Length) > x.DataSize-c.Offset {
			return fmt.Errorf("%w: chunk %d: [%d,+%d) outside data blob of %d bytes", ErrInvalidIndex, i, c.Offset, c.Length, x.DataSize)
		}
		switch c.Encoding {
		case EncodingHole:
			if c.Length != 0 || c.Offset != 0 || c.Digest != ([32]byte{}) {
				return fmt.Errorf("%w: chunk %d: hole with stored bytes or digest", ErrInvalidIndex, i)
			}
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
