package testutil

import (
	"crypto/sha256"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	erofs "github.com/erofs/go-erofs"
	"golang.org/x/sys/unix"
)

// Meta is what a tree comparison looks at for one path.
type Meta struct {
	Type      string
	Mode      uint32 // permission bits with setuid, setgid, sticky
	UID, GID  uint32
	Size      int64 // regular files only
	MtimeNs   int64
	Digest    string // regular files
	Target    string // symlinks
	Rdev      string // devices, as major:minor
	Xattrs    map[string]string
	Hardlinks string // the sorted group of paths sharing this inode, when more than one
}

func (f Meta) String() string {
	return fmt.Sprintf("%s mode=%o %d:%d size=%d mtime=%d digest=%.12s target=%q rdev=%s xattrs=%v links=%s",
		f.Type, f.Mode, f.UID, f.GID, f.Size, f.MtimeNs, f.Digest, f.Target, f.Rdev, f.Xattrs, f.Hardlinks)
}

// Tree maps a path (without leading slash) to its Meta.
type Tree map[string]Meta

// Diff lists the differences between want and got, empty when equal.
func Diff(want, got Tree) []string {
	var out []string
	for p, w := range want {
		g, ok := got[p]
		switch {
		case !ok:
			out = append(out, "missing "+p)
		case w.String() != g.String():
			out = append(out, fmt.Sprintf("%s:\n  want %s\n  got  %s", p, w, g))
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			out = append(out, "extra "+p)
		}
	}
	sort.Strings(out)
	return out
}

// ignoredXattr: attributes a host adds on its own, not part of an image.
func ignoredXattr(k string) bool { return k == "security.selinux" }

// SnapshotDir records the tree under root as the kernel presents it.
func SnapshotDir(t testing.TB, root string) Tree {
	t.Helper()
	tree := Tree{}
	inodes := map[uint64][]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if rel == "." {
			return nil
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		f := Meta{Mode: st.Mode & 0o7777, UID: st.Uid, GID: st.Gid, MtimeNs: st.Mtim.Nano(), Xattrs: dirXattrs(t, p)}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			f.Type = "dir"
		case unix.S_IFREG:
			f.Type, f.Size, f.Digest = "file", st.Size, fileDigest(t, func() (io.ReadCloser, error) { return os.Open(p) })
		case unix.S_IFLNK:
			f.Type, f.Mode = "symlink", 0
			f.Target, _ = os.Readlink(p)
		case unix.S_IFCHR, unix.S_IFBLK:
			f.Type = map[bool]string{true: "char", false: "block"}[st.Mode&unix.S_IFMT == unix.S_IFCHR]
			f.Rdev = fmt.Sprintf("%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
		case unix.S_IFIFO:
			f.Type = "fifo"
		}
		if f.Type != "dir" && st.Nlink > 1 {
			inodes[st.Ino] = append(inodes[st.Ino], rel)
		}
		tree[rel] = f
		return nil
	})
	if err != nil {
		t.Fatalf("snapshot %s: %v", root, err)
	}
	return withHardlinks(tree, inodes)
}

// SnapshotErofs records the tree of an erofs image read with go-erofs,
// a pure-Go reader, without the kernel.
func SnapshotErofs(t testing.TB, image io.ReaderAt) Tree {
	t.Helper()
	fsys, err := erofs.Open(image)
	if err != nil {
		t.Fatalf("open erofs: %v", err)
	}
	tree := Tree{}
	inodes := map[uint64][]string{}
	err = fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == "." {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		st := info.Sys().(*erofs.Stat)
		f := Meta{Mode: unixPerm(st.Mode), UID: st.UID, GID: st.GID, MtimeNs: int64(st.Mtime)*1e9 + int64(st.MtimeNs)}
		for k, v := range st.Xattrs {
			if f.Xattrs == nil {
				f.Xattrs = map[string]string{}
			}
			f.Xattrs[k] = v
		}
		m := info.Mode()
		switch {
		case m.IsDir():
			f.Type = "dir"
		case m.IsRegular():
			f.Type, f.Size = "file", info.Size()
			f.Digest = fileDigest(t, func() (io.ReadCloser, error) { return fsys.Open(p) })
		case m&fs.ModeSymlink != 0:
			f.Type, f.Mode = "symlink", 0
			f.Target, _ = fsys.(interface{ ReadLink(string) (string, error) }).ReadLink(p)
		case m&fs.ModeDevice != 0:
			f.Type = map[bool]string{true: "char", false: "block"}[m&fs.ModeCharDevice != 0]
			f.Rdev = fmt.Sprintf("%d:%d", unix.Major(uint64(newDecodeDev(st.Rdev))), unix.Minor(uint64(newDecodeDev(st.Rdev))))
		case m&fs.ModeNamedPipe != 0:
			f.Type = "fifo"
		}
		if f.Type != "dir" && st.Nlink > 1 {
			inodes[uint64(st.Ino)] = append(inodes[uint64(st.Ino)], p)
		}
		tree[p] = f
		return nil
	})
	if err != nil {
		t.Fatalf("walk erofs: %v", err)
	}
	return withHardlinks(tree, inodes)
}

func withHardlinks(tree Tree, inodes map[uint64][]string) Tree {
	for _, paths := range inodes {
		if len(paths) < 2 {
			continue
		}
		sort.Strings(paths)
		group := strings.Join(paths, ",")
		for _, p := range paths {
			f := tree[p]
			f.Hardlinks = group
			tree[p] = f
		}
	}
	return tree
}

func unixPerm(m fs.FileMode) uint32 {
	p := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		p |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		p |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		p |= 0o1000
	}
	return p
}

// newDecodeDev reverses Linux's new_encode_dev into a glibc dev_t.
func newDecodeDev(d uint32) uint64 {
	major := (d & 0xfff00) >> 8
	minor := (d & 0xff) | ((d >> 12) & 0xfff00)
	return unix.Mkdev(major, minor)
}

func dirXattrs(t testing.TB, p string) map[string]string {
	sz, err := unix.Llistxattr(p, nil)
	if err != nil || sz == 0 {
		return nil
	}
	buf := make([]byte, sz)
	sz, err = unix.Llistxattr(p, buf)
	if err != nil {
		t.Fatalf("listxattr %s: %v", p, err)
	}
	var out map[string]string
	for _, k := range strings.Split(strings.TrimRight(string(buf[:sz]), "\x00"), "\x00") {
		if k == "" || ignoredXattr(k) {
			continue
		}
		v := make([]byte, 64<<10)
		n, err := unix.Lgetxattr(p, k, v)
		if err != nil {
			t.Fatalf("getxattr %s %s: %v", p, k, err)
		}
		if out == nil {
			out = map[string]string{}
		}
		out[k] = string(v[:n])
	}
	return out
}

func fileDigest(t testing.TB, open func() (io.ReadCloser, error)) string {
	t.Helper()
	r, err := open()
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	defer r.Close()
	h := sha256.New()
	if _, err := io.Copy(h, r); err != nil {
		t.Fatalf("read: %v", err)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}
