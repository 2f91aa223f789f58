package testutil

import (
	"archive/tar"
	"bytes"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// capability is a real security.capability value (cap_net_raw+ep, v2).
var capability = string([]byte{0, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})

func withXattrs(e Entry, kv ...string) Entry {
	e.Hdr.PAXRecords = map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		e.Hdr.PAXRecords["SCHILY.xattr."+kv[i]] = kv[i+1]
	}
	return e
}

func owned(e Entry, uid, gid int) Entry {
	e.Hdr.Uid, e.Hdr.Gid = uid, gid
	return e
}

// CaseLayers returns layers that exercise every flattening rule lazyblk
// promises: whiteouts and opaque directories, hardlinks (within a layer,
// across layers, to files later replaced), symlinks of every kind, a
// directory replaced by a file and back, special mode bits, large ids,
// mtimes, xattrs, device nodes and fifos, PAX long names, empty files,
// files with zero runs, empty layers, and gzip / zstd (when zstd is set) /
// uncompressed blobs.
func CaseLayers(t testing.TB, docker, zstd bool) []v1.Layer {
	long := strings.Repeat("n", 200)
	deep := strings.Repeat("d/", 60) + "deepfile"
	var deepDirs []Entry
	for i := 1; i <= 60; i++ {
		deepDirs = append(deepDirs, Dir(strings.Repeat("d/", i), 0o755))
	}
	zeros := append(bytes.Repeat([]byte{0}, 3<<20), []byte("tail")...)
	mixed := append(append([]byte("head"), bytes.Repeat([]byte{0}, 5<<20)...), bytes.Repeat([]byte("x"), 1<<20)...)
	l0 := []Entry{
		Dir("etc/", 0o755), File("etc/passwd", 0o644, "root:x:0:0::/root:/bin/sh\n"),
		Dir("usr/", 0o755), Dir("usr/bin/", 0o755),
		File("usr/bin/su", 0o4755, "setuid"), owned(File("usr/bin/wall", 0o2755, "setgid"), 0, 5),
		Dir("tmp/", 0o1777),
		owned(File("bigid", 0o600, "large ids"), 100000000, 200000000),
		withXattrs(File("usr/bin/ping", 0o755, "ping"), "security.capability", capability, "user.comment", "hello"),
		withXattrs(Dir("xdir/", 0o750), "trusted.note", "dir xattr"),
		File("usr/bin/a", 0o755, "hardlinked content"), Link("usr/bin/b", "usr/bin/a"), Link("usr/bin/c", "usr/bin/a"),
		Dir("old/", 0o755), File("old/target", 0o644, "original target"), Link("hl-later", "old/target"),
		Symlink("abs", "/etc/passwd"), Symlink("usr/rel", "../etc/passwd"), Symlink("dangling", "/nope/nowhere"),
		Dir("dev/", 0o755), Node("dev/null", tar.TypeChar, 1, 3), Node("dev/sda", tar.TypeBlock, 8, 0),
		Node("dev/big", tar.TypeChar, 300, 70000), Node("fifo", tar.TypeFifo, 0, 0),
		Dir("long/", 0o755), File("long/"+long, 0o644, "long name"),
	}
	l0 = append(l0, deepDirs...)
	l0 = append(l0, []Entry{
		File(deep, 0o644, "deep path"),
		File("empty", 0o644, ""),
		{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "zeros", Mode: 0o644, Size: int64(len(zeros)), ModTime: T, Format: tar.FormatPAX}, Data: zeros},
		{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "mixed", Mode: 0o644, Size: int64(len(mixed)), ModTime: T, Format: tar.FormatPAX}, Data: mixed},
		Dir("opq/", 0o755), File("opq/old1", 0o644, "1"), File("opq/old2", 0o644, "2"),
		Dir("d2f/", 0o755), File("d2f/child", 0o644, "child"),
		File("f2d", 0o644, "file"),
		Dir("gone/", 0o755), File("gone/x", 0o644, "x"), File("whited", 0o644, "w"),
	}...)
	l1 := []Entry{
		File("opq/.wh..wh..opq", 0o644, ""), File("opq/new", 0o644, "new"),
		File("old/target", 0o644, "replaced target"),
		Link("cross", "usr/bin/a"),
		File("d2f", 0o640, "was a dir"),
		Dir("f2d/", 0o711), File("f2d/inside", 0o644, "inside"),
		File(".wh.gone", 0o644, ""), File(".wh.whited", 0o644, ""),
		File("usr/bin/su", 0o4711, "setuid v2"),
		File("etc/hostname", 0o644, "lazyblk\n"),
	}
	l2 := []Entry{} // an empty layer
	l3 := []Entry{
		Dir("d2f/", 0o755), File("d2f/again", 0o644, "dir again"),
		File("whited", 0o644, "back"),
	}
	return []v1.Layer{
		Layer(t, l0, Gzip, docker), Layer(t, l1, map[bool]Compression{false: Gzip, true: Zstd}[zstd], docker),
		Layer(t, l2, Uncompressed, docker), Layer(t, l3, Uncompressed, docker),
	}
}
