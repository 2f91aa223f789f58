package imagefmt

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrExt4NeedsRoot reports an ext4 conversion attempted without root: the
// staged tree could not carry ownership, device nodes or trusted xattrs.
var ErrExt4NeedsRoot = errors.New("imagefmt: --fs ext4 needs root (it stages the tree with real owners and device nodes)")

// writeExt4 builds an ext4 image with e2fsprogs' mkfs.ext4 -d from the tree
// staged under dir, and streams it into out. No pure-Go ext4 writer in
// reach handles xattrs, hardlinks and device nodes; mke2fs's populate code
// is the reference implementation of exactly that.
func writeExt4(ctx context.Context, t *tree, out io.Writer, dir string) error {
	if os.Geteuid() != 0 {
		return ErrExt4NeedsRoot
	}
	stage := filepath.Join(dir, "ext4-stage")
	used, inodes, err := stageTree(t, stage)
	if err != nil {
		return fmt.Errorf("ext4: stage tree: %w", err)
	}
	img := filepath.Join(dir, "ext4.img")
	// Room for data plus metadata: 1/8 slack, 256 B per inode, 16 MiB base.
	size := used + used/8 + inodes*256 + 16<<20
	size = (size + 4095) &^ 4095
	cmd := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-b", "4096", "-I", "256",
		"-N", strconv.FormatInt(inodes+inodes/8+64, 10), "-O", "^has_journal,^resize_inode",
		"-E", "lazy_itable_init=0,nodiscard,root_owner=0:0", "-m", "0", "-U", "clear",
		"-d", stage, img, strconv.FormatInt(size/1024, 10)+"k")
	cmd.Env = append(os.Environ(), "E2FSPROGS_FAKE_TIME=1") // reproducible superblock times
	if msg, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("ext4: mkfs.ext4: %w: %s", err, msg)
	}
	if err := restoreNanoseconds(ctx, t, img, dir); err != nil {
		return err
	}
	if err := os.RemoveAll(stage); err != nil {
		return err
	}
	f, err := os.Open(img)
	if err != nil {
		return err
	}
	defer os.Remove(img)
	defer f.Close()
	_, err = io.Copy(onlyWriter{out}, f)
	return err
}

// onlyWriter hides a writer's other methods from io.Copy, so it uses a
// buffer of its own (or the one given) and the writer's Write.
type onlyWriter struct{ io.Writer }

// stageTree materialises the tree under root with owners, modes, xattrs,
// hardlinks and times, returning bytes and inodes used.
func stageTree(t *tree, root string) (used, inodes int64, err error) {
	type dir struct {
		path string
		ino  *inode
	}
	var dirs []dir
	err = t.walkInodes(func(p string, n *node, first string) error {
		dst := filepath.Join(root, p)
		ino := n.ino
		if first != "" {
			return os.Link(filepath.Join(root, first), dst)
		}
		inodes++
		used += (ino.size + 4095) &^ 4095
		var err error
		switch ino.typ {
		case tar.TypeDir:
			used += 4096
			if err = os.Mkdir(dst, 0o700); os.IsExist(err) && p == "/" {
				err = nil
			}
			dirs = append(dirs, dir{dst, ino})
		case tar.TypeReg:
			err = stageFile(dst, t.spool.reader(ino.dataOff, ino.size))
		case tar.TypeSymlink:
			err = os.Symlink(ino.linkname, dst)
		case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
			err = unix.Mknod(dst, uint32(unixType(ino.typ)), int(unix.Mkdev(uint32(ino.major), uint32(ino.minor))))
		}
		if err != nil {
			return err
		}
		if ino.typ != tar.TypeDir {
			return stageMeta(dst, ino)
		}
		return nil
	})
	if err != nil {
		return 0, 0, err
	}
	// Directories last, deepest first, so adding children does not move
	// their mtimes and a read-only mode does not block the walk.
	for i := len(dirs) - 1; i >= 0; i-- {
		if err = stageMeta(dirs[i].path, dirs[i].ino); err != nil {
			return 0, 0, err
		}
	}
	return used, inodes, nil
}

func stageFile(dst string, r io.Reader) error {
	f, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	s := &spool{f: f, buf: make([]byte, spoolBlock)}
	_, err = s.add(r, r.(*io.SectionReader).Size())
	return errors.Join(err, f.Close())
}

func stageMeta(dst string, ino *inode) error {
	if err := unix.Lchown(dst, ino.uid, ino.gid); err != nil {
		return err
	}
	for k, v := range ino.xattrs {
		if err := unix.Lsetxattr(dst, k, []byte(v), 0); err != nil {
			return fmt.Errorf("xattr %s: %w", k, err)
		}
	}
	if ino.typ != tar.TypeSymlink {
		// After chown, which clears setuid and setgid.
		if err := unix.Chmod(dst, uint32(ino.mode)); err != nil {
			return err
		}
	}
	ts := []unix.Timespec{unix.NsecToTimespec(ino.mtime.UnixNano()), unix.NsecToTimespec(ino.mtime.UnixNano())}
	return unix.UtimesNanoAt(unix.AT_FDCWD, dst, ts, unix.AT_SYMLINK_NOFOLLOW)
}

// restoreNanoseconds sets mtime's nanoseconds, which e2fsprogs 1.47.0's
// populate code drops (it copies whole seconds), in one debugfs batch.
func restoreNanoseconds(ctx context.Context, t *tree, img, dir string) error {
	var cmds strings.Builder
	_ = t.walkInodes(func(p string, n *node, first string) error {
		ns := n.ino.mtime.Nanosecond()
		if ns == 0 || first != "" || strings.ContainsAny(p, "\"\n") {
			return nil // debugfs cannot quote " or newline: such a name keeps whole seconds
		}
		// i_mtime_extra: nanoseconds above two epoch-extension bits.
		sec := n.ino.mtime.Unix()
		epoch := ((sec - int64(int32(sec))) >> 32) & 3
		fmt.Fprintf(&cmds, "sif \"%s\" mtime_extra %d\n", p, int64(ns)<<2|epoch)
		return nil
	})
	if cmds.Len() == 0 {
		return nil
	}
	script := filepath.Join(dir, "debugfs.cmds")
	if err := os.WriteFile(script, []byte(cmds.String()), 0o600); err != nil {
		return err
	}
	defer os.Remove(script)
	out, err := exec.CommandContext(ctx, "debugfs", "-w", "-f", script, img).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ext4: debugfs: %w: %s", err, out)
	}
	return nil
}
