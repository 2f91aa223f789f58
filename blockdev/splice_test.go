package blockdev_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/lazyblk/lazyblk/blockdev"
	"github.com/lazyblk/lazyblk/cache"
	"github.com/lazyblk/lazyblk/fetcher"
	"github.com/lazyblk/lazyblk/imagefmt"
	"github.com/lazyblk/lazyblk/internal/testutil"
	"golang.org/x/sys/unix"
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

// randomFile returns n random bytes and a file, open for reading until
// the test ends, holding the first keep of them.
func randomFile(t *testing.T, n, keep int) ([]byte, *os.File) {
	t.Helper()
	data := make([]byte, n)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(path, data[:keep], 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return data, f
}

// TestSpliceFallsBackToReadAt: a backend whose file holds only the first
// half of its bytes (a stand-in for a cache file that fails to read,
// which no real cache hands out on purpose): reads in the second half
// cannot be spliced (the file is shorter than promised) and are answered
// with ReadAt, on the same connections.
func TestSpliceFallsBackToReadAt(t *testing.T) {
	testutil.Require(t, false, "nbdcopy")
	data, f := randomFile(t, 4<<20, 2<<20)
	b := &plainFile{data: data, f: f, ready: true}
	srv, uri := listen(t, "unix", blockdev.Export{Name: "x", Backend: b})
	copyAll(t, uri, data, 64<<10)
	if st := srv.Stats(); st.Spliced != 2<<20 || st.Bytes != 4<<20 || st.Errors != 0 || b.reads.Load() == 0 {
		t.Errorf("stats %+v, %d ReadAt calls: want the first 2 MiB spliced, all 4 MiB read, some with ReadAt, no errors", st, b.reads.Load())
	}
}

// plainFile is a backend over a file (holding its bytes, or fewer) that
// counts how it was read: its files asked for at once (now, by the goroutine reading the connection's
// requests) or by one that may wait, and ReadAt.
type plainFile struct {
	data               []byte
	f                  *os.File
	ready              bool // Files with now finds the bytes ready
	now, waited, reads atomic.Int64
}

func (b *plainFile) Size() int64 { return int64(len(b.data)) }

func (b *plainFile) ReadAt(_ context.Context, p []byte, off int64) (int, error) {
	b.reads.Add(1)
	n := copy(p, b.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (b *plainFile) Files(off int64, n int, now bool, add func(*os.File, int64, int)) (func(), bool) {
	if now {
		b.now.Add(1)
		if !b.ready {
			return nil, false
		}
	} else {
		b.waited.Add(1)
	}
	add(b.f, off, n)
	return func() {}, true
}

// TestReadyReadsSplicedAtOnce: a read whose bytes are ready in files (the
// backend says so when asked "now", and the pages are in the page cache)
// is spliced by the goroutine that read the request, never handed to a
// worker; one whose file needs work first is asked for again by a
// worker, which may wait; one whose pages are not in memory goes to a
// worker with the files already found. Each way, every byte is spliced.
func TestReadyReadsSplicedAtOnce(t *testing.T) {
	testutil.Require(t, false, "nbdcopy")
	data, f := randomFile(t, 4<<20, 4<<20)
	const req = 64 << 10
	requests := int64(len(data) / req)
	read := func(ready bool) (*plainFile, blockdev.Stats) {
		t.Helper()
		b := &plainFile{data: data, f: f, ready: ready}
		srv, uri := listen(t, "unix", blockdev.Export{Name: "x", Backend: b})
		copyAll(t, uri, data, req)
		st := srv.Stats()
		if st.Spliced != int64(len(data)) || b.reads.Load() != 0 {
			t.Errorf("ready %v: %d bytes spliced, %d ReadAt calls: want all %d spliced, none read", ready, st.Spliced, b.reads.Load(), len(data))
		}
		return b, st
	}

	if _, err := io.Copy(io.Discard, f); err != nil { // into the page cache
		t.Fatal(err)
	}
	if b, st := read(true); b.now.Load() != requests || b.waited.Load() != 0 || st.AtOnce != requests {
		t.Errorf("bytes ready: %d asked now, %d by a worker, %d spliced at once; want all %d now and at once",
			b.now.Load(), b.waited.Load(), st.AtOnce, requests)
	}
	if b, st := read(false); b.now.Load() != requests || b.waited.Load() != requests || st.AtOnce != 0 {
		t.Errorf("bytes not ready: %d asked now, %d by a worker, %d spliced at once; want all %d both ways, none at once",
			b.now.Load(), b.waited.Load(), st.AtOnce, requests)
	}

	// Out of the page cache (the file is clean, so the kernel drops its
	// pages): the first reads go to workers with the files already found.
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Fatal(err)
	}
	var st unix.Cachestat_t
	if err := unix.Cachestat(uint(f.Fd()), &unix.CachestatRange{Len: req}, &st, 0); err != nil || st.Cache != 0 {
		t.Fatalf("the file's first %d bytes still have %d pages in the page cache (%v)", req, st.Cache, err)
	}
	// The read at 0 at least: readahead runs forwards, no other read
	// brings its pages in first.
	if b, st := read(true); b.now.Load() != requests || b.waited.Load() != 0 || st.AtOnce >= requests {
		t.Errorf("pages on disk: %d asked now, %d by a worker, %d spliced at once; want all %d now (a worker is handed the files), not all at once",
			b.now.Load(), b.waited.Load(), st.AtOnce, requests)
	}
}
