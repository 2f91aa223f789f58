package fetcher

// early is the part of one chunk that the reader who started a fetch
// asked for. When the index has pieces (imagefmt/pieces.go), those pieces
// are decoded and verified as soon as the run's bytes arrive, before the
// rest of the run, and ready is closed once they are in bytes: the reader
// goes on while the whole chunk is still being decoded for the cache and
// for other readers. A piece that fails verification leaves ready open;
// its reader then waits for the whole chunk, whose decode refetches it.
type early struct {
	chunk       int
	first, last int // the pieces
	pieceSize   int
	off         int64 // content offset of bytes within the chunk
	bytes       []byte
	ready       chan struct{}
}

// wantEarly returns the early part for a reader of [within, within+n) of
// chunk i, or nil when the chunk has no pieces to decode on their own.
func (im *Image) wantEarly(i int, within int64, n int) *early {
	x := im.index
	first, last, ok := x.PiecesCovering(i, within, int64(n))
	if !ok || last-first+1 == x.NumPieces(i) { // the whole chunk: nothing to gain
		return nil
	}
	return &early{chunk: i, first: first, last: last, off: int64(first) * int64(x.PieceSize), ready: make(chan struct{}),
		pieceSize: int(x.PieceSize)}
}

// decodeEarly decodes and verifies e's pieces from stored, the chunk's
// stored bytes, into their place in out, the chunk's buffer (stored itself
// for a raw chunk: verified in place), and wakes e's reader; false when
// they did not verify. The rest of out is written by decodeRest or decode,
// never these bytes, which the reader copies meanwhile.
func (im *Image) decodeEarly(e *early, stored, out []byte) bool {
	x := im.index
	ps := int(x.PieceSize)
	buf := out[e.off : e.off+int64(min((e.last-e.first+1)*ps, x.ChunkLen(e.chunk)-e.first*ps))]
	if err := x.DecodePieces(e.chunk, e.first, e.last, stored, buf); err != nil {
		return false
	}
	e.bytes = buf
	im.stats.earlyReads.Add(1)
	close(e.ready)
	return true
}

// earlyFor is the channel that says cl's early part holds [within,
// within+n) of chunk i, verified; nil (never ready) when it does not
// cover them: another reader that joined the fetch waits for the chunk.
func (cl *call) earlyFor(i int, within int64, n int) chan struct{} {
	e := cl.early
	if e == nil || e.chunk != i {
		return nil
	}
	ps := int64(e.pieceSize)
	if within < e.off || within+int64(n) > int64(e.last+1)*ps {
		return nil
	}
	return e.ready
}

// decodeRest completes chunk j in out, whose early pieces decodeEarly
// wrote: the other pieces are decoded and verified once each, so no byte
// is decoded or hashed twice. Together the pieces' digests vouch for the
// chunk as its own digest does (the verified index names both). false: a
// piece failed, and the caller decodes the whole chunk, which refetches it.
func (im *Image) decodeRest(j int, stored, out []byte, e *early) bool {
	x := im.index
	n, ps := x.NumPieces(j), int(x.PieceSize)
	if e.first > 0 && x.DecodePieces(j, 0, e.first-1, stored, out[:e.first*ps]) != nil {
		return false
	}
	return e.last+1 == n || x.DecodePieces(j, e.last+1, n-1, stored, out[(e.last+1)*ps:]) == nil
}
