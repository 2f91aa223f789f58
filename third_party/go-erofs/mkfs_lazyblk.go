package erofs

// This file is lazyblk's patch to go-erofs v0.3.1 (see PATCHES.md).

import (
	"fmt"
	"io"
	"math"
	"path"

	"github.com/erofs/go-erofs/internal/disk"
)

// Link creates newname as a hardlink to the existing non-directory
// oldname: both names share one inode, whose link count is raised.
func (fsys *Writer) Link(oldname, newname string) error {
	if fsys.wErr != nil {
		return fsys.wErr
	}
	target, err := fsys.lookup(oldname)
	if err != nil {
		return err
	}
	for target.hardlinkTo != nil {
		target = target.hardlinkTo
	}
	if target.mode&disk.StatTypeMask == disk.StatTypeDir {
		return fmt.Errorf("mkfs: hardlink %q to directory %q", newname, oldname)
	}
	newname = cleanPath(newname)
	if newname == "/" {
		return fmt.Errorf("mkfs: cannot link at root")
	}
	if err := fsys.checkPath(newname); err != nil {
		return err
	}
	fsys.ensureParent(newname)
	if !target.nlinkSet {
		target.nlink, target.nlinkSet = 1, true
	}
	target.nlink++
	fsys.addChild(&fsEntry{path: newname, mode: target.mode, hardlinkTo: target, fileClosed: true})
	return nil
}

// AddFile creates a regular file of the given size whose bytes are read
// from data when the image is written, without a copy into the spool.
// data must yield exactly size bytes and stay readable until Close.
func (fsys *Writer) AddFile(name string, size int64, data io.Reader) error {
	if fsys.wErr != nil {
		return fsys.wErr
	}
	name = cleanPath(name)
	if name == "/" {
		return fmt.Errorf("mkfs: cannot create file at root")
	}
	if err := fsys.checkPath(name); err != nil {
		return err
	}
	if size < 0 {
		return fmt.Errorf("mkfs: negative size for %q", name)
	}
	fsys.ensureParent(name)
	e := &fsEntry{path: name, mode: disk.StatTypeReg | 0o644, size: uint64(size), fileClosed: true}
	if size > 0 {
		e.directData = data
	}
	fsys.addChild(e)
	return nil
}

// linkToErofs returns the dirent-only erofsEntry of a hardlink.
func (fsys *Writer) linkToErofs(e *fsEntry) *erofsEntry {
	target := fsys.fsToErofs(e.hardlinkTo)
	link := *target
	link.name = path.Base(e.path)
	link.path = e.path
	link.children = nil
	link.linkOf = target
	return &link
}

// WithPlacedData makes a writer for an image whose regular file data the
// caller places itself (AddPlacedFile) in blocks below metaBlock. Close
// then writes only what is the writer's: block 0 (the superblock) and,
// from metaBlock on, the inodes followed by the blocks of directories and
// symlinks too large to be inline. A small file added with AddFile is
// always inline, whatever its inode's position: an inode that would
// leave no room for its data starts a new block. out must be positioned
// at metaBlock's offset or before it, and allow one seek back to 0.
func WithPlacedData(metaBlock uint64) CreateOpt {
	return func(o *createOptions) {
		o.placedData, o.metaBlock = true, metaBlock
	}
}

// AddPlacedFile creates a regular file of size bytes whose data the
// caller has written at block blk of the image, contiguously (with
// WithPlacedData).
func (fsys *Writer) AddPlacedFile(name string, size int64, blk uint64) error {
	if fsys.wErr != nil {
		return fsys.wErr
	}
	if !fsys.placedData {
		return fmt.Errorf("mkfs: AddPlacedFile %q without WithPlacedData", name)
	}
	name = cleanPath(name)
	if name == "/" {
		return fmt.Errorf("mkfs: cannot create file at root")
	}
	if err := fsys.checkPath(name); err != nil {
		return err
	}
	if size < 0 || blk > math.MaxUint32 || blk >= fsys.metaBlock {
		return fmt.Errorf("mkfs: placed file %q: size %d at block %d (metadata at %d)", name, size, blk, fsys.metaBlock)
	}
	fsys.ensureParent(name)
	fsys.addChild(&fsEntry{path: name, mode: disk.StatTypeReg | 0o644, size: uint64(size), fileClosed: true,
		placed: size > 0, placedBlk: blk})
	return nil
}

// placedMetaBlocks is how many blocks the planned inodes take.
func (w *erofsWriter) placedMetaBlocks() uint64 {
	return uint64((w.metadataBytes() + w.blockSize - 1) / w.blockSize)
}

// writePlaced writes the superblock and, from metaBlock on, the metadata
// and the non-inline blocks of directories and symlinks (placed-data
// mode).
func (w *erofsWriter) writePlaced(out io.WriteSeeker, metaBlock uint64) error {
	if metaBlock > math.MaxUint32 {
		return fmt.Errorf("mkfs: metadata block %d beyond 32-bit block addresses", metaBlock)
	}
	w.copyBuf = make([]byte, 256*1024)
	w.metaBlkAddr = uint32(metaBlock)
	addr := metaBlock + w.placedMetaBlocks()
	for _, e := range w.entries {
		if ds := w.flatPlainDataSize(e); ds > 0 {
			if addr > math.MaxUint32 {
				return fmt.Errorf("mkfs: %s: block %d beyond 32-bit block addresses", e.path, addr)
			}
			e.dataBlkAddr = uint32(addr)
			addr += uint64((ds + w.blockSize - 1) / w.blockSize)
		}
	}
	w.totalBlocks = addr
	if _, err := out.Seek(int64(metaBlock)*int64(w.blockSize), io.SeekStart); err != nil {
		return err
	}
	meta := w.newMetaBuffer()
	if err := w.writeMetadataInodes(meta); err != nil {
		return err
	}
	if _, err := meta.WriteTo(out); err != nil {
		return err
	}
	if err := w.writeDataBlocks(out); err != nil {
		return err
	}
	if _, err := out.Seek(0, io.SeekStart); err != nil {
		return err
	}
	return w.writeBlock0(out)
}
