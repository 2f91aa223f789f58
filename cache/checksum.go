package cache

import (
	"crypto/sha256"
	"encoding/binary"
	"hash/crc32"
	"os"

	"golang.org/x/sys/unix"
)

// crcAttr names the extended attribute in which a chunk file carries the
// CRC-32C of its bytes, written with them by Put. The first read of a
// chunk after Open checks the file against it: what it must catch is a
// file changed on disk while no process watched (bit rot, a torn copy, a
// stray write), and a CRC-32C does that 16 times faster than the sha256
// (18 GB/s against 1.2 GB/s on one core, measured), which made the first
// read of a cached image after a restart, or by a new mount, hash its way
// through every chunk. The sha256 still decides everything the CRC cannot
// vouch for: a file without the attribute (written by an older version or
// on a filesystem without user xattrs) or whose CRC does not match is
// hashed, then removed if corrupt, or given its CRC if not. Every byte
// entering the cache was checked against its sha256 first, so a match
// means these are those bytes; writing a chunk file together with a
// matching CRC takes write access to the cache directories, which are the
// fetcher's own (0700).
const crcAttr = "user.lazyblk.crc32c"

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// storeCRC records crc, the CRC-32C of f's bytes, on f. Best effort:
// where the filesystem keeps no user xattrs, the chunk is simply hashed
// on its first read after Open.
func storeCRC(f *os.File, crc uint32) {
	_ = unix.Fsetxattr(int(f.Fd()), crcAttr, binary.BigEndian.AppendUint32(nil, crc), 0)
}

// checkPiece is how much of a chunk a check reads at once: small enough
// to stay in the CPU's cache between the read that copies it there and
// the checksum that reads it, where a whole 4 MiB chunk went to memory
// and back (measured, a first read of a cached image after a restart:
// the copy and the CRC took 16 and 15% of the serving process's samples,
// both waiting on memory).
const checkPiece = 256 << 10

// intact reports whether f, of size bytes, holds chunk d's bytes: by the
// CRC it carries when that matches, by the sha256 otherwise (recording
// the CRC for next time when they are), reading it through buf, of
// checkPiece bytes. A read error is reported as such.
func intact(f *os.File, size int64, d Digest, buf []byte) (bool, error) {
	var v [4]byte
	if n, err := unix.Fgetxattr(int(f.Fd()), crcAttr, v[:]); err == nil && n == len(v) {
		crc := uint32(0)
		err := pieces(f, size, buf, func(p []byte) { crc = crc32.Update(crc, castagnoli, p) })
		if err != nil || crc == binary.BigEndian.Uint32(v[:]) {
			return err == nil, err
		}
	}
	h, crc := sha256.New(), uint32(0)
	if err := pieces(f, size, buf, func(p []byte) { h.Write(p); crc = crc32.Update(crc, castagnoli, p) }); err != nil {
		return false, err
	}
	if Digest(h.Sum(nil)) != d {
		return false, nil
	}
	storeCRC(f, crc)
	return true, nil
}

// pieces reads f's size bytes through buf, handing each piece to use.
func pieces(f *os.File, size int64, buf []byte, use func([]byte)) error {
	for off := int64(0); off < size; {
		n := int(min(int64(len(buf)), size-off))
		if _, err := f.ReadAt(buf[:n], off); err != nil {
			return err
		}
		use(buf[:n])
		off += int64(n)
	}
	return nil
}
