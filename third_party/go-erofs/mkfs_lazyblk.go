package erofs

// This file is lazyblk's patch to go-erofs v0.3.1 (see PATCHES.md).

import (
	"fmt"
	"io"
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
