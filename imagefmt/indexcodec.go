package imagefmt

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math"
	"math/bits"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Version 2's fixed parts (layout in doc.go).
const (
	headerSizeV2   = 48
	blobRecordSize = 40
	regionRecSize  = 48
	noBlobRecord   = 0xffff
	maxBlobs       = 0xfffe
)

// MarshalBinary encodes the index in its Version (doc.go draws both).
func (x *Index) MarshalBinary() ([]byte, error) {
	if err := x.validate(); err != nil {
		return nil, err
	}
	switch x.Version {
	case IndexVersion1:
		return x.marshalV1()
	case 0, IndexVersion2:
		return x.marshalV2()
	}
	return nil, fmt.Errorf("%w: cannot encode version %d", ErrInvalidIndex, x.Version)
}

func (x *Index) marshalV1() ([]byte, error) {
	if len(x.Blobs) != 1 || len(x.Regions) != 1 {
		return nil, fmt.Errorf("%w: version 1 holds one blob and one region, not %d and %d", ErrInvalidIndex, len(x.Blobs), len(x.Regions))
	}
	b := make([]byte, indexHeaderSize+chunkRecordSize*len(x.Chunks))
	header(b, IndexVersion1, x)
	le := binary.LittleEndian
	d, _ := hexDigest(x.Blobs[0].Digest)
	copy(b[24:56], d[:])
	le.PutUint64(b[56:], x.Blobs[0].Size)
	le.PutUint32(b[64:], uint32(len(x.Chunks)))
	putChunks(b[indexHeaderSize:], x.Chunks)
	return b, nil
}

func (x *Index) marshalV2() ([]byte, error) {
	if len(x.Blobs) > maxBlobs || len(x.Regions) > math.MaxUint16 {
		return nil, fmt.Errorf("%w: %d blobs and %d regions, at most %d of each", ErrInvalidIndex, len(x.Blobs), len(x.Regions), maxBlobs)
	}
	pieces := 0
	for _, c := range x.Chunks {
		pieces += len(c.Pieces)
	}
	size := headerSizeV2 + blobRecordSize*len(x.Blobs) + regionRecSize*len(x.Regions) + chunkRecordSize*len(x.Chunks) + pieceRecordSize*pieces
	b := make([]byte, size)
	header(b, IndexVersion2, x)
	if x.PieceSize != 0 {
		b[12] = byte(bits.TrailingZeros32(x.PieceSize))
	}
	le := binary.LittleEndian
	le.PutUint32(b[24:], uint32(len(x.Chunks)))
	le.PutUint16(b[28:], uint16(len(x.Blobs)))
	le.PutUint16(b[30:], uint16(len(x.Regions)))
	r := b[headerSizeV2:]
	for _, bl := range x.Blobs {
		d, _ := hexDigest(bl.Digest)
		copy(r, d[:])
		le.PutUint64(r[32:], bl.Size)
		r = r[blobRecordSize:]
	}
	for _, g := range x.Regions {
		r[0] = byte(g.Kind)
		blob := uint16(noBlobRecord)
		if g.Blob != NoBlob {
			blob = uint16(g.Blob)
		}
		le.PutUint16(r[2:], blob)
		le.PutUint32(r[4:], uint32(g.First))
		le.PutUint32(r[8:], uint32(g.Count))
		if g.Layer.Hex != "" {
			d, err := hexDigest(g.Layer)
			if err != nil {
				return nil, fmt.Errorf("%w: region layer: %v", ErrInvalidIndex, err)
			}
			copy(r[16:48], d[:])
		}
		r = r[regionRecSize:]
	}
	putChunks(r, x.Chunks)
	r = r[chunkRecordSize*len(x.Chunks):]
	for _, c := range x.Chunks {
		for _, p := range c.Pieces {
			copy(r, p.Digest[:])
			le.PutUint32(r[32:], p.Length)
			r = r[pieceRecordSize:]
		}
	}
	return b, nil
}

// header writes what both versions share: magic, version, fs, chunk
// shift, image size.
func header(b []byte, version uint16, x *Index) {
	copy(b, indexMagic)
	le := binary.LittleEndian
	le.PutUint16(b[8:], version)
	b[10] = byte(x.FS)
	b[11] = byte(bits.TrailingZeros32(x.ChunkSize))
	le.PutUint64(b[16:], x.ImageSize)
}

func putChunks(b []byte, chunks []Chunk) {
	le := binary.LittleEndian
	for i, c := range chunks {
		r := b[i*chunkRecordSize:]
		copy(r[:32], c.Digest[:])
		le.PutUint64(r[32:], c.Offset)
		le.PutUint32(r[40:], c.Length)
		r[44] = byte(c.Encoding)
	}
}

// DecodeIndex decodes and validates an encoded index of either version.
// It never allocates more than the input's size implies.
func DecodeIndex(b []byte) (*Index, error) {
	if len(b) < 16 || string(b[:8]) != indexMagic {
		return nil, fmt.Errorf("%w: bad magic or short header (%d bytes)", ErrInvalidIndex, len(b))
	}
	le := binary.LittleEndian
	shift := b[11]
	if shift > 31 || b[13]|b[14]|b[15] != 0 || b[12] != 0 && le.Uint16(b[8:]) != IndexVersion2 {
		return nil, fmt.Errorf("%w: bad chunk shift %d or reserved bits set", ErrInvalidIndex, shift)
	}
	var (
		x   *Index
		err error
	)
	switch v := le.Uint16(b[8:]); v {
	case IndexVersion1:
		x, err = decodeV1(b)
	case IndexVersion2:
		x, err = decodeV2(b)
	default:
		return nil, fmt.Errorf("%w: version %d, this build reads versions 1 and 2", ErrInvalidIndex, v)
	}
	if err != nil {
		return nil, err
	}
	x.FS, x.ChunkSize = FSType(b[10]), 1<<shift
	if err := x.validate(); err != nil {
		return nil, err
	}
	return x, nil
}

func decodeV1(b []byte) (*Index, error) {
	if len(b) < indexHeaderSize {
		return nil, fmt.Errorf("%w: short version 1 header (%d bytes)", ErrInvalidIndex, len(b))
	}
	le := binary.LittleEndian
	n := le.Uint32(b[64:])
	if uint64(len(b)-indexHeaderSize) != uint64(n)*chunkRecordSize {
		return nil, fmt.Errorf("%w: %d chunks need %d bytes, have %d", ErrInvalidIndex, n, uint64(n)*chunkRecordSize, len(b)-indexHeaderSize)
	}
	x := &Index{Version: IndexVersion1, ImageSize: le.Uint64(b[16:]),
		Blobs:   []Blob{{Digest: sha256Hex(b[24:56]), Size: le.Uint64(b[56:])}},
		Regions: []Region{{Kind: RegionImage, First: 0, Count: int(n), Blob: 0}}}
	var err error
	x.Chunks, err = getChunks(b[indexHeaderSize:], int(n), x.Regions)
	return x, err
}

func decodeV2(b []byte) (*Index, error) {
	if len(b) < headerSizeV2 {
		return nil, fmt.Errorf("%w: short version 2 header (%d bytes)", ErrInvalidIndex, len(b))
	}
	le := binary.LittleEndian
	n, nb, nr := le.Uint32(b[24:]), le.Uint16(b[28:]), le.Uint16(b[30:])
	for _, c := range b[32:headerSizeV2] {
		if c != 0 {
			return nil, fmt.Errorf("%w: reserved header bytes set", ErrInvalidIndex)
		}
	}
	want := uint64(headerSizeV2) + uint64(nb)*blobRecordSize + uint64(nr)*regionRecSize + uint64(n)*chunkRecordSize
	pieceShift := b[12]
	if pieceShift == 0 && uint64(len(b)) != want || uint64(len(b)) < want || pieceShift > 31 || nb > maxBlobs {
		return nil, fmt.Errorf("%w: %d blobs, %d regions and %d chunks need %d bytes, have %d",
			ErrInvalidIndex, nb, nr, n, want, len(b))
	}
	x := &Index{Version: IndexVersion2, ImageSize: le.Uint64(b[16:]), Blobs: make([]Blob, nb), Regions: make([]Region, nr)}
	r := b[headerSizeV2:]
	for i := range x.Blobs {
		x.Blobs[i] = Blob{Digest: sha256Hex(r[:32]), Size: le.Uint64(r[32:])}
		r = r[blobRecordSize:]
	}
	for i := range x.Regions {
		g := &x.Regions[i]
		g.Kind, g.First, g.Count = RegionKind(r[0]), int(le.Uint32(r[4:])), int(le.Uint32(r[8:]))
		g.Blob = int(le.Uint16(r[2:]))
		if g.Blob == noBlobRecord {
			g.Blob = NoBlob
		}
		if r[1] != 0 || le.Uint32(r[12:]) != 0 {
			return nil, fmt.Errorf("%w: region %d: reserved bytes set", ErrInvalidIndex, i)
		}
		if layer := r[16:48]; g.Kind == RegionLayer {
			g.Layer = sha256Hex(layer)
		} else if [32]byte(layer) != ([32]byte{}) {
			return nil, fmt.Errorf("%w: region %d of kind %v names a layer", ErrInvalidIndex, i, g.Kind)
		}
		r = r[regionRecSize:]
	}
	var err error
	if x.Chunks, err = getChunks(r, int(n), x.Regions); err != nil || pieceShift == 0 {
		return x, err
	}
	x.PieceSize, x.ChunkSize = 1<<pieceShift, 1<<b[11] // the pieces' lengths follow from both
	return x, getPieces(x, r[int(n)*chunkRecordSize:])
}

// getPieces decodes the piece table after the chunk records: each stored
// chunk's pieces in chunk order. It checks the table's size against the
// chunks before it allocates.
func getPieces(x *Index, b []byte) error {
	if x.PieceSize < MinPieceSize || x.PieceSize > x.ChunkSize && x.ChunkSize != 0 {
		return fmt.Errorf("%w: piece size %d", ErrInvalidIndex, x.PieceSize)
	}
	total := 0
	for i, c := range x.Chunks {
		if c.Encoding == EncodingHole {
			continue
		}
		n := x.ChunkLen(i)
		if n <= 0 {
			return fmt.Errorf("%w: chunk %d lies beyond the image's %d bytes", ErrInvalidIndex, i, x.ImageSize)
		}
		total += (n + int(x.PieceSize) - 1) / int(x.PieceSize)
	}
	if len(b) != total*pieceRecordSize {
		return fmt.Errorf("%w: %d pieces need %d bytes, have %d", ErrInvalidIndex, total, total*pieceRecordSize, len(b))
	}
	le := binary.LittleEndian
	all := make([]Piece, total)
	for i := range x.Chunks {
		k := x.NumPieces(i)
		x.Chunks[i].Pieces, all = all[:k:k], all[k:]
		for j := range x.Chunks[i].Pieces {
			p := &x.Chunks[i].Pieces[j]
			copy(p.Digest[:], b[:32])
			p.Length = le.Uint32(b[32:])
			b = b[pieceRecordSize:]
		}
	}
	return nil
}

// getChunks decodes n chunk records, each stored in the blob of the
// region that covers it (validate checks the regions cover them all).
func getChunks(b []byte, n int, regions []Region) ([]Chunk, error) {
	le := binary.LittleEndian
	chunks := make([]Chunk, n)
	next := 0
	for r, g := range regions {
		if g.First != next || g.Count < 0 || g.Count > n-next {
			return nil, fmt.Errorf("%w: region %d covers chunks [%d,+%d), want it to start at %d within %d chunks",
				ErrInvalidIndex, r, g.First, g.Count, next, n)
		}
		for i := g.First; i < g.First+g.Count; i++ {
			chunks[i].Blob = g.Blob
		}
		next += g.Count
	}
	for i := range chunks {
		r := b[i*chunkRecordSize:]
		c := &chunks[i]
		copy(c.Digest[:], r[:32])
		c.Offset = le.Uint64(r[32:])
		c.Length = le.Uint32(r[40:])
		c.Encoding = Encoding(r[44])
		if r[45]|r[46]|r[47] != 0 {
			return nil, fmt.Errorf("%w: chunk %d: reserved bytes set", ErrInvalidIndex, i)
		}
		if c.Encoding == EncodingHole {
			c.Blob = NoBlob
		}
	}
	return chunks, nil
}

func sha256Hex(b []byte) v1.Hash { return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(b)} }
