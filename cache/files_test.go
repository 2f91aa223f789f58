package cache

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
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
	s, err := Open([]string{dir}, n*size)
	if err != nil {
		t.Fatal(err)
	}
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
