package fetcher_test

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lazyblk/lazyblk/fetcher"
	"github.com/lazyblk/lazyblk/imagefmt"
	"github.com/lazyblk/lazyblk/internal/testutil"
)

// TestEarlyPieces: a cold read of a few KiB in a 4 MiB chunk, raw or
// zstd, is answered from the pieces it asked for, decoded and verified
// before the rest of the chunk (EarlyReads); when the piece it asked for
// arrives corrupt, nothing of it is served early: the read waits for the
// whole chunk, which is refetched, and returns the right bytes.
func TestEarlyPieces(t *testing.T) {
	host := testutil.GGCRRegistry(t)
	const piece = 256 << 10
	loc, want := testutil.BlockImage(t, host+"/img:v1", 6<<20, imagefmt.WithChunkSize(4<<20), imagefmt.WithPieceSize(piece))
	x := openImage(t, loc).Index()
	cs := int64(x.ChunkSize)
	chunks := map[imagefmt.Encoding]int{}
	for i, c := range x.Chunks {
		// A full chunk whose fourth piece, the one read first, is not all
		// zeros: its bytes must come from somewhere.
		if int64(i+1)*cs > int64(len(want)) {
			break
		}
		p4 := want[int64(i)*cs+3*piece : int64(i)*cs+4*piece]
		if _, ok := chunks[c.Encoding]; !ok && c.Encoding != imagefmt.EncodingHole && x.NumPieces(i) == int(cs/piece) &&
			!bytes.Equal(p4, make([]byte, len(p4))) {
			chunks[c.Encoding] = i
		}
	}
	if len(chunks) != 2 {
		t.Fatalf("want a full raw and a full zstd chunk, found %v", chunks)
	}
	for enc, i := range chunks {
		t.Run(enc.String(), func(t *testing.T) {
			im := openImage(t, loc, patient)
			off := int64(i)*cs + 3*piece + 100
			p := make([]byte, 4096)
			if n, err := im.ReadAt(context.Background(), p, off); n != len(p) || err != nil || !bytes.Equal(p, want[off:off+4096]) {
				t.Fatalf("cold read: %d bytes, %v", n, err)
			}
			if st := im.Stats(); st.EarlyReads != 1 {
				t.Errorf("early reads %d, want 1 (the read's piece first)", st.EarlyReads)
			}
			// The rest of the chunk, completed from the other pieces.
			whole := make([]byte, cs)
			if n, err := im.ReadAt(context.Background(), whole, int64(i)*cs); n != len(whole) || err != nil ||
				!bytes.Equal(whole, want[int64(i)*cs:int64(i+1)*cs]) {
				t.Fatalf("the whole chunk after its early pieces: %d bytes, %v", n, err)
			}

			// The middle of the chunk's stored bytes corrupt, once.
			c := x.Chunks[i]
			var flipped atomic.Bool
			proxy := testutil.FaultProxy(t, host, func(_ int64, r *http.Request) testutil.Fault {
				if r.Header.Get("Range") == rangeHeader(c.Offset, c.Length) && !flipped.Swap(true) {
					return testutil.Flip
				}
				return testutil.Pass
			})
			// One connection: the chunk comes in one request, not in parts.
			im = openImage(t, viaProxy(t, loc, proxy), patient, fetcher.WithConnections(1, 1))
			// The proxy flips the body's middle byte: piece k stores it.
			var stored int64
			k := 0
			for ; stored+int64(c.Pieces[k].Length) <= int64(c.Length)/2; k++ {
				stored += int64(c.Pieces[k].Length)
			}
			off = int64(i)*cs + int64(k)*piece + 10 // zstd: anywhere in piece k
			if enc == imagefmt.EncodingRaw {
				off = int64(i)*cs + max(int64(k)*piece, int64(c.Length)/2-100) // the flipped byte itself
			}
			if n, err := im.ReadAt(context.Background(), p, off); n != len(p) || err != nil || !bytes.Equal(p, want[off:off+4096]) {
				t.Fatalf("read of a piece that arrived corrupt: %d bytes, %v", n, err)
			}
			if st := im.Stats(); !flipped.Load() || st.EarlyReads != 0 || st.VerifyFailures != 1 {
				t.Errorf("flipped %v, early reads %d, verification failures %d: want the corrupt piece not served early, refetched once",
					flipped.Load(), st.EarlyReads, st.VerifyFailures)
			}
		})
	}
}

// TestEarlyPiecesJoined: a second reader that joins a fetch in flight for
// another part of the same chunk is not answered from the first reader's
// pieces: it waits for its own bytes, and both read exactly.
func TestEarlyPiecesJoined(t *testing.T) {
	host := testutil.GGCRRegistry(t)
	const piece = 256 << 10
	loc, want := testutil.BlockImage(t, host+"/img:v1", 6<<20, imagefmt.WithChunkSize(4<<20), imagefmt.WithPieceSize(piece))
	x := openImage(t, loc).Index()
	i := 1
	for x.NumPieces(i) != int(x.ChunkSize/piece) {
		i++
	}
	held, release := make(chan struct{}), make(chan struct{})
	var once atomic.Bool
	proxy := testutil.FaultProxy(t, host, func(_ int64, r *http.Request) testutil.Fault {
		if !once.Swap(true) {
			close(held)
			<-release // the chunk's request waits until the second reader joined
		}
		return testutil.Pass
	})
	im := openImage(t, viaProxy(t, loc, proxy), patient, fetcher.WithConnections(1, 1))
	cs := int64(x.ChunkSize)
	read := func(off int64, done chan error) {
		p := make([]byte, 8192)
		n, err := im.ReadAt(context.Background(), p, off)
		if err == nil && (n != len(p) || !bytes.Equal(p, want[off:off+8192])) {
			err = errors.New("wrong bytes")
		}
		done <- err
	}
	first, second := make(chan error, 1), make(chan error, 1)
	go read(int64(i)*cs+2*piece+5, first)
	<-held
	go read(int64(i)*cs+9*piece+5, second)
	// The second reader is waiting on the same fetch once the image
	// counts its miss; then let the request go.
	for im.Stats().Misses < 2 {
		runtime.Gosched()
	}
	close(release)
	if err := <-first; err != nil {
		t.Fatalf("first reader: %v", err)
	}
	if err := <-second; err != nil {
		t.Fatalf("second reader, another piece of the chunk: %v", err)
	}
	if st := im.Stats(); st.EarlyReads != 1 {
		t.Errorf("early reads %d, want 1 (the first reader's)", st.EarlyReads)
	}
}

// patient gives each attempt time to fetch, decode and verify a 4 MiB
// chunk under the race detector: with fast's 300 ms an attempt that got
// the flipped body could time out before its verification failed, and
// the retry's clean body was then served early (a flake of
// TestEarlyPieces: 3 in 30 runs with -race before, 0 in 30 with this).
var patient = fetcher.WithTimeouts(10*time.Second, 4, 30*time.Second)
