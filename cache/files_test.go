package cache

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// openChunkFiles counts this process's descriptors open on files under
// dir, and those whose file has been deleted.
func openChunkFiles(t *testing.T, dir string) (open, deleted int) {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	for _, fd := range fds {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name()))
		if err == nil && strings.HasPrefix(target, dir) {
			open++
			if strings.HasSuffix(target, " (deleted)") {
				deleted++
			}
		}
	}
	return open, deleted
}

// TestOpenFilesBounded: reads keep chunk files open for the next read (one
// descriptor per chunk however often it is read), never more than
// maxOpenFiles, none of an evicted chunk, and none after CloseIdleFiles.
func TestOpenFilesBounded(t *testing.T) {
	dir := t.TempDir()
	const size, n = 1024, maxOpenFiles + 20
	s := openStore(t, []string{dir}, n*size)
	var ds []Digest
	for i := range n {
		b, d := chunk(i, size)
		if err := s.Put(context.Background(), d, b); err != nil {
			t.Fatal(err)
		}
		ds = append(ds, d)
	}
	for range 3 {
		if _, ok := mustGet(t, s, ds[0], size); !ok {
			t.Fatal("miss")
		}
	}
	if open, _ := openChunkFiles(t, dir); open != 1 {
		t.Fatalf("%d files open after three reads of one chunk, want 1", open)
	}
	for i, d := range ds {
		b, ok := mustGet(t, s, d, size)
		if want, _ := chunk(i, size); !ok || string(b) != string(want) {
			t.Fatal("miss or wrong bytes")
		}
	}
	if open, _ := openChunkFiles(t, dir); open != maxOpenFiles {
		t.Fatalf("%d files open after reading %d chunks, want the bound %d", open, n, maxOpenFiles)
	}
	// Shrinking the store evicts the least recently used, whose files were
	// closed first; the open ones evicted now must be closed too.
	if err := s.SetCapacity(10 * size); err != nil {
		t.Fatal(err)
	}
	if open, deleted := openChunkFiles(t, dir); open > 10 || deleted != 0 {
		t.Fatalf("after eviction to 10 chunks: %d files open, %d of them deleted", open, deleted)
	}
	s.CloseIdleFiles()
	if open, _ := openChunkFiles(t, dir); open != 0 {
		t.Fatalf("%d files open after CloseIdleFiles", open)
	}
	if _, ok := mustGet(t, s, ds[n-1], size); !ok {
		t.Fatal("the most recent chunk is not readable after CloseIdleFiles")
	}
}

// resident counts the pages of path in the page cache (mincore).
func resident(t *testing.T, path string) int {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	info, _ := f.Stat()
	m, err := unix.Mmap(int(f.Fd()), 0, int(info.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	vec := make([]byte, (len(m)+os.Getpagesize()-1)/os.Getpagesize())
	if _, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&vec[0]))); errno != 0 {
		t.Fatal(errno)
	}
	n := 0
	for _, v := range vec {
		n += int(v & 1)
	}
	return n
}

// readBytes is this process's bytes read from storage (/proc/self/io),
// counted when the reads are submitted.
func readBytes(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/io")
	if err != nil {
		t.Skipf("no I/O accounting: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "read_bytes: "); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("no read_bytes in /proc/self/io:\n%s", b)
	return 0
}

// TestWillNeed: WillNeed has the kernel read a cached chunk's file from
// the disk (the reads are submitted when it returns, so counted in
// /proc/self/io); for a chunk not cached it does nothing.
func TestWillNeed(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, []string{dir}, 1<<30)
	const size = 1 << 20
	b, d := chunk(1, size)
	if err := s.Put(context.Background(), d, b); err != nil {
		t.Fatal(err)
	}
	path := s.path(0, d)
	evict(t, path)
	hintReads(t, "WillNeed", s.WillNeed, d, size)
	if got, ok := mustGet(t, s, d, size); !ok || string(got) != string(b) {
		t.Fatal("miss or wrong bytes after WillNeed")
	}
	if n, want := resident(t, path), size/os.Getpagesize(); n != want {
		t.Fatalf("%d of %d pages resident after a read of the whole chunk", n, want)
	}
}

// evict drops the file at path from the page cache (a chunk is synced
// when written: its pages are clean). A filesystem that keeps them (tmpfs)
// skips the test, except in CI, whose temp dirs are on a disk.
func evict(t *testing.T, path string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	err = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	if n := resident(t, path); n != 0 {
		if os.Getenv("CI") != "" {
			t.Fatalf("%d pages of %s stay resident after FADV_DONTNEED in CI", n, path)
		}
		t.Skipf("this filesystem keeps %d pages of the file resident after FADV_DONTNEED (tmpfs?)", n)
	}
}

// hintReads checks that hint has nothing read from storage for a chunk
// not cached, and the whole of chunk d, cached and evicted, by the time it
// returns.
func hintReads(t *testing.T, what string, hint func(Digest), d Digest, size int) {
	t.Helper()
	before := readBytes(t)
	_, missing := chunk(999, size)
	hint(missing)
	if n := readBytes(t) - before; n != 0 {
		t.Errorf("%s of a chunk not cached read %d bytes", what, n)
	}
	hint(d)
	if n := readBytes(t) - before; n < int64(size) {
		t.Fatalf("%s had %d bytes read from storage, want the chunk's %d", what, n, size)
	}
}

// restartedWithCorrupt puts two chunks of size in a new store, good one gd
// and one bd whose file it then overwrites with zeros, calls before (if
// any) and returns the store opened again (a restart: nothing checked).
func restartedWithCorrupt(t *testing.T, size int, before func(s *Store, gd Digest)) (s2 *Store, good []byte, gd, bd Digest) {
	t.Helper()
	dir := t.TempDir()
	s := openStore(t, []string{dir}, 1<<30)
	good, gd = chunk(1, size)
	bad, bd := chunk(2, size)
	for _, c := range []struct {
		b []byte
		d Digest
	}{{good, gd}, {bad, bd}} {
		if err := s.Put(context.Background(), c.d, c.b); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(s.path(0, bd), make([]byte, size), 0o600); err != nil {
		t.Fatal(err)
	}
	if before != nil {
		before(s, gd)
	}
	return openStore(t, []string{dir}, 1<<30), good, gd, bd
}

// TestPreload: after a restart, Preload has the kernel read a cached
// chunk's file (the bytes are counted as this process's reads when the
// request is submitted, before Preload returns) and checks nothing: the
// chunk is checked on its first read, and a corrupt one preloaded is
// still found and never served.
func TestPreload(t *testing.T) {
	const size = 1 << 20
	s2, good, gd, bd := restartedWithCorrupt(t, size, func(s *Store, gd Digest) { evict(t, s.path(0, gd)) })
	hintReads(t, "Preload", s2.Preload, gd, size)
	if s2.Ready(gd) {
		t.Error("Preload counted a chunk as checked")
	}
	if got, ok := mustGet(t, s2, gd, size); !ok || string(got) != string(good) {
		t.Error("miss or wrong bytes after Preload")
	}
	s2.Preload(bd)
	if _, ok := mustGet(t, s2, bd, size); ok || s2.Stats().Corrupt != 1 {
		t.Errorf("a corrupt chunk preloaded: served %v, corrupt count %d; want a miss, 1", ok, s2.Stats().Corrupt)
	}
}

// TestWillNeedChecksAhead: after a restart, WillNeed reads and verifies a
// chunk not yet checked, so the reader that arrives next reads only what
// it asks for; a corrupt chunk is found and removed by WillNeed, before
// any reader reaches it.
func TestWillNeedChecksAhead(t *testing.T) {
	const size = 1 << 20
	s2, good, gd, bd := restartedWithCorrupt(t, size, nil)
	badPath := s2.path(0, bd)
	if _, ok := s2.verified.Load(gd); ok {
		t.Fatal("a chunk counts as checked right after Open")
	}
	s2.WillNeed(gd)
	if _, ok := s2.verified.Load(gd); !ok {
		t.Error("WillNeed did not check a chunk not yet checked")
	}
	s2.WillNeed(bd)
	if s2.Has(bd) || s2.Stats().Corrupt != 1 {
		t.Errorf("after WillNeed of a corrupt chunk: cached %v, corrupt count %d; want removed, 1", s2.Has(bd), s2.Stats().Corrupt)
	}
	if _, err := os.Stat(badPath); !os.IsNotExist(err) {
		t.Error("corrupt chunk file not removed by WillNeed")
	}
	if got, ok := mustGet(t, s2, gd, size); !ok || string(got) != string(good) {
		t.Error("miss or wrong bytes after WillNeed checked the chunk")
	}
	if _, ok := mustGet(t, s2, bd, size); ok {
		t.Error("the corrupt chunk was served")
	}
}

// TestDirectWrites: an aligned chunk read later is written around the
// page cache (O_DIRECT: the fetcher has the bytes in memory already, and
// nobody is about to read them), an unaligned one or one read soon
// through it; all read back exactly.
func TestDirectWrites(t *testing.T) {
	dir := t.TempDir()
	probe, err := os.OpenFile(filepath.Join(dir, "probe"), os.O_CREATE|os.O_WRONLY|unix.O_DIRECT, 0o600)
	if err != nil {
		t.Skipf("the test directory's filesystem refuses O_DIRECT: %v", err)
	}
	probe.Close()
	s := openStore(t, []string{dir}, 1<<30)
	aligned := func(i int) ([]byte, Digest) {
		buf := make([]byte, 1<<20+4096)
		start := (4096 - int(uintptr(unsafe.Pointer(&buf[0]))%4096)) % 4096
		b, d := chunk(i, 1<<20)
		return append(buf[start:start], b...), d
	}
	later, dlater := aligned(1)
	soon, dsoon := aligned(3)
	odd, dodd := chunk(2, 1<<20-512)
	for _, c := range []struct {
		data     []byte
		d        Digest
		when     When
		resident bool
	}{{later, dlater, ReadLater, false}, {odd, dodd, ReadLater, true}, {soon, dsoon, ReadSoon, true}} {
		if err := s.PutVerified(context.Background(), c.d, c.data, c.when); err != nil {
			t.Fatal(err)
		}
		if n := resident(t, s.path(0, c.d)); (n > 0) != c.resident {
			t.Errorf("chunk of %d bytes, read soon %v: %d pages in the page cache after the write, want resident %v", len(c.data), c.when, n, c.resident)
		}
		if got, ok := mustGet(t, s, c.d, len(c.data)); !ok || string(got) != string(c.data) {
			t.Fatalf("chunk of %d bytes: miss or wrong bytes", len(c.data))
		}
	}
}
