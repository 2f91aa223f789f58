package cache

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

func chunk(i, size int) ([]byte, Digest) {
	b := bytes.Repeat([]byte(fmt.Sprintf("chunk %06d|", i)), size/12+1)[:size]
	return b, sha256.Sum256(b)
}

// openStore opens a store over dirs, failing the test if it cannot.
func openStore(t testing.TB, dirs []string, capacity int64) *Store {
	t.Helper()
	s, err := Open(dirs, capacity)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func mustGet(t *testing.T, s *Store, d Digest, size int) ([]byte, bool) {
	t.Helper()
	buf := make([]byte, size)
	ok, err := s.ReadAt(context.Background(), d, int64(size), buf, 0)
	if err != nil {
		t.Fatal(err)
	}
	return buf, ok
}

func TestPutGet(t *testing.T) {
	s := openStore(t, []string{t.TempDir()}, 1<<20)
	b, d := chunk(1, 4096)
	if _, ok := mustGet(t, s, d, 4096); ok {
		t.Fatal("hit on an empty store")
	}
	if err := s.Put(context.Background(), d, b); err != nil {
		t.Fatal(err)
	}
	got, ok := mustGet(t, s, d, 4096)
	if !ok || !bytes.Equal(got, b) {
		t.Fatal("miss or wrong bytes after Put")
	}
	bad := append([]byte(nil), b...)
	bad[0] ^= 1
	if err := s.Put(context.Background(), sha256.Sum256([]byte("other")), bad); !errors.Is(err, ErrCorrupt) {
		t.Errorf("Put of bytes not matching the digest: %v", err)
	}
	b2, d2 := chunk(2, 4096)
	if err := s.PutVerified(context.Background(), d2, b2, ReadLater); err != nil {
		t.Fatal(err)
	}
	if got, ok := mustGet(t, s, d2, 4096); !ok || !bytes.Equal(got, b2) {
		t.Fatal("miss or wrong bytes after PutVerified")
	}
	st := s.Stats()
	if st.Hits != 2 || st.Misses != 1 || st.Chunks != 2 || st.Used != 8192 {
		t.Errorf("stats %+v", st)
	}
}

// TestRestart: a reopened store reuses valid chunks, removes temp files,
// and detects a chunk corrupted while no process ran.
func TestRestart(t *testing.T) {
	dirs := []string{t.TempDir(), t.TempDir()}
	s, err := Open(dirs, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	var ds []Digest
	for i := range 8 {
		b, d := chunk(i, 8192)
		if err := s.Put(context.Background(), d, b); err != nil {
			t.Fatal(err)
		}
		ds = append(ds, d)
	}
	bad := s.path(s.stripeOf(ds[3]), ds[3])
	if err := os.WriteFile(bad, bytes.Repeat([]byte("x"), 8192), 0o600); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(filepath.Dir(bad), tmpPrefix+"torn")
	if err := os.WriteFile(tmp, []byte("half a chunk"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A temp file of a process that still runs (another mount sharing the
	// cache, here this test's parent) is a write in flight: it stays.
	live := filepath.Join(filepath.Dir(bad), fmt.Sprintf("%s%d-x", tmpPrefix, os.Getppid()))
	if err := os.WriteFile(live, []byte("being written"), 0o600); err != nil {
		t.Fatal(err)
	}

	s2, err := Open(dirs, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(tmp); !os.IsNotExist(err) {
		t.Error("torn temp file survived Open")
	}
	if _, err := os.Stat(live); err != nil {
		t.Errorf("Open removed the temp file of a live writer: %v", err)
	}
	for i, d := range ds {
		want, _ := chunk(i, 8192)
		got, ok := mustGet(t, s2, d, 8192)
		switch {
		case i == 3 && ok:
			t.Error("corrupted chunk served after restart")
		case i != 3 && (!ok || !bytes.Equal(got, want)):
			t.Errorf("chunk %d not reused after restart", i)
		}
	}
	if s2.Stats().Corrupt != 1 {
		t.Errorf("corrupt count %d, want 1", s2.Stats().Corrupt)
	}
	if _, err := os.Stat(bad); !os.IsNotExist(err) {
		t.Error("corrupt chunk file not removed")
	}
}

func TestEvictionAndStripes(t *testing.T) {
	dirs := []string{t.TempDir(), t.TempDir(), t.TempDir(), t.TempDir()}
	const size, capacity = 4096, 10 * 4096
	s, err := Open(dirs, capacity)
	if err != nil {
		t.Fatal(err)
	}
	var ds []Digest
	for i := range 40 {
		b, d := chunk(i, size)
		if err := s.Put(context.Background(), d, b); err != nil {
			t.Fatal(err)
		}
		ds = append(ds, d)
		if i == 5 { // keep an early chunk hot
			mustGet(t, s, ds[0], size)
		}
	}
	st := s.Stats()
	if st.Used > capacity || st.Chunks != 10 || st.Evictions != 30 {
		t.Errorf("after 40 puts into room for 10: %+v", st)
	}
	if _, ok := mustGet(t, s, ds[39], size); !ok {
		t.Error("most recent chunk evicted")
	}
	var onDisk int
	for i, sp := range st.Stripes {
		if sp.BytesWritten == 0 {
			t.Errorf("stripe %d received no writes", i)
		}
		n, _ := filepath.Glob(filepath.Join(dirs[i], chunkDir, "*", "*"))
		onDisk += len(n)
	}
	if onDisk != 10 {
		t.Errorf("%d chunk files on disk, want 10", onDisk)
	}
}

// TestLowWatermark: a store past its capacity evicts down to the low
// watermark at once, then takes puts without evicting until it is full
// again.
func TestLowWatermark(t *testing.T) {
	const size, capacity = 4096, 10 * 4096
	s, err := Open([]string{t.TempDir()}, capacity, WithLowWatermark(0.5))
	if err != nil {
		t.Fatal(err)
	}
	put := func(i int) Stats {
		b, d := chunk(i, size)
		if err := s.Put(context.Background(), d, b); err != nil {
			t.Fatal(err)
		}
		return s.Stats()
	}
	for i := range 10 {
		if st := put(i); st.Evictions != 0 {
			t.Fatalf("evicted below capacity: %+v", st)
		}
	}
	if st := put(10); st.Used != capacity/2 || st.Evictions != 6 {
		t.Fatalf("the put past capacity: %+v, want 6 evictions down to half", st)
	}
	for i := 11; i < 16; i++ {
		if st := put(i); st.Evictions != 6 {
			t.Fatalf("put %d evicted again before the store was full: %+v", i, st)
		}
	}
	if _, err := Open([]string{t.TempDir()}, capacity, WithLowWatermark(1.5)); err == nil {
		t.Error("a low watermark above 1 was accepted")
	}
}

// TestPinnedNeverEvicted: pinned chunks stay however much else is put;
// the unpinned ones go first, least recently used first.
func TestPinnedNeverEvicted(t *testing.T) {
	const size, capacity = 4096, 4 * 4096
	_, first := chunk(0, size)
	_, second := chunk(1, size)
	s, err := Open([]string{t.TempDir()}, capacity, WithPinned(func(d Digest) bool { return d == first || d == second }))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		b, d := chunk(i, size)
		if err := s.Put(context.Background(), d, b); err != nil {
			t.Fatal(err)
		}
	}
	if !s.Has(first) || !s.Has(second) {
		t.Error("a pinned chunk was evicted")
	}
	if st := s.Stats(); st.Used != capacity || st.Evictions != 16 {
		t.Errorf("after 20 puts with 2 pinned into room for 4: %+v", st)
	}
	if _, d := chunk(19, size); !s.Has(d) {
		t.Error("the newest chunk was evicted instead of older unpinned ones")
	}
}

func TestConcurrent(t *testing.T) {
	s := openStore(t, []string{t.TempDir(), t.TempDir()}, 32*4096)
	var wg sync.WaitGroup
	for g := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				b, d := chunk((g+i)%48, 4096)
				if err := s.Put(context.Background(), d, b); err != nil {
					t.Error(err)
					return
				}
				got := make([]byte, 1000)
				if ok, err := s.ReadAt(context.Background(), d, 4096, got, 96); err != nil || (ok && !bytes.Equal(got, b[96:1096])) {
					t.Errorf("get: %v", err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if st := s.Stats(); st.Used > st.Capacity {
		t.Errorf("over capacity: %+v", st)
	}
}

// TestFirstReadsShareOneCheck: after a restart, many readers arriving at
// once at an unverified chunk (as an NBD client's parallel requests do)
// share one read and hash of it: a corrupt chunk is counted and removed
// once, a good one serves every slice.
func TestFirstReadsShareOneCheck(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, []string{dir}, 1<<24)
	const size = 1 << 20
	good, dg := chunk(1, size)
	bad, db := chunk(2, size)
	for _, c := range []struct {
		b []byte
		d Digest
	}{{good, dg}, {bad, db}} {
		if err := s.Put(context.Background(), c.d, c.b); err != nil {
			t.Fatal(err)
		}
	}
	corrupt := bytes.Clone(bad)
	corrupt[size/2] ^= 1
	if err := os.WriteFile(s.path(s.stripeOf(db), db), corrupt, 0o600); err != nil {
		t.Fatal(err)
	}
	s2 := openStore(t, []string{dir}, 1<<24)
	const readers = 32
	slice := size / readers
	var wg sync.WaitGroup
	for i := range readers {
		wg.Add(2)
		go func() {
			defer wg.Done()
			p := make([]byte, slice)
			ok, err := s2.ReadAt(context.Background(), dg, size, p, int64(i*slice))
			if err != nil || !ok || !bytes.Equal(p, good[i*slice:(i+1)*slice]) {
				t.Errorf("good chunk slice %d: ok=%v err=%v or wrong bytes", i, ok, err)
			}
		}()
		go func() {
			defer wg.Done()
			p := make([]byte, slice)
			if ok, err := s2.ReadAt(context.Background(), db, size, p, int64(i*slice)); err != nil || ok {
				t.Errorf("corrupt chunk slice %d served: ok=%v err=%v", i, ok, err)
			}
		}()
	}
	wg.Wait()
	if st := s2.Stats(); st.Corrupt != 1 || st.Hits != readers {
		t.Errorf("stats %+v: want 1 corrupt, %d hits", st, readers)
	}
}

// TestRescanSharedDirs: two stores (two serving processes) share a
// directory, each bounded to 10 chunks, and each puts 10 of its own: 20
// files. After Rescan the directory holds 10 again and both stores
// account exactly what is on disk.
func TestRescanSharedDirs(t *testing.T) {
	dir := t.TempDir()
	const size, capacity = 4096, 10 * 4096
	a := openStore(t, []string{dir}, capacity)
	b := openStore(t, []string{dir}, capacity)
	for i := range 20 {
		s := a
		if i >= 10 {
			s = b
		}
		data, d := chunk(i, size)
		if err := s.Put(context.Background(), d, data); err != nil {
			t.Fatal(err)
		}
	}
	onDisk := func() int64 {
		files, _ := filepath.Glob(filepath.Join(dir, chunkDir, "*", "*"))
		return int64(len(files)) * size
	}
	if n := onDisk(); n != 2*capacity {
		t.Fatalf("%d bytes on disk before the rescans, want %d", n, 2*capacity)
	}
	for _, s := range []*Store{a, b} {
		if err := s.Rescan(); err != nil {
			t.Fatal(err)
		}
	}
	if n := onDisk(); n != capacity {
		t.Errorf("%d bytes on disk after the rescans, want the capacity %d", n, capacity)
	}
	for name, s := range map[string]*Store{"a": a, "b": b} {
		if st := s.Stats(); st.Used != onDisk() {
			t.Errorf("store %s accounts %d bytes, %d are on disk", name, st.Used, onDisk())
		}
	}
	// What a evicted of b's is a miss for b, never an error.
	for i := 10; i < 20; i++ {
		data, d := chunk(i, size)
		p := make([]byte, size)
		if hit, err := b.ReadAt(context.Background(), d, size, p, 0); err != nil || (hit && !bytes.Equal(p, data)) {
			t.Fatalf("chunk %d after the rescans: hit %v, %v", i, hit, err)
		}
	}
}
