package blockdev_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/lazyblk/lazyblk/blockdev"
	"github.com/lazyblk/lazyblk/cache"
	"github.com/lazyblk/lazyblk/fetcher"
	"github.com/lazyblk/lazyblk/imagefmt"
	"github.com/lazyblk/lazyblk/internal/testutil"
)

// copyAll reads the whole export with nbdcopy (libnbd; 4 connections,
// requests of size bytes) and fails unless it is want.
func copyAll(t *testing.T, uri string, want []byte, size int) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "copy")
	testutil.Run(t, "nbdcopy", "--connections=4", "--requests=16", fmt.Sprintf("--request-size=%d", size), uri, out)
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("nbdcopy: %d bytes differ from the image's %d", len(got), len(want))
	}
}

// TestSpliceFromCache: once the image's chunks are in the cache, every
// read of a stored chunk is spliced from its chunk file to the socket,
// unix or TCP, one chunk per request or several, and libnbd's client
// still reads exactly the image's bytes.
func TestSpliceFromCache(t *testing.T) {
	testutil.Require(t, false, "nbdcopy")
	store, err := cache.Open([]string{t.TempDir()}, 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	s := serve(t, nil, fetcher.WithCache(store))
	copyAll(t, s.uri, s.want, 64<<10) // fetches everything into the cache
	before := s.srv.Stats()
	copyAll(t, s.uri, s.want, 64<<10) // a chunk per request
	after := s.srv.Stats()

	var stored int64 // bytes of chunks that are not holes: those have files
	x := s.im.Index()
	for i, c := range x.Chunks {
		if c.Encoding != imagefmt.EncodingHole {
			stored += int64(x.ChunkLen(i))
		}
	}
	if got := after.Spliced - before.Spliced; got != stored {
		t.Errorf("second read spliced %d bytes, want the %d bytes of stored chunks", got, stored)
	}
	if after.Errors != 0 {
		t.Errorf("%d read errors", after.Errors)
	}

	// The same over TCP (`lazyblk serve --listen tcp:…`), where the
	// kernel splices pages into TCP sockets too, with requests of four
	// chunks each: one spliced from four files, unless one is a hole.
	tcp, uri := listen(t, "tcp", blockdev.Export{Name: "img", Backend: s.im})
	req := 4 * int64(x.ChunkSize)
	copyAll(t, uri, s.want, int(req))
	var whole int64 // bytes of requests whose chunks are all stored
	for off := int64(0); off < int64(len(s.want)); off += req {
		n, allStored := min(req, int64(len(s.want))-off), true
		for i := off / int64(x.ChunkSize); i*int64(x.ChunkSize) < off+n; i++ {
			allStored = allStored && x.Chunks[i].Encoding != imagefmt.EncodingHole
		}
		if allStored {
			whole += n
		}
	}
	if st := tcp.Stats(); st.Spliced != whole || st.Errors != 0 {
		t.Errorf("over TCP: spliced %d bytes with %d errors, want %d (the requests of stored chunks only) and none", st.Spliced, st.Errors, whole)
	}
}

// shortFiles is a backend whose File names a file holding only the first
// half of its bytes: reads in the second half cannot be spliced (the file
// is shorter than promised) and must be answered with ReadAt, on the same
// connection. A stand-in for a cache file that fails to read, which no
// real cache hands out on purpose.
type shortFiles struct {
	data []byte
	half *os.File
}

func (b *shortFiles) Size() int64 { return int64(len(b.data)) }

func (b *shortFiles) ReadAt(_ context.Context, p []byte, off int64) (int, error) {
	n := copy(p, b.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (b *shortFiles) Files(off int64, n int, add func(*os.File, int64, int)) (func(), bool) {
	add(b.half, off, n)
	return func() {}, true
}

func TestSpliceFallsBackToReadAt(t *testing.T) {
	testutil.Require(t, false, "nbdcopy")
	data := make([]byte, 4<<20)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	half := filepath.Join(t.TempDir(), "half")
	if err := os.WriteFile(half, data[:2<<20], 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(half)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	srv, uri := listen(t, "unix", blockdev.Export{Name: "x", Backend: &shortFiles{data: data, half: f}})
	copyAll(t, uri, data, 64<<10)
	if st := srv.Stats(); st.Spliced != 2<<20 || st.Bytes != 4<<20 || st.Errors != 0 {
		t.Errorf("stats %+v: want the first 2 MiB spliced, all 4 MiB read, no errors", st)
	}
}
