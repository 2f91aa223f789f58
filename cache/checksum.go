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

// setCRC records data's CRC-32C on f, whose bytes data are. Best effort:
// where the filesystem keeps no user xattrs, the chunk is simply hashed
// on its first read after Open, as before.
func setCRC(f *os.File, data []byte) {
	_ = unix.Fsetxattr(int(f.Fd()), crcAttr, binary.BigEndian.AppendUint32(nil, crc32.Checksum(data, castagnoli)), 0)
}

// intact reports whether data, the whole content of f, are chunk d's
// bytes: by the CRC f carries when it matches, by the sha256 otherwise
// (recording the CRC for next time when they are).
func intact(f *os.File, d Digest, data []byte) bool {
	var v [4]byte
	if n, err := unix.Fgetxattr(int(f.Fd()), crcAttr, v[:]); err == nil && n == len(v) &&
		binary.BigEndian.Uint32(v[:]) == crc32.Checksum(data, castagnoli) {
		return true
	}
	if sha256.Sum256(data) != d {
		return false
	}
	setCRC(f, data)
	return true
}
