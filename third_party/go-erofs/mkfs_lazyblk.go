package erofs

// This file is lazyblk's patch to go-erofs v0.3.1 (see PATCHES.md).

import (
	"fmt"
	"io"
	"math"
	"path"

	"github.com/erofs/go-erofs/internal/builder"
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

// Extent places Len bytes of a file, from file offset FileOff, at block
// Block of the image, contiguously (AddPlacedFile).
type Extent struct {
	FileOff, Len int64
	Block        uint64
}

// AddPlacedFile creates a regular file of size bytes whose data the
// caller has written into the image (with WithPlacedData): one extent,
// the whole file at a block, makes a flat-plain inode; several make a
// chunk-based one, whose chunk size is the largest power of two from the
// block size to 1 MiB that every extent's offset and length (but the
// last's, which ends the file) is a multiple of. A chunk-based inode must
// have no xattrs: the kernel wants its chunk indexes 8-byte aligned after
// the xattrs, which this writer does not pad.
func (fsys *Writer) AddPlacedFile(name string, size int64, extents []Extent) error {
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
	e := &fsEntry{path: name, mode: disk.StatTypeReg | 0o644, size: uint64(size), fileClosed: true}
	if size > 0 {
		if err := fsys.placeExtents(e, size, extents); err != nil {
			return fmt.Errorf("mkfs: placed file %q: %w", name, err)
		}
	}
	fsys.ensureParent(name)
	fsys.addChild(e)
	return nil
}

// placeExtents checks extents and records them on e.
func (fsys *Writer) placeExtents(e *fsEntry, size int64, extents []Extent) error {
	bs := int64(fsys.resolveBlockSize())
	at := int64(0)
	for _, x := range extents {
		last := x.FileOff+x.Len == size
		if x.FileOff != at || x.Len <= 0 || x.FileOff%bs != 0 || (!last && x.Len%bs != 0) {
			return fmt.Errorf("extent [%d,+%d) does not continue at %d on a block boundary", x.FileOff, x.Len, at)
		}
		if blocks := uint64((x.Len + bs - 1) / bs); x.Block+blocks > fsys.metaBlock {
			return fmt.Errorf("extent at block %d runs into the metadata (block %d)", x.Block, fsys.metaBlock)
		}
		at += x.Len
	}
	if at != size {
		return fmt.Errorf("extents cover %d of %d bytes", at, size)
	}
	if len(extents) == 1 {
		if extents[0].Block > math.MaxUint32 {
			return fmt.Errorf("block %d beyond 32-bit block addresses", extents[0].Block)
		}
		e.placed, e.placedBlk = true, extents[0].Block
		return nil
	}
	// The chunk: the largest power of two (to 1 MiB) dividing every
	// extent's offset and, but for the last, length.
	cs := int64(1 << 20)
	for _, x := range extents {
		for cs > bs && (x.FileOff%cs != 0 || (x.FileOff+x.Len != size && x.Len%cs != 0)) {
			cs /= 2
		}
	}
	bpc := uint64(cs / bs)
	maxCount := (math.MaxUint16 / bpc) * bpc // builder chunks count in uint16 blocks
	for _, x := range extents {
		blk, left := x.Block, uint64((x.Len+bs-1)/bs)
		for left > 0 {
			n := min(left, maxCount)
			e.chunks = append(e.chunks, builder.Chunk{PhysicalBlock: blk, Count: uint16(n)})
			blk, left = blk+n, left-n
		}
	}
	for e.chunkBits = 0; int64(1)<<e.chunkBits*bs < cs; e.chunkBits++ {
	}
	e.chunkBitsSet = true
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
