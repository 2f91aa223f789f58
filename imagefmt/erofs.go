package imagefmt

import (
	"archive/tar"
	"errors"
	"fmt"
	"io/fs"

	erofs "github.com/erofs/go-erofs"
)

// writeErofs writes the tree as an erofs image into k in the
// layer-stable layout of p (regions.go): chunk 0, then each layer's
// region, its blob of its own, then the metadata. Block size is 4 KiB, the
// page size every kernel that mounts it will have.
func writeErofs(t *tree, k *chunker, p *layoutPlan) error {
	if err := checkErofsLimits(t); err != nil {
		return err
	}
	if err := k.writeZeros(p.chunkSize); err != nil { // the superblock's, written last
		return err
	}
	for _, r := range p.regions {
		if err := writeRegion(t.spool, k, r); err != nil {
			return fmt.Errorf("erofs: layer %d: %w", r.layer, err)
		}
	}
	if err := k.startRegion(); err != nil {
		return err
	}
	w := erofs.Create(k, erofs.WithBlockSize(erofsBlock), erofs.WithBuildTime(0, 0),
		erofs.WithPlacedData(uint64(p.metaStart/erofsBlock)))
	err := t.walkInodes(func(path string, n *node, first string) error {
		ino := n.ino
		if first != "" {
			return w.Link(first, path)
		}
		var err error
		switch ino.typ {
		case tar.TypeDir:
			err = w.Mkdir(path, 0o755)
		case tar.TypeReg:
			if pl, ok := p.placed[ino]; ok {
				err = w.AddPlacedFile(path, ino.size, extents(pl))
			} else {
				err = w.AddFile(path, ino.size, t.spool.reader(ino.dataOff, ino.size))
			}
		case tar.TypeSymlink:
			err = w.Symlink(ino.linkname, path)
		case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
			err = w.Mknod(path, unixType(ino.typ)|uint16(ino.mode&0o7777), newEncodeDev(ino.major, ino.minor))
		default:
			err = fmt.Errorf("unexpected type %q", ino.typ)
		}
		if err != nil {
			return fmt.Errorf("erofs: %s: %w", path, err)
		}
		return setErofsMeta(w, path, ino)
	})
	if err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("erofs: write image: %w", err)
	}
	return nil
}

// extents turns a file's placements into erofs extents.
func extents(pl []placement) []erofs.Extent {
	out := make([]erofs.Extent, len(pl))
	for i, x := range pl {
		out[i] = erofs.Extent{FileOff: x.fileOff, Len: x.len, Block: uint64(x.block)}
	}
	return out
}

// writeRegion writes one layer's region: each visible file's data at its
// slot, zeros around them and for files no longer visible.
func writeRegion(sp *spool, k *chunker, r regionPlan) error {
	if err := k.startRegion(); err != nil {
		return err
	}
	at := int64(0)
	for _, s := range r.slots {
		if err := k.writeZeros(s.off - at); err != nil {
			return err
		}
		at = s.off
		for _, pc := range s.pieces {
			var err error
			if s.live {
				err = sp.copyTo(k, s.ino.dataOff+pc.Off, pc.Len)
			} else {
				err = k.writeZeros(pc.Len)
			}
			if err == nil { // each piece whole blocks
				err = k.writeZeros(roundUp(pc.Len, erofsBlock) - pc.Len)
			}
			if err != nil {
				return err
			}
			at += roundUp(pc.Len, erofsBlock)
		}
	}
	return k.writeZeros(r.size - at)
}

func setErofsMeta(w *erofs.Writer, p string, ino *inode) error {
	if ino.typ != tar.TypeSymlink {
		if err := w.Chmod(p, goMode(ino.mode)); err != nil {
			return err
		}
	}
	if err := w.Chown(p, ino.uid, ino.gid); err != nil {
		return err
	}
	if err := w.Chtimes(p, ino.mtime, ino.mtime); err != nil {
		return err
	}
	for k, v := range ino.xattrs {
		if err := w.Setxattr(p, k, v); err != nil {
			return err
		}
	}
	return nil
}

// ErrTooBig reports a tree the chosen filesystem cannot hold.
var ErrTooBig = errors.New("imagefmt: tree too big for the filesystem")

// erofsMaxBlocks: erofs addresses data by 32-bit block numbers, and
// go-erofs would truncate larger addresses silently.
const erofsMaxBlocks = 1<<32 - 1

func checkErofsLimits(t *tree) error {
	var blocks uint64
	_ = t.walkInodes(func(_ string, n *node, first string) error {
		if first == "" {
			blocks += uint64(n.ino.size+4095)/4096 + 1
		}
		return nil
	})
	if blocks > erofsMaxBlocks {
		return fmt.Errorf("%w: about %d GiB of 4 KiB blocks, erofs addresses at most %d GiB (use --fs ext4)",
			ErrTooBig, blocks>>18, uint64(erofsMaxBlocks)>>18)
	}
	return nil
}

// goMode turns unix permission bits (with setuid, setgid, sticky) into an
// fs.FileMode's permission part.
func goMode(m int64) fs.FileMode {
	mode := fs.FileMode(m & 0o777)
	if m&0o4000 != 0 {
		mode |= fs.ModeSetuid
	}
	if m&0o2000 != 0 {
		mode |= fs.ModeSetgid
	}
	if m&0o1000 != 0 {
		mode |= fs.ModeSticky
	}
	return mode
}

func unixType(typ byte) uint16 {
	switch typ {
	case tar.TypeChar:
		return 0o020000
	case tar.TypeBlock:
		return 0o060000
	case tar.TypeFifo:
		return 0o010000
	}
	return 0
}

// newEncodeDev packs a device number the way Linux's new_encode_dev does;
// erofs stores rdev in that 32-bit form.
func newEncodeDev(major, minor int64) uint32 {
	return uint32(minor&0xff) | uint32(major&0xfff)<<8 | uint32(minor&^0xff)<<12
}
