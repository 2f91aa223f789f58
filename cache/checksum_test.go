package cache

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

func readCRC(t *testing.T, path string) (uint32, bool) {
	t.Helper()
	var v [4]byte
	n, err := unix.Getxattr(path, crcAttr, v[:])
	if errors.Is(err, unix.ENODATA) {
		return 0, false
	}
	if err != nil || n != len(v) {
		t.Fatalf("getxattr %s: %d bytes, %v", path, n, err)
	}
	return binary.BigEndian.Uint32(v[:]), true
}

func writeCRC(t *testing.T, path string, crc uint32) {
	t.Helper()
	if err := unix.Setxattr(path, crcAttr, binary.BigEndian.AppendUint32(nil, crc), 0); err != nil {
		t.Fatal(err)
	}
}

// TestFirstReadChecksByCRC: Put records each chunk's CRC-32C with it, and
// the first read after a restart checks a chunk by it: a chunk without
// one, or with a wrong one, is checked by its sha256 (and given the right
// CRC when intact), a chunk whose bytes changed under its CRC is removed.
func TestFirstReadChecksByCRC(t *testing.T) {
	dir := t.TempDir()
	if err := unix.Setxattr(dir, "user.lazyblk.probe", []byte{1}, 0); err != nil {
		if os.Getenv("CI") != "" { // as testutil.InCI, which imports this package
			t.Fatalf("CI's temp directory must keep user xattrs: %v", err)
		}
		t.Skipf("the temp directory's filesystem keeps no user xattrs: %v", err)
	}
	const size = checkPiece + 8192 // checked in two pieces, the second short
	s := openStore(t, []string{dir}, 16<<20)
	var data [][]byte
	var ds []Digest
	for i := range 5 {
		b, d := chunk(i, size)
		if err := s.Put(context.Background(), d, b); err != nil {
			t.Fatal(err)
		}
		if crc, ok := readCRC(t, s.path(0, d)); !ok || crc != crc32.Checksum(b, castagnoli) {
			t.Fatalf("chunk %d put with CRC %#x (present %v), want %#x", i, crc, ok, crc32.Checksum(b, castagnoli))
		}
		data, ds = append(data, b), append(ds, d)
	}
	path := func(i int) string { return s.path(0, ds[i]) }
	// 0 stays as Put left it. 1 lost its CRC (written by an older version).
	if err := unix.Removexattr(path(1), crcAttr); err != nil {
		t.Fatal(err)
	}
	// 2's CRC is wrong, its bytes intact.
	writeCRC(t, path(2), 12345)
	// 3's last byte changed under its CRC: corrupt.
	flipped := bytes.Clone(data[3])
	flipped[size-1] ^= 1
	if err := os.WriteFile(path(3), flipped, 0o600); err != nil {
		t.Fatal(err)
	}
	other := bytes.Repeat([]byte{0xa5}, size)
	// 4's bytes were rewritten together with a matching CRC, which takes
	// write access to the cache directory: the CRC vouches for them. The
	// test uses it to see that the first read trusts the CRC rather than
	// hashing the chunk; it is the boundary the CRC draws, not a feature.
	if err := os.WriteFile(path(4), other, 0o600); err != nil {
		t.Fatal(err)
	}
	writeCRC(t, path(4), crc32.Checksum(other, castagnoli))

	s2 := openStore(t, []string{dir}, 16<<20)
	for i, want := range [][]byte{data[0], data[1], data[2], nil, other} {
		got, ok := mustGet(t, s2, ds[i], size)
		if want == nil {
			if ok {
				t.Errorf("chunk %d, changed under its CRC, was served", i)
			}
			continue
		}
		if !ok || !bytes.Equal(got, want) {
			t.Errorf("chunk %d: served %v, right bytes %v", i, ok, bytes.Equal(got, want))
		}
	}
	if s2.Stats().Corrupt != 1 || s2.Has(ds[3]) {
		t.Errorf("corrupt count %d, chunk 3 still cached %v; want 1, false", s2.Stats().Corrupt, s2.Has(ds[3]))
	}
	for _, i := range []int{1, 2} {
		if crc, ok := readCRC(t, path(i)); !ok || crc != crc32.Checksum(data[i], castagnoli) {
			t.Errorf("chunk %d after its sha256 check: CRC %#x (present %v), want %#x", i, crc, ok, crc32.Checksum(data[i], castagnoli))
		}
	}
}

// TestChangedUnderLiveStore: a chunk file written to while the store
// runs (a stray write after the chunk was checked and read) is checked
// again before its next read, through ReadAt and through File: removed,
// never served. The chunk's bytes otherwise keep being served.
func TestChangedUnderLiveStore(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, []string{dir}, 16<<20)
	const size = 256 << 10
	for _, viaFile := range []bool{false, true} {
		data, d := chunk(map[bool]int{false: 1, true: 2}[viaFile], size)
		if err := s.Put(context.Background(), d, data); err != nil {
			t.Fatal(err)
		}
		if got, ok := mustGet(t, s, d, size); !ok || !bytes.Equal(got, data) {
			t.Fatalf("fresh chunk: served %v", ok)
		}
		f, err := os.OpenFile(s.path(s.stripeOf(d), d), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteAt([]byte{data[1000] ^ 0xff}, 1000)
		f.Close()
		corrupt := s.Stats().Corrupt
		if viaFile {
			if _, release, ok := s.File(d, size, false); ok {
				release()
				t.Error("File handed out a chunk file written to after its check")
			}
		} else if _, ok := mustGet(t, s, d, size); ok {
			t.Error("ReadAt served a chunk file written to after its check")
		}
		if s.Stats().Corrupt != corrupt+1 || s.Has(d) {
			t.Errorf("via File %v: corrupt %d (was %d), still cached %v", viaFile, s.Stats().Corrupt, corrupt, s.Has(d))
		}
	}
}

// TestWrittenDuringCheck: a chunk file written to while a new store
// checks it (here, right after its bytes were found intact) is not
// recorded as checked with the write in it: the check sees the ctime move,
// checks again, finds the flipped byte and drops the chunk.
func TestWrittenDuringCheck(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, []string{dir}, 16<<20)
	const size = 256 << 10
	data, d := chunk(3, size)
	if err := s.Put(context.Background(), d, data); err != nil {
		t.Fatal(err)
	}
	s2 := openStore(t, []string{dir}, 16<<20) // a new process: its first read checks
	flipped := false
	testHookChecked = func(*os.File) {
		if flipped {
			return
		}
		flipped = true
		w, err := os.OpenFile(s2.path(s2.stripeOf(d), d), os.O_RDWR, 0)
		if err != nil {
			t.Error(err)
			return
		}
		defer w.Close()
		if _, err := w.WriteAt([]byte{data[5000] ^ 0xff}, 5000); err != nil {
			t.Error(err)
		}
	}
	defer func() { testHookChecked = nil }()
	got, ok := mustGet(t, s2, d, size)
	if !flipped {
		t.Fatal("the read did not check the chunk")
	}
	if ok {
		t.Errorf("a chunk written to during its check was served (bytes exact: %v)", bytes.Equal(got, data))
	}
	if s2.Stats().Corrupt != 1 || s2.Has(d) {
		t.Errorf("corrupt %d, still cached %v; want 1 and dropped", s2.Stats().Corrupt, s2.Has(d))
	}
}
